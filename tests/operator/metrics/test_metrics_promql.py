"""PromQL text from user input: string literals that read back exactly, label names refused when
Prometheus would refuse them, both spellings of colon names, selectors as the presets render them.

`go_unquote` below is an independent reading of a PromQL double-quoted string (Go's escape rules, as
Prometheus' lexer applies them), so the round trip checks `quote` against the language, not against
itself; e2e/test_metrics_presets.py checks the same against a real Prometheus.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_operator.errors import SpecError
from dopd_operator.metrics.promql import (
    Matcher,
    build_selector,
    canonical_names,
    check_label_name,
    check_selector_labels,
    duration,
    group_selector,
    member_of,
    name_regex,
    one_of,
    quote,
    regex_literal,
)

_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def go_unquote(literal: str) -> str:
    """The value of a PromQL "..." literal; ValueError where Prometheus' lexer reports an error."""
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise ValueError("not a double-quoted literal")
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char == "\n":
            raise ValueError("unterminated quoted string (raw newline)")
        if char == '"':
            raise ValueError("the literal ends before its closing quote")
        if char != "\\":
            out.append(char)
            i += 1
            continue
        kind = body[i + 1]
        if kind in _SIMPLE:
            out.append(_SIMPLE[kind])
            i += 2
        elif kind in "xuU":
            digits = {"x": 2, "u": 4, "U": 8}[kind]
            code = int(body[i + 2 : i + 2 + digits], 16)
            if kind == "x" and code > 0x7F:
                raise ValueError("a \\x escape above 0x7f is a raw byte, not a character")
            out.append(chr(code))
            i += 2 + digits
        else:
            raise ValueError(f"unknown escape sequence \\{kind}")
    return "".join(out)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        pytest.param("llama-3-8b", '"llama-3-8b"', id="plain-stays-plain"),
        pytest.param('say "hi"', '"say \\"hi\\""', id="double-quote"),
        pytest.param("a\\b", '"a\\\\b"', id="backslash-doubled"),
        pytest.param("trailing\\", '"trailing\\\\"', id="trailing-backslash-cannot-eat-the-quote"),
        pytest.param("two\nlines", '"two\\nlines"', id="newline"),
        pytest.param("tab\there\rcr", '"tab\\there\\rcr"', id="tab-and-carriage-return"),
        pytest.param('{x="y"},z=~".*"', '"{x=\\"y\\"},z=~\\".*\\""', id="braces-commas-operators-are-inert"),
        pytest.param("nul\x00", '"nul\\u0000"', id="nul-control"),
        pytest.param("del\x7f", '"del\\u007f"', id="delete-control"),
        pytest.param("ls\u2028ps\u2029", '"ls\\u2028ps\\u2029"', id="line-and-paragraph-separators"),
        pytest.param("\ufeffbom", '"\\ufeffbom"', id="format-character"),
        pytest.param("\ue000", '"\\ue000"', id="private-use"),
        pytest.param("\U0010ffff", '"\\U0010ffff"', id="astral-noncharacter"),
        pytest.param("é中🚀", '"é中🚀"', id="printable-unicode-stays-literal"),
        pytest.param("", '""', id="empty"),
    ],
)
def test_quote(value: str, literal: str) -> None:
    assert quote(value) == literal
    assert go_unquote(literal) == value


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        quote("bad\ud800")


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_string_reads_back_exactly(value: str) -> None:
    literal = quote(value)
    assert "\n" not in literal
    assert go_unquote(literal) == value


_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)(=~|=)("(?:[^"\\]|\\.)*")')


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """(name, operator, value) of each matcher of `{...}`; the pieces must tile the text exactly."""
    assert text.startswith("{") and text.endswith("}")
    body, found, position = text[1:-1], [], 0
    for match in _MATCHER.finditer(body):
        assert match.start() == position, f"unparsed text at {position}: {body[position:]!r}"
        found.append((match.group(1), match.group(2), go_unquote(match.group(3))))
        position = match.end() + 1  # the comma
    assert position == len(body) + 1
    return found


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.text(), max_size=4), st.text()
)
def test_selectors_parse_back_to_their_matchers(selector: dict[str, str], namespace: str) -> None:
    selector = {k: v for k, v in selector.items() if k not in ("namespace", "role")}
    text = build_selector("namespace", namespace, selector, "role", ["prefill"]).render(["vllm:x"])
    assert parse_selector(text) == [
        ("__name__", "=~", "vllm[:_]x"),
        ("namespace", "=", namespace),
        *sorted((k, "=", v) for k, v in selector.items()),
        ("role", "=", "prefill"),
    ]


