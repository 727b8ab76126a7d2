"""PromQL text built from user input, and Prometheus answers read back: the one place dopd writes a
PromQL string literal or parses the HTTP API's JSON.

- `quote` writes any string as a PromQL double-quoted literal. PromQL lexes strings as Go does:
  a backslash starts an escape, a raw newline ends the literal with an error. So backslash, double
  quote and the usual control characters get their short escapes (`\\\\`, `\\"`, `\\n`, `\\t`, ...),
  every other character that is not printable (control, format, private-use, unassigned, line and
  paragraph separators) is written as `\\uXXXX` / `\\UXXXXXXXX`, and everything else, braces,
  commas and `=~` included, stays literal inside the quotes, where it has no meaning. A lone surrogate
  cannot be a Prometheus label value (not UTF-8) and is refused.
- `check_label_name` refuses what is not a Prometheus label name, and reserved `__` names.
- `name_regex("vllm:num_requests_waiting")` is `vllm[:_]num_requests_waiting`: Prometheus 2.x stores a
  colon name scraped through OpenMetrics negotiation with its colons turned into underscores
  (prometheus_client's escaping), so a preset matches both spellings of each family.
- `Selector` renders `{__name__=~"...",label="value",...}` for one set of families; `group_selector`
  builds one for several models at once (`one_of`: `label=~"v1|v2"`, each value matched literally)
  and `member_of` tells from a series' labels which model it belongs to.
- `InstantSample` / `RangeSeries` are the shapes of `/api/v1/query` results (vector and matrix); values
  keep NaN and +-Inf as Prometheus sends them, for the callers to refuse explicitly.

Pure: no I/O. Callers: `presets` (query text), `readings` (answers), `source` (answers' validation).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from dopd_operator.errors import SpecError

Member = tuple[str, ...]  # one model's values of the labels that tell it from the others of its batch
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

_SHORT_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
# Unicode categories written as \u escapes: controls, format characters, private use, unassigned, and
# the line/paragraph separators (invisible, and line breaks to some tools that print the query).
_UNPRINTED = frozenset({"Cc", "Cf", "Co", "Cn", "Zl", "Zp"})
_REGEX_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def quote(value: str) -> str:
    """`value` as a PromQL double-quoted string literal that reads back as exactly `value`."""
    out = ['"']
    for char in value:
        short = _SHORT_ESCAPES.get(char)
        if short is not None:
            out.append(short)
            continue
        category = unicodedata.category(char)
        if category == "Cs":
            raise ValueError(
                f"{value!r} holds a lone surrogate (U+{ord(char):04X}): not UTF-8, so it cannot be a "
                "Prometheus label value"
            )
        if category in _UNPRINTED:
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def regex_literal(text: str) -> str:
    """`text` as an RE2 pattern that matches exactly it (metacharacters backslash-escaped)."""
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def check_label_name(name: str, field: str) -> str:
    """`name` if it is a Prometheus label name a selector may use; else SpecError at `field`."""
    if not LABEL_NAME.match(name):
        raise SpecError(
            field,
            f"{name!r} is not a Prometheus label name (letters, digits and '_', not starting with a digit)",
        )
    if name.startswith("__"):
        raise SpecError(field, f"{name!r}: label names starting with '__' are reserved by Prometheus")
    return name


def name_regex(name: str) -> str:
    """RE2 pattern matching both stored spellings of a metric name (colons kept, or turned into '_')."""
    if not METRIC_NAME.match(name):
        raise ValueError(f"{name!r} is not a Prometheus metric name")
    return name.replace(":", "[:_]")


def canonical_names(names: Iterable[str]) -> dict[str, str]:
    """Each stored spelling of each name (itself, and with ':' turned into '_') -> the name."""
    spellings: dict[str, str] = {}
    for name in names:
        spellings[name] = name
        spellings[name.replace(":", "_")] = name
    return spellings


def duration(seconds: float) -> str:
    """A PromQL duration, in whole milliseconds (`60000ms`)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"a PromQL range must be positive, got {seconds} s")
    return f"{millis}ms"


