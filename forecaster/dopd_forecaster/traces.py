"""Request-trace loaders: the one implementation the forecaster CLI, the benchmarks and the simulator share.

A trace is read as published (no conversion step, no copies in the repository) and becomes a `Trace`:
arrival times in seconds relative to the first request, and the prompt and output token counts of each
request. Four formats are recognised from their header or first line:

- ``azure``: Azure LLM inference 2023/2024 CSV, ``TIMESTAMP,ContextTokens,GeneratedTokens`` with wall-clock
  timestamps carrying 7 fractional digits (parsed exactly, to the nanosecond, since ``datetime`` takes 6);
- ``mooncake``: Mooncake FAST'25 JSON lines, ``timestamp`` in milliseconds, ``input_length``,
  ``output_length`` (``hash_ids`` is accepted and ignored);
- ``burstgpt``: BurstGPT CSV, ``Timestamp`` in seconds; rows whose ``Response tokens`` is 0 are failed
  requests in that dataset and are dropped;
- ``canonical``: ``timestamp_s,input_tokens,output_tokens``, what `write_canonical_csv` writes.

A malformed line raises `TraceFormatError` naming the file and the 1-based line number, because a
silently skipped line would quietly change the load a benchmark replays. Files ending in ``.gz`` are
decompressed on the fly. Arrivals are sorted (stably) if a file is out of order, as Azure 2024 is in places.

A generated trace (`dopd_sim.synthetic`) also carries the `ArrivalLaw` its arrivals were drawn from, the
load of which they are one draw; windowing and time compression carry it along. A file's trace has none.
"""

from __future__ import annotations

import calendar
import csv
import gzip
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

TRACE_FORMATS: Final = ("azure", "mooncake", "burstgpt", "canonical")

_AZURE_COLUMNS: Final = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_BURSTGPT_COLUMNS: Final = (
    "Timestamp",
    "Model",
    "Request tokens",
    "Response tokens",
    "Total tokens",
    "Log Type",
)
_CANONICAL_COLUMNS: Final = ("timestamp_s", "input_tokens", "output_tokens")

# 2023-11-16 18:15:46.6805900, optionally with a 'T', and a 'Z' or +hh:mm offset.
_WALL_CLOCK = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?$"
)