def test_selector_text() -> None:
    selector = build_selector("namespace", "llm", {"model_name": 'm"1'}, "role", ["prefill", "decode"])
    assert selector.render(["vllm:num_requests_waiting", "vllm:num_requests_running"]) == (
        '{__name__=~"vllm[:_]num_requests_waiting|vllm[:_]num_requests_running",'
        'namespace="llm",model_name="m\\"1",role=~"prefill|decode"}'
    )
    assert build_selector("ns", "x", {}, "engine_type", ["decode"]).render(["dopd_a"], "_bucket") == (
        '{__name__=~"dopd_a_bucket",ns="x",engine_type="decode"}'
    )


@pytest.mark.parametrize(
    ("selector", "needle"),
    [
        pytest.param({"model-name": "x"}, "not a Prometheus label name", id="dash"),
        pytest.param({"9model": "x"}, "not a Prometheus label name", id="leading-digit"),
        pytest.param({"": "x"}, "not a Prometheus label name", id="empty"),
        pytest.param({"__name__": "x"}, "reserved", id="reserved-name"),
        pytest.param({"namespace": "other"}, "which dopd sets itself", id="overrides-the-namespace"),
        pytest.param({"role": "decode"}, "which dopd sets itself", id="overrides-the-role"),
    ],
)
def test_unusable_selector_names_are_spec_errors(selector: dict[str, str], needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as caught:
        build_selector("namespace", "llm", selector, "role", ["prefill"])
    assert caught.value.field == "spec.metrics.selector"


def test_label_name_rules() -> None:
    assert check_label_name("model_name", "f") == "model_name"
    assert check_label_name("_private", "f") == "_private"
    with pytest.raises(SpecError) as caught:
        check_label_name("dopd.io/role", "spec.metrics.roleLabel")
    assert caught.value.field == "spec.metrics.roleLabel"


def test_both_spellings_of_colon_names() -> None:
    assert name_regex("vllm:num_requests_waiting") == "vllm[:_]num_requests_waiting"
    assert name_regex("dopd_requests_waiting") == "dopd_requests_waiting"
    assert canonical_names(["sglang:token_usage", "dopd_x"]) == {
        "sglang:token_usage": "sglang:token_usage",
        "sglang_token_usage": "sglang:token_usage",
        "dopd_x": "dopd_x",
    }
    with pytest.raises(ValueError, match="not a Prometheus metric name"):
        name_regex('x"} or vector(1)')


def test_regex_literal_and_duration() -> None:
    assert regex_literal("a.b|c*") == "a\\.b\\|c\\*"
    assert regex_literal("prefill") == "prefill"
    assert duration(60.0) == "60000ms"
    assert duration(12.5) == "12500ms"
    with pytest.raises(ValueError, match="positive"):
        duration(0.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=6), st.text())
def test_a_batch_matcher_matches_exactly_its_members_values(values: list[str], other: str) -> None:
    """The shared query of a batch selects each member's value literally, and nothing else (Prometheus
    anchors a regex matcher at both ends, as fullmatch does)."""
    matcher = one_of("model", values)
    if len(set(values)) == 1:
        assert matcher == Matcher("model", values[0])
        return
    assert matcher.regex
    assert all(re.fullmatch(matcher.value, value) for value in values)
    assert (re.fullmatch(matcher.value, other) is not None) == (other in values)


def test_a_batch_selector_and_its_members() -> None:
    labels = check_selector_labels("namespace", {"model": "x"}, "role")
    assert labels == ("namespace", "model")
    selector = group_selector(labels, [("a", "m.1"), ("b", "m.1"), ("a", "m2")], "role", ["prefill"])
    assert selector.render(["dopd_x"]) == (
        '{__name__=~"dopd_x",namespace=~"a|b",model=~"m\\\\.1|m2",role="prefill"}'
    )
    assert member_of(labels, {"namespace": "b", "model": "m2", "pod": "p"}) == ("b", "m2")
    assert member_of(labels, {"namespace": "b"}) == ("b", "")  # a missing label reads as ""