@dataclass(frozen=True)
class Matcher:
    name: str
    value: str
    regex: bool = False

    def render(self) -> str:
        return f"{self.name}{'=~' if self.regex else '='}{quote(self.value)}"


@dataclass(frozen=True)
class Selector:
    """Label matchers shared by a preset's queries (namespace, the spec's selector, the role)."""

    matchers: tuple[Matcher, ...]

    def render(self, families: Sequence[str], suffix: str = "") -> str:
        """`{__name__=~"<both spellings of each family><suffix>",...}`."""
        if not families:
            raise ValueError("a selector needs at least one metric family")
        names = "|".join(name_regex(f"{family}{suffix}") for family in families)
        parts = [Matcher("__name__", names, regex=True), *self.matchers]
        return "{" + ",".join(m.render() for m in parts) + "}"


def one_of(name: str, values: Iterable[str]) -> Matcher:
    """`name="v"` for one distinct value, else `name=~"v1|v2|..."` (in first-seen order) with each value
    matched literally."""
    distinct = list(dict.fromkeys(values))
    if not distinct:
        raise ValueError(f"a matcher on {name!r} needs at least one value")
    if len(distinct) == 1:
        return Matcher(name, distinct[0])
    return Matcher(name, "|".join(regex_literal(v) for v in distinct), regex=True)


def check_selector_labels(
    namespace_label: str, selector_labels: Iterable[str], role_label: str
) -> tuple[str, ...]:
    """The labels that tell one model's series from another's: the namespace label, then the selector's
    label names, sorted. SpecError for a name Prometheus refuses or one dopd sets itself."""
    check_label_name(namespace_label, "spec.metrics.namespaceLabel")
    check_label_name(role_label, "spec.metrics.roleLabel")
    names = []
    for name in sorted(selector_labels):
        check_label_name(name, "spec.metrics.selector")
        if name in (namespace_label, role_label):
            raise SpecError(
                "spec.metrics.selector",
                f"{name!r} is the namespace or role label, which dopd sets itself; remove it from the "
                "selector",
            )
        names.append(name)
    return (namespace_label, *names)


def group_selector(
    labels: Sequence[str], members: Sequence[Sequence[str]], role_label: str, roles: Sequence[str]
) -> Selector:
    """Matchers for the series of several models at once: for each of `labels` (from
    `check_selector_labels`) the values the members give it, then the roles. A member is one model's
    values of `labels`, in order. The matchers select the product of the values; callers keep each
    model's own series by its labels (`member_of`)."""
    if not members:
        raise ValueError("a selector needs at least one member")
    if not roles:
        raise ValueError("a selector needs at least one role")
    matchers = [one_of(label, (member[i] for member in members)) for i, label in enumerate(labels)]
    matchers.append(one_of(role_label, roles))
    return Selector(tuple(matchers))


def member_of(labels: Sequence[str], metric: Mapping[str, str]) -> Member:
    """The member a series (or a `sum by (labels)` result) belongs to: its values of `labels` (a label
    a series lacks reads as "", as Prometheus matches it)."""
    return tuple(metric.get(label, "") for label in labels)


def build_selector(
    namespace_label: str,
    namespace: str,
    selector: Mapping[str, str],
    role_label: str,
    roles: Sequence[str],
) -> Selector:
    """Matchers for one model's series: namespace, every pair of `spec.metrics.selector`, the roles."""
    labels = check_selector_labels(namespace_label, selector, role_label)
    member = (namespace, *(selector[name] for name in labels[1:]))
    return group_selector(labels, [member], role_label, roles)


# ------------------------------------------------------------------------------------------ answers


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InstantSample(_Answer):
    """One element of an instant vector: labels and (evaluation time, value)."""

    metric: dict[str, str]
    value: tuple[float, float]

    @property
    def number(self) -> float:
        return self.value[1]


class RangeSeries(_Answer):
    """One series of a range vector (a matrix): labels and its raw (timestamp, value) samples."""

    metric: dict[str, str]
    values: tuple[tuple[float, float], ...]
