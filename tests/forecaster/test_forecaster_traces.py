"""Trace loaders: the four formats as published, detection, exact timestamps, and errors with line numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dopd_forecaster.traces import (
    ArrivalLaw,
    Trace,
    TraceFormatError,
    detect_format,
    load_trace,
    parse_wall_clock_ns,
    write_canonical_csv,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_azure_slice_of_the_shared_trace(azure_head_200: Path) -> None:
    trace = load_trace(azure_head_200)
    assert trace.format == "azure"
    assert len(trace) == 199
    # First rows: 18:15:46.6805900 (374, 44), 18:15:50.9951690 (396, 109), 18:15:51.2224670 (879, 55).
    assert trace.arrival_s[0] == 0.0
    assert trace.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert trace.arrival_s[2] == pytest.approx(4.541877, abs=1e-9)
    assert trace.input_tokens[:3].tolist() == [374, 396, 879]
    assert trace.output_tokens[:3].tolist() == [44, 109, 55]
    assert trace.arrival_s.dtype == np.float64
    assert trace.input_tokens.dtype == np.int64
    assert np.all(np.diff(trace.arrival_s) >= 0)


def test_whole_azure_trace_matches_its_readme(azure_trace_path: Path) -> None:
    trace = load_trace(azure_trace_path)
    # README: 19366 rows over 3502 s, input mean 1155, output mean 211.
    assert len(trace) == 19366
    assert trace.duration_s == pytest.approx(3501.72, abs=0.01)
    assert float(trace.input_tokens.mean()) == pytest.approx(1154.7, abs=0.1)
    assert float(trace.output_tokens.mean()) == pytest.approx(211.1, abs=0.1)


def test_mooncake_slice_converts_milliseconds(mooncake_head_200: Path) -> None:
    trace = load_trace(mooncake_head_200)
    assert trace.format == "mooncake"
    assert len(trace) == 200
    assert trace.input_tokens[:2].tolist() == [40160, 36640]
    assert trace.output_tokens[:2].tolist() == [6, 4]
    # Third line has timestamp 40 ms.
    assert trace.arrival_s[:3].tolist() == [0.0, 0.0, 0.04]


def test_azure_seven_fractional_digits_are_exact() -> None:
    # datetime.fromisoformat stops at microseconds; the 7th digit is 100 ns.
    assert (
        parse_wall_clock_ns("2023-11-16 18:15:46.6805901")
        - parse_wall_clock_ns("2023-11-16 18:15:46.6805900")
        == 100
    )
    assert parse_wall_clock_ns("1970-01-01 00:00:01.5") == 1_500_000_000
    assert parse_wall_clock_ns("1970-01-01T01:00:00+01:00") == 0
    assert parse_wall_clock_ns("1970-01-01 00:00:00Z") == 0


def test_burstgpt_drops_failed_requests_and_uses_seconds(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "burst.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,ChatGPT,472,18,490,Conversation log\n"
        "45,ChatGPT,1087,0,1087,Conversation log\n"  # a failure: 0 response tokens
        "118,GPT-4,417,276,693,API log\n",
    )
    trace = load_trace(path)
    assert trace.format == "burstgpt"
    assert trace.arrival_s.tolist() == [0.0, 113.0]
    assert trace.input_tokens.tolist() == [472, 417]
    assert trace.output_tokens.tolist() == [18, 276]


def test_canonical_round_trip_is_exact(tmp_path: Path) -> None:
    original = Trace(
        np.array([0.0, 0.1, 1.0 / 3.0, 7.25]),
        np.array([10, 20, 30, 40], dtype=np.int64),
        np.array([1, 2, 3, 4], dtype=np.int64),
        source="mem",
        format="canonical",
    )
    path = tmp_path / "c.csv"
    write_canonical_csv(original, path)
    assert path.read_text().splitlines()[0] == "timestamp_s,input_tokens,output_tokens"
    again = load_trace(path)
    assert again.format == "canonical"
    assert again.arrival_s.tolist() == [0.0, 0.1, 1.0 / 3.0, 7.25]
    assert again.input_tokens.tolist() == [10, 20, 30, 40]
    assert again.output_tokens.tolist() == [1, 2, 3, 4]


def test_out_of_order_rows_are_sorted_with_their_tokens(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", "timestamp_s,input_tokens,output_tokens\n10,1,1\n12,2,2\n11,3,3\n")
    trace = load_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 1.0, 2.0]
    assert trace.input_tokens.tolist() == [1, 3, 2]


@pytest.mark.parametrize(
    ("first_line", "expected"),
    [
        ("TIMESTAMP,ContextTokens,GeneratedTokens", "azure"),
        ("\ufeffTIMESTAMP,ContextTokens,GeneratedTokens", "azure"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 1}', "mooncake"),
        ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type", "burstgpt"),
        ("timestamp_s,input_tokens,output_tokens", "canonical"),
        ("time,prompt,completion", None),
    ],
    ids=["azure", "azure-with-bom", "mooncake", "burstgpt", "canonical", "unknown"],
)
def test_format_is_detected_from_the_first_line(first_line: str, expected: str | None) -> None:
    assert detect_format(first_line) == expected


@pytest.mark.parametrize(
    ("name", "text", "line", "message"),
    [
        (
            "trace.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
            "2023-11-16 18:15:47.0,abc,1\n",
            3,
            "trace.csv line 3: ContextTokens is not an integer ('abc')",
        ),
        (
            "trace.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374\n",
            2,
            "trace.csv line 2: expected 3 fields, got 2",
        ),
        (
            "trace.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n",
            2,
            "trace.csv line 2: TIMESTAMP is not a timestamp like 2023-11-16 18:15:46.6805900 ('yesterday')",
        ),
        (
            "m.jsonl",
            '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": 5, "input_length": 1\n',
            2,
            "m.jsonl line 2: not a JSON object (Expecting ',' delimiter)",
        ),
        (
            "m.jsonl",
            '{"timestamp": 0, "input_length": 1, "output_length": 1}\n\n'
            '{"timestamp": 5, "input_length": 2}\n',
            3,
            "m.jsonl line 3: output_length is missing",
        ),
        (
            "c.csv",
            "timestamp_s,input_tokens,output_tokens\n0,-5,1\n",
            2,
            "c.csv line 2: input_tokens is negative ('-5')",
        ),
        ("c.csv", "timestamp_s,input_tokens,output_tokens\n", 1, "c.csv line 1: no requests in the file"),
        ("e.csv", "", 1, "e.csv line 1: file is empty"),
    ],
    ids=[
        "azure-bad-integer",
        "azure-missing-field",
        "azure-bad-timestamp",
        "mooncake-bad-json",
        "mooncake-missing-key-after-blank-line",
        "canonical-negative-tokens",
        "header-only",
        "empty-file",
    ],
)
def test_malformed_lines_are_reported_with_their_number(
    tmp_path: Path, name: str, text: str, line: int, message: str
) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(TraceFormatError) as caught:
        load_trace(path)
    assert caught.value.line == line
    assert str(caught.value) == message
    assert caught.value.path == str(path)


def test_unknown_header_is_a_format_error_and_a_value_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.csv", "time,prompt,completion\n1,2,3\n")
    with pytest.raises(ValueError, match=r"x\.csv line 1: unrecognised header"):
        load_trace(path)


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.csv", "timestamp_s,input_tokens,output_tokens\n0,1,1\n")
    with pytest.raises(TraceFormatError, match="header lacks column"):
        load_trace(path, format="azure")


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "absent.csv")


def _three_requests(
    arrival_s: tuple[float, float, float] = (0.0, 2.0, 6.0), law: ArrivalLaw | None = None
) -> Trace:
    return Trace(
        np.array(arrival_s),
        np.array([1, 2, 3], dtype=np.int64),
        np.array([4, 5, 6], dtype=np.int64),
        source="mem",
        format="canonical",
        law=law,
    )


def test_scaled_compresses_inter_arrival_times() -> None:
    trace = _three_requests().scaled(2.0)
    assert trace.arrival_s.tolist() == [0.0, 1.0, 3.0]
    assert trace.duration_s == 3.0
    assert trace.input_tokens.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="positive"):
        _three_requests().scaled(0.0)


def test_window_and_head_rebase_to_zero() -> None:
    trace = _three_requests()
    window = trace.window(1.0, 6.0)  # [1, 6): only the request at 2.0
    assert window.arrival_s.tolist() == [0.0]
    assert window.input_tokens.tolist() == [2]
    assert len(trace.window(7.0, 9.0)) == 0
    assert trace.window(7.0, 9.0).duration_s == 0.0
    head = trace.head(2)
    assert head.arrival_s.tolist() == [0.0, 2.0]
    assert len(trace.head(10)) == 3
    assert trace.window(2.0, 100.0).arrival_s.tolist() == [0.0, 4.0]


def test_columns_of_different_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Trace(np.zeros(2), np.zeros(3, dtype=np.int64), np.zeros(2, dtype=np.int64), "mem", "canonical")


# --------------------------------------------------------------------------------------- arrival laws


def _law_trace() -> Trace:
    """Requests at 0, 3 and 7 s drawn from 1 rps for [0, 4) then 3 rps for [4, 8)."""
    return _three_requests((0.0, 3.0, 7.0), ArrivalLaw(np.array([1.0] * 4 + [3.0] * 4), 1.0, 0.0, 2.0))


@given(
    rates=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=12),
    bin_s=st.floats(0.25, 5.0),
    start=st.floats(-10.0, 10.0),
    window=st.floats(0.1, 20.0),
    first=st.floats(-20.0, 40.0),
    length=st.floats(0.0, 40.0),
)
def test_the_busiest_expected_rate_is_the_highest_window_mean(
    rates: list[float], bin_s: float, start: float, window: float, first: float, length: float
) -> None:
    # Exactly the maximum over every start in the range (checked on a fine grid, which cannot exceed it
    # and comes within the rate's change over one grid step of it).
    law = ArrivalLaw(np.array(rates), bin_s, start, 1.0)
    busiest = law.busiest_mean_rps(first, first + length, window)
    starts = np.linspace(first, first + length, 2001)
    means = (law.expected_arrivals(starts + window) - law.expected_arrivals(starts)) / window
    step = length / 2000
    assert busiest >= float(np.max(means)) - 1e-9
    assert busiest <= float(np.max(means)) + max(rates) * 2 * step / window + 1e-9


def test_the_law_moves_with_the_trace() -> None:
    trace = _law_trace()
    assert trace.law is not None
    window = trace.window(3.0, 8.0)  # re-based to the request at 3.0
    assert window.law is not None
    # The law of [3, 8) alone, in the window's time: 1 rps in [0, 1), 3 rps in [1, 5), nothing before.
    assert window.law.expected_arrivals([0.0, 1.0, 5.0]).tolist() == [0.0, 1.0, 13.0]
    assert window.law.rate_at([-0.5, 0.5, 4.5, 5.5]).tolist() == [0.0, 1.0, 3.0, 0.0]
    faster = trace.scaled(2.0)  # the same arrivals twice as fast: twice the rate for half as long
    assert faster.law is not None
    assert faster.law.busiest_mean_rps(0.0, 2.0, 1.0) == 6.0
    assert faster.law.expected_arrivals(4.0) == trace.law.expected_arrivals(8.0) == 16.0
    assert faster.law.gap_scv == 2.0
    head = trace.head(2).law  # cut where the third request arrives (7 s), from the first request at 0.0
    assert (
        head is not None and head.start_s == 0.0 and head.rate_rps.tolist() == [1.0] * 4 + [3.0] * 3 + [0.0]
    )
    whole = trace.head(3).law  # every request: the whole law
    assert whole is not None and whole.rate_rps.tolist() == trace.law.rate_rps.tolist()
    plain = Trace(trace.arrival_s, trace.input_tokens, trace.output_tokens, "mem", "canonical")
    assert plain.law is None and plain.window(1.0, 5.0).law is None


def test_an_impossible_law_is_rejected() -> None:
    with pytest.raises(ValueError, match="bin_s > 0"):
        ArrivalLaw(np.ones(2), 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        ArrivalLaw(np.array([1.0, -1.0]), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="last >= first"):
        ArrivalLaw(np.ones(2), 1.0, 0.0, 1.0).busiest_mean_rps(1.0, 0.0, 1.0)