class TraceFormatError(ValueError):
    """A trace file that cannot be read as its format says; `line` is 1-based (the header is line 1)."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{Path(path).name} line {line}: {reason}")


@dataclass(frozen=True, eq=False)
class ArrivalLaw:
    """The law a generated trace's arrivals were drawn from: their expected rate, constant over each
    `bin_s`-second bin from `start_s` (in the trace's time; 0 outside the bins), and the squared
    coefficient of variation of the gaps between arrivals at a steady rate (1 for Poisson, cv^2 for a
    Gamma renewal). What "the load" is when the arrivals are one draw of it; a trace read from a file
    has none."""

    rate_rps: npt.NDArray[np.float64]
    bin_s: float
    start_s: float
    gap_scv: float

    def __post_init__(self) -> None:
        if not (self.bin_s > 0 and math.isfinite(self.start_s) and self.gap_scv >= 0):
            raise ValueError(
                f"an arrival law needs bin_s > 0, a finite start_s and gap_scv >= 0 "
                f"(got {self.bin_s}, {self.start_s}, {self.gap_scv})"
            )
        if np.any(self.rate_rps < 0) or not np.all(np.isfinite(self.rate_rps)):
            raise ValueError("an arrival law's rates must be finite and non-negative")

    @property
    def edges_s(self) -> npt.NDArray[np.float64]:
        return self.start_s + self.bin_s * np.arange(len(self.rate_rps) + 1, dtype=np.float64)

    def expected_arrivals(self, t_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The expected number of arrivals from the first bin's start to each time in `t_s`."""
        cumulative = np.concatenate([[0.0], np.cumsum(self.rate_rps * self.bin_s)])
        out: npt.NDArray[np.float64] = np.interp(np.asarray(t_s, dtype=np.float64), self.edges_s, cumulative)
        return out

    def rate_at(self, t_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The expected rate at each time in `t_s` (0 outside the bins)."""
        t = np.asarray(t_s, dtype=np.float64)
        index = np.floor((t - self.start_s) / self.bin_s).astype(np.int64)
        inside = (index >= 0) & (index < len(self.rate_rps))
        out: npt.NDArray[np.float64] = np.where(
            inside, self.rate_rps[np.clip(index, 0, max(len(self.rate_rps) - 1, 0))], 0.0
        )
        return out

    def busiest_mean_rps(self, first_start_s: float, last_start_s: float, window_s: float) -> float:
        """The highest expected rate over a `window_s` window starting in [first, last], exactly: the
        window's mean is piecewise linear in its start, so its maximum lies where the start or the end
        crosses a bin edge, or at either end of the range."""
        if window_s <= 0 or last_start_s < first_start_s:
            raise ValueError(
                f"busiest_mean_rps needs window_s > 0 and last >= first (got {window_s}, "
                f"[{first_start_s}, {last_start_s}])"
            )
        edges = self.edges_s
        starts = np.concatenate([[first_start_s, last_start_s], edges, edges - window_s])
        starts = starts[(starts >= first_start_s) & (starts <= last_start_s)]
        means = (self.expected_arrivals(starts + window_s) - self.expected_arrivals(starts)) / window_s
        return float(np.max(means))

    def within(self, start_s: float, end_s: float) -> ArrivalLaw:
        """The law of the arrivals in [start_s, end_s) alone (bins whose middle lies outside are 0)."""
        middles = self.edges_s[:-1] + self.bin_s / 2
        inside = (middles >= start_s) & (middles < end_s)
        return ArrivalLaw(np.where(inside, self.rate_rps, 0.0), self.bin_s, self.start_s, self.gap_scv)

    def shifted(self, offset_s: float) -> ArrivalLaw:
        """The same law with its time moved by `offset_s` (a trace re-based to a later first arrival
        moves it by minus that arrival)."""
        return ArrivalLaw(self.rate_rps, self.bin_s, self.start_s + offset_s, self.gap_scv)

    def compressed(self, factor: float) -> ArrivalLaw:
        """The law of the same arrivals replayed `factor` times as fast."""
        return ArrivalLaw(self.rate_rps * factor, self.bin_s / factor, self.start_s / factor, self.gap_scv)


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests as arrival offsets (float64 s, sorted, first 0.0) and token counts (int64), and, for a
    generated trace, the law its arrivals were drawn from (`law`, in the trace's time).

    ``eq=False`` because element-wise array equality has no single truth value; compare fields instead.
    """

    arrival_s: npt.NDArray[np.float64]
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    source: str
    format: str
    law: ArrivalLaw | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError(
                f"trace columns differ in length: arrival_s {n}, input_tokens {len(self.input_tokens)}, "
                f"output_tokens {len(self.output_tokens)}"
            )

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last arrival (0.0 for an empty or one-request trace)."""
        return float(self.arrival_s[-1]) if len(self.arrival_s) else 0.0

    def scaled(self, rate_scale: float) -> Trace:
        """The same requests arriving `rate_scale` times as fast (inter-arrival times divided by it)."""
        if not (rate_scale > 0 and math.isfinite(rate_scale)):
            raise ValueError(f"rate_scale must be a positive finite number, got {rate_scale!r}")
        return Trace(
            self.arrival_s / rate_scale,
            self.input_tokens,
            self.output_tokens,
            self.source,
            self.format,
            law=self.law.compressed(rate_scale) if self.law is not None else None,
        )

    def window(self, start_s: float, end_s: float) -> Trace:
        """Requests arriving in [start_s, end_s), re-based so the first of them arrives at 0.0."""
        lo = int(np.searchsorted(self.arrival_s, start_s, side="left"))
        hi = int(np.searchsorted(self.arrival_s, end_s, side="left"))
        if self.law is None:
            return self._slice(lo, max(lo, hi))
        return replace(self, law=self.law.within(start_s, end_s))._slice(lo, max(lo, hi))

    def head(self, n: int) -> Trace:
        """The first `n` requests; a law is cut where the request after them arrives (as `window` up to
        it would)."""
        if n < 0:
            raise ValueError(f"head needs n >= 0, got {n}")
        kept = min(n, len(self))
        if self.law is None or kept == len(self):
            return self._slice(0, kept)
        return replace(self, law=self.law.within(-math.inf, float(self.arrival_s[kept])))._slice(0, kept)

    def _slice(self, lo: int, hi: int) -> Trace:
        arrival = self.arrival_s[lo:hi]
        first = float(arrival[0]) if len(arrival) else 0.0
        return Trace(
            arrival - first,
            self.input_tokens[lo:hi].copy(),
            self.output_tokens[lo:hi].copy(),
            self.source,
            self.format,
            law=self.law.shifted(-first) if self.law is not None else None,
        )


# ---------------------------------------------------------------------------------------------------------
# Field parsers: each returns a value or raises _FieldError(reason); the loader adds path and line number.


class _FieldError(Exception):
    pass


def _parse_tokens(text: str, column: str) -> int:
    stripped = text.strip()
    try:
        value = int(stripped)
    except ValueError:
        # Some exports write integral counts as floats ("129.0"); accept those, nothing else.
        try:
            as_float = float(stripped)
        except ValueError:
            raise _FieldError(f"{column} is not an integer ({text!r})") from None
        if not (math.isfinite(as_float) and as_float.is_integer()):
            raise _FieldError(f"{column} is not an integer ({text!r})") from None
        value = int(as_float)
    if value < 0:
        raise _FieldError(f"{column} is negative ({text!r})")
    return value


def _parse_seconds(text: str, column: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise _FieldError(f"{column} is not a number ({text!r})") from None
    if not math.isfinite(value):
        raise _FieldError(f"{column} is not finite ({text!r})")
    return value


def parse_wall_clock_ns(text: str) -> int:
    """Nanoseconds since the Unix epoch of an ISO-like timestamp with up to 9 fractional digits.

    Exact integer arithmetic: Azure writes 7 fractional digits, which `datetime.fromisoformat` rejects
    before Python 3.11 and float parsing would round. A missing offset is taken as UTC.
    """
    match = _WALL_CLOCK.match(text.strip())
    if match is None:
        raise _FieldError(f"TIMESTAMP is not a timestamp like 2023-11-16 18:15:46.6805900 ({text!r})")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise _FieldError(f"TIMESTAMP is out of range ({text!r})")
    whole_s = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if offset and offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        whole_s -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    fraction_ns = int(fraction.ljust(9, "0")) if fraction else 0
    return whole_s * 1_000_000_000 + fraction_ns


# ---------------------------------------------------------------------------------------------------------
# Readers: each yields (line_number, arrival, input_tokens, output_tokens) per kept request.

_Row = tuple[int, float | int, int, int]


def _csv_rows(lines: Iterator[str], path: Path, expected: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Data rows after the header line, with their 1-based line numbers; blank lines are skipped."""
    header = next(lines, None)
    if header is None:
        raise TraceFormatError(path, 1, "file is empty")
    columns = [c.strip() for c in next(csv.reader([header.lstrip("\ufeff")]))]
    missing = [c for c in expected if c not in columns]
    if missing:
        raise TraceFormatError(
            path, 1, f"header lacks column(s) {', '.join(missing)} (got {header.strip()!r})"
        )
    index = [columns.index(c) for c in expected]
    width = len(columns)
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = next(csv.reader([line]))
        if len(fields) != width:
            raise TraceFormatError(path, number, f"expected {width} fields, got {len(fields)}")
        yield number, [fields[i] for i in index]


def _read_azure(lines: Iterator[str], path: Path) -> Iterator[_Row]:
    for number, (stamp, context, generated) in _csv_rows(lines, path, _AZURE_COLUMNS):
        try:
            yield (
                number,
                parse_wall_clock_ns(stamp),
                _parse_tokens(context, "ContextTokens"),
                _parse_tokens(generated, "GeneratedTokens"),
            )
        except _FieldError as exc:
            raise TraceFormatError(path, number, str(exc)) from None


def _read_burstgpt(lines: Iterator[str], path: Path) -> Iterator[_Row]:
    columns = ("Timestamp", "Request tokens", "Response tokens")
    for number, (stamp, request, response) in _csv_rows(lines, path, columns):
        try:
            row = (
                number,
                _parse_seconds(stamp, "Timestamp"),
                _parse_tokens(request, "Request tokens"),
                _parse_tokens(response, "Response tokens"),
            )
        except _FieldError as exc:
            raise TraceFormatError(path, number, str(exc)) from None
        if row[3] > 0:  # BurstGPT logs failed requests with 0 response tokens; they put no load on decode.
            yield row


def _read_canonical(lines: Iterator[str], path: Path) -> Iterator[_Row]:
    for number, (stamp, prompt, output) in _csv_rows(lines, path, _CANONICAL_COLUMNS):
        try:
            yield (
                number,
                _parse_seconds(stamp, "timestamp_s"),
                _parse_tokens(prompt, "input_tokens"),
                _parse_tokens(output, "output_tokens"),
            )
        except _FieldError as exc:
            raise TraceFormatError(path, number, str(exc)) from None


def _json_field(record: dict[str, object], key: str) -> str:
    if key not in record:
        raise _FieldError(f"{key} is missing")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _FieldError(f"{key} is not a number ({value!r})")
    return str(value)


def _read_mooncake(lines: Iterator[str], path: Path) -> Iterator[_Row]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(path, number, f"not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TraceFormatError(path, number, "not a JSON object")
        try:
            yield (
                number,
                _parse_seconds(_json_field(record, "timestamp"), "timestamp") / 1000.0,
                _parse_tokens(_json_field(record, "input_length"), "input_length"),
                _parse_tokens(_json_field(record, "output_length"), "output_length"),
            )
        except _FieldError as exc:
            raise TraceFormatError(path, number, str(exc)) from None


_READERS: Final[dict[str, Callable[[Iterator[str], Path], Iterator[_Row]]]] = {
    "azure": _read_azure,
    "mooncake": _read_mooncake,
    "burstgpt": _read_burstgpt,
    "canonical": _read_canonical,
}


def detect_format(first_line: str) -> str | None:
    """The trace format a file's first line announces, or None."""
    text = first_line.lstrip("\ufeff").strip()
    if text.startswith("{"):
        return "mooncake"
    columns = {c.strip() for c in next(csv.reader([text]), [])}
    for name, expected in (
        ("azure", _AZURE_COLUMNS),
        ("burstgpt", _BURSTGPT_COLUMNS),
        ("canonical", _CANONICAL_COLUMNS),
    ):
        if set(expected) <= columns:
            return name
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def load_trace(path: str | Path, format: str | None = None) -> Trace:
    """Read a trace file in place; `format` overrides detection from the first line.

    Raises `FileNotFoundError` for a missing file and `TraceFormatError` for anything unreadable in it,
    including a file with no requests.
    """
    trace_path = Path(path)
    if format is not None and format not in _READERS:
        raise ValueError(f"unknown trace format {format!r}; expected one of {', '.join(TRACE_FORMATS)}")
    with _open_text(trace_path) as handle:
        lines: Iterator[str] = iter(handle)
        try:
            first = next(lines)
        except UnicodeDecodeError:
            raise TraceFormatError(trace_path, 1, "not UTF-8 text") from None
        except StopIteration:
            raise TraceFormatError(trace_path, 1, "file is empty") from None
        chosen = format or detect_format(first)
        if chosen is None:
            raise TraceFormatError(
                trace_path,
                1,
                f"unrecognised header {first.strip()[:80]!r}; expected an Azure, BurstGPT or canonical CSV "
                "header, or a Mooncake JSON line",
            )

        def replay() -> Iterator[str]:
            yield first
            yield from lines

        try:
            rows = list(_READERS[chosen](replay(), trace_path))
        except UnicodeDecodeError as exc:
            raise TraceFormatError(trace_path, 0, f"not UTF-8 text ({exc.reason})") from None
    if not rows:
        raise TraceFormatError(trace_path, 1, "no requests in the file")
    return _trace_from_rows(rows, trace_path, chosen)


def _trace_from_rows(rows: list[_Row], path: Path, fmt: str) -> Trace:
    if fmt == "azure":
        # Integer nanoseconds: subtract before converting so 7-digit fractions survive exactly.
        stamps_ns = np.array([r[1] for r in rows], dtype=np.int64)
        arrival = (stamps_ns - stamps_ns.min()).astype(np.float64) / 1e9
    else:
        stamps_s = np.array([r[1] for r in rows], dtype=np.float64)
        arrival = stamps_s - stamps_s.min()
    input_tokens = np.array([r[2] for r in rows], dtype=np.int64)
    output_tokens = np.array([r[3] for r in rows], dtype=np.int64)
    if np.any(np.diff(arrival) < 0):
        order = np.argsort(arrival, kind="stable")
        arrival, input_tokens, output_tokens = arrival[order], input_tokens[order], output_tokens[order]
    return Trace(arrival, input_tokens, output_tokens, source=str(path), format=fmt)


def write_canonical_csv(trace: Trace, path: str | Path) -> None:
    """Write `trace` as ``timestamp_s,input_tokens,output_tokens``; `load_trace` reads it back exactly."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(_CANONICAL_COLUMNS) + "\n")
        for arrival, prompt, output in zip(
            trace.arrival_s.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist(), strict=True
        ):
            handle.write(f"{arrival!r},{prompt},{output}\n")
