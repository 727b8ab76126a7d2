"""Turning a trace into the load a benchmark replays: rate scaling, time compression, and the
`--trace` argument (a file in any format the shared loaders read, or a `synthetic:` generator spec).

Rate scaling keeps the trace's span and its shape over time and multiplies its rate: the result is
the superposition of floor(x) copies of the trace, each circularly shifted by a seeded offset, plus a
seeded thinning of one more copy for the fractional part (x = 2.5 is two shifted copies and half of a
third). Time compression (`Trace.scaled`) instead replays the same requests x times faster, which also
compresses bursts and seasonality. Traces that carry prompt block hashes (Mooncake) are loaded as a
`prefix_cache.PrefixTrace`, so the simulator can model the prefix cache; each superposed copy gets its own
hash space (its own users), so copies share no prefixes and the cache hit rate stays the trace's own.
A generated trace's law (`Trace.law`) is summed over the copies the same way. `continued_workload`
lets a generated load go on past its span (the same requests, then more drawn from the same law).
Callers: cli, bench, tests.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from dopd_forecaster.traces import ArrivalLaw, Trace, load_trace
from dopd_sim.prefix_cache import PrefixTrace, read_mooncake_blocks
from dopd_sim.trace_spec import generate_from_spec, split_spec


def scale_rate(trace: Trace, rate_scale: float, seed: int = 0) -> Trace:
    """`rate_scale` times the arrival rate over the same span (see module docstring)."""
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise ValueError(f"rate_scale must be a positive finite number, got {rate_scale!r}")
    if rate_scale == 1.0 or len(trace) == 0:
        return trace
    rng = np.random.default_rng(seed)
    span = max(trace.duration_s, 1e-9)
    whole = math.floor(rate_scale)
    fraction = rate_scale - whole
    arrivals, inputs, outputs = [], [], []
    blocks: list[tuple[int, ...]] = []
    hash_space = (
        1 + max((max(b, default=0) for b in trace.prefix_blocks), default=0)
        if isinstance(trace, PrefixTrace)
        else 0
    )
    copies: list[tuple[float, float]] = []  # (offset_s, share kept)
    for copy in range(whole + (1 if fraction > 1e-12 else 0)):
        offset = 0.0 if copy == 0 else float(rng.uniform(0.0, span))
        keep = np.ones(len(trace), dtype=bool)
        if copy == whole:  # the fractional copy
            keep = rng.random(len(trace)) < fraction
        copies.append((offset, fraction if copy == whole else 1.0))
        arrivals.append(np.mod(trace.arrival_s[keep] + offset, span))
        inputs.append(trace.input_tokens[keep])
        outputs.append(trace.output_tokens[keep])
        if isinstance(trace, PrefixTrace):
            shift = copy * hash_space
            blocks += [
                tuple(h + shift for h in b) for b, k in zip(trace.prefix_blocks, keep, strict=True) if k
            ]
    arrival = np.concatenate(arrivals)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    first = float(arrival[0])
    arrival -= first
    columns = (arrival, np.concatenate(inputs)[order], np.concatenate(outputs)[order])
    law = _superposed(trace.law, copies, span).shifted(-first) if trace.law is not None else None
    if isinstance(trace, PrefixTrace):
        ordered = tuple(blocks[i] for i in order)
        return PrefixTrace(*columns, trace.source, trace.format, ordered, trace.block_tokens, law=law)
    return Trace(*columns, trace.source, trace.format, law=law)


def _superposed(law: ArrivalLaw, copies: list[tuple[float, float]], span_s: float) -> ArrivalLaw:
    """The law of `scale_rate`'s copies of a trace drawn from `law`, each shifted circularly by its
    offset over [0, span_s) and thinned to its share: the shifted rates summed, on the law's bins, and
    the gaps' burstiness as Whitt's QNA combines it (a thinned copy's p*scv + 1 - p; a superposition's
    rate-weighted mean)."""
    bins = max(1, math.ceil(span_s / law.bin_s - 1e-9))
    middles = (np.arange(bins) + 0.5) * law.bin_s
    rate = sum(share * law.rate_at(np.mod(middles - offset, span_s)) for offset, share in copies)
    scv = sum(share * (share * law.gap_scv + 1.0 - share) for _, share in copies)
    total = sum(share for _, share in copies)
    return ArrivalLaw(np.asarray(rate, dtype=np.float64), law.bin_s, 0.0, scv / total)


def load_workload(
    source: str,
    rate_scale: float = 1.0,
    time_compression: float = 1.0,
    seed: int = 0,
    duration_s: float | None = None,
) -> Trace:
    """A trace file path or `synthetic:KIND[,key=value...]`, optionally cut to `duration_s`,
    time-compressed, then rate-scaled."""
    if source.startswith("synthetic:"):
        trace = generate_from_spec(source.removeprefix("synthetic:"), seed=seed)
    else:
        if not Path(source).exists():
            raise FileNotFoundError(f"trace file not found: {source}")
        trace = load_trace(source)
        if trace.format == "mooncake":
            trace = read_mooncake_blocks(source, trace)
    if duration_s is not None:
        trace = trace.window(0.0, duration_s)
    if time_compression != 1.0:
        trace = trace.scaled(time_compression)
    return scale_rate(trace, rate_scale, seed=seed)


def continued_workload(source: str, seed: int, extra_s: float) -> Trace:
    """The generated trace `source` (a `synthetic:` spec with `duration_s`, or a step spec, whose last
    level goes on) at `seed`, its load going on at least `extra_s` seconds past its last arrival: its own
    requests unchanged, then those a draw of the spec that much longer has after that arrival, under the
    longer draw's law (what the oracle reads; over the span it must be this draw's law, else the spec
    cannot go on). Raises ValueError naming the fix for a trace file or a spec that cannot go on."""
    if not extra_s > 0:
        raise ValueError(f"the load can only go on for more than 0 s, got {extra_s:g}")
    spec = source.removeprefix("synthetic:")
    kind, args = split_spec(spec)
    steps = kind == "step" and "rates" in args and "step_seconds" in args
    if not source.startswith("synthetic:") or not ("duration_s" in args or steps):
        raise ValueError(
            f"{source!r} cannot go on past its span: give a synthetic: spec with duration_s, or a step "
            "spec with its rates and step_seconds (a trace file ends where it ends)"
        )
    trace = generate_from_spec(spec, seed=seed)
    if isinstance(trace, PrefixTrace):
        raise ValueError(f"{source!r} carries prompt block hashes, which a continued trace does not join")
    if steps:  # the last level goes on
        levels = args["rates"].split("/")
        more = math.ceil(extra_s / float(args["step_seconds"]))
        args["rates"] = "/".join(levels + levels[-1:] * more)
    else:
        span_s = float(args["duration_s"])
        if kind == "trend":  # the trend goes on at its slope
            start, end = float(args.get("start_rps", "nan")), float(args.get("end_rps", "nan"))
            later = start + (end - start) * (span_s + extra_s) / span_s
            if not later >= 0:
                raise ValueError(f"{source!r} falls to 0 rps within {extra_s:g} s more: let it go on less")
            args["end_rps"] = f"{later!r}"
        args["duration_s"] = f"{span_s + extra_s!r}"
    longer = generate_from_spec(",".join([kind, *(f"{k}={v}" for k, v in args.items())]), seed=seed)
    if not _law_goes_on(trace.law, longer.law):
        raise ValueError(
            f"{source!r} draws a longer span from another law (its rate over the span moves with its "
            "duration_s), so it cannot go on"
        )
    # Each draw is re-based to its own first arrival; the longer one's tail is moved into this one's time.
    shift_s = (trace.law.start_s - longer.law.start_s) if trace.law and longer.law else 0.0
    tail_s = np.asarray(longer.arrival_s) + shift_s
    after = tail_s > trace.duration_s
    return Trace(
        np.concatenate([trace.arrival_s, tail_s[after]]),
        np.concatenate([trace.input_tokens, longer.input_tokens[after]]),
        np.concatenate([trace.output_tokens, longer.output_tokens[after]]),
        trace.source,
        trace.format,
        law=replace(longer.law, start_s=trace.law.start_s) if trace.law and longer.law else None,
    )


def _law_goes_on(law: ArrivalLaw | None, longer: ArrivalLaw | None) -> bool:
    """Whether `longer` is `law` over `law`'s bins (and goes on past them), each in the time of its own
    draw."""
    if law is None or longer is None:
        return law is longer
    bins = len(law.rate_rps)
    return (
        (law.bin_s, law.gap_scv) == (longer.bin_s, longer.gap_scv)
        and len(longer.rate_rps) >= bins
        and bool(np.allclose(law.rate_rps, longer.rate_rps[:bins], rtol=1e-9, atol=1e-12))
    )
