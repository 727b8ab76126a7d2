"""Fixed layouts sized for a trace's busiest minute: what people deploy without an autoscaler.

`static_peak_layout` finds the fewest prefill and decode replicas that meet the attainment target for
the requests of the busiest minute; `aggregated_peak_layout` the fewest colocated (chunked-prefill)
replicas, with the chunk size swept. Both are searched with the simulator on a slice of the trace around
that minute (two minutes before it, so queues are in steady state when it starts, and two after, so its
requests finish), scoring only the minute's own requests: cheap, since a slice is a few minutes of
requests. Where the target cannot be met at any size (prompts too long to prefill within the SLO), the
search aims at the same share of what ample replicas reach there. Callers: benchmark, bench/sim_bench.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_operator.queueing import fewest_meeting
from dopd_sim.config import SimConfig
from dopd_sim.metrics import slo_met
from dopd_sim.policies.aggregated import FixedAggregatedPolicy
from dopd_sim.policies.base import Policy
from dopd_sim.policies.sizing import layout_for_workload
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.run import RunResult, simulate
from dopd_sim.search import ceiling_attainment, trace_workload

PEAK_WINDOW_SECONDS = 60.0
PEAK_MARGIN_SECONDS = 120.0
CHUNK_SIZES_TOKENS = (512, 1024, 2048)
_AMPLE = 3.0


@dataclass(frozen=True)
class PeakSlice:
    """The busiest minute of a trace and the slice around it that is simulated."""

    trace: Trace  # the slice, re-based to start at 0
    scored_from_s: float  # the busiest minute, in the slice's time
    scored_to_s: float
    rate_rps: float  # the minute's arrival rate


def busiest_minute(trace: Trace, window_s: float = PEAK_WINDOW_SECONDS) -> PeakSlice:
    arrivals = trace.arrival_s
    ends = np.searchsorted(arrivals, arrivals + window_s, side="left")
    counts = ends - np.arange(len(arrivals))
    first = int(np.argmax(counts))
    start = float(arrivals[first])
    begin = max(start - PEAK_MARGIN_SECONDS, 0.0)
    piece = trace.window(begin, start + window_s + PEAK_MARGIN_SECONDS)
    offset = float(arrivals[int(np.searchsorted(arrivals, begin, side="left"))])
    return PeakSlice(piece, start - offset, start - offset + window_s, int(counts[first]) / window_s)


def _peak_attainment(peak: PeakSlice, policy: Policy, config: SimConfig) -> float:
    result = simulate(peak.trace, policy, config)
    arrivals = peak.trace.arrival_s
    scored = (arrivals >= peak.scored_from_s) & (arrivals < peak.scored_to_s)
    slo = config.spec.slo
    met = slo_met(result.ttft_s[scored], result.tpot_s[scored], slo.ttft_seconds, slo.tpot_seconds)
    return float(np.mean(met)) if len(met) else 1.0


def _goal(peak: PeakSlice, ample: Policy, widest: Policy, config: SimConfig) -> float:
    """The target, or the same share of what ample replicas reach at the peak where that is less: the
    model's sizes x3 (`ample`), and where that misses, the most replicas the spec allows (`widest`), so
    the goal does not hang on the capacity model's sizes (a prefix cache grows with the pool)."""
    target = config.spec.slo.attainment_target
    ceiling = ceiling_attainment(
        _peak_attainment(peak, ample, config), lambda: _peak_attainment(peak, widest, config), target
    )
    return target if ceiling >= target else target * ceiling


@dataclass(frozen=True)
class PeakLayout:
    """A fixed layout sized for a trace's busiest minute, and the goal it was sized to (the target, or
    its share of what ample replicas reach there)."""

    layout: tuple[int, int]
    goal: float


def static_peak_layout(trace: Trace, config: SimConfig) -> tuple[int, int]:
    """The fewest (prefill, decode) replicas meeting the target for the busiest minute's requests:
    prefill searched with ample decode, then decode with that prefill."""
    return static_peak_sizing(trace, config).layout


def static_peak_sizing(trace: Trace, config: SimConfig) -> PeakLayout:
    """`static_peak_layout`, with the goal it met at the busiest minute."""
    peak = busiest_minute(trace)
    sized = layout_for_workload(
        dataclasses.replace(trace_workload(peak.trace, rate_percentile=100), arrival_rate_rps=peak.rate_rps),
        config.resolved_profile(),
        config,
        aggregated=False,
    )
    spec = config.spec
    ample_p = min(max(round(sized.prefill * _AMPLE), 2), spec.prefill.max_replicas)
    ample_d = min(max(round(sized.decode * _AMPLE), 2), spec.decode.max_replicas)
    widest = StaticPolicy(spec.prefill.max_replicas, spec.decode.max_replicas)
    goal = _goal(peak, StaticPolicy(ample_p, ample_d), widest, config)

    def prefill_meets(n: int) -> bool:
        return _peak_attainment(peak, StaticPolicy(n, ample_d), config) >= goal

    prefill = fewest_meeting(prefill_meets, sized.prefill, spec.prefill.max_replicas, floor=1)

    def decode_meets(n: int) -> bool:
        return _peak_attainment(peak, StaticPolicy(prefill, n), config) >= goal

    decode = fewest_meeting(decode_meets, sized.decode, spec.decode.max_replicas, floor=1)
    return PeakLayout((prefill, decode), goal)


@dataclass(frozen=True)
class RaisedLayout:
    """A fixed layout as deployed over a whole span, its run there, and the busiest minute's layout it
    was raised from (the same where that one met the goal over the span)."""

    layout: tuple[int, int]
    result: RunResult
    sized: tuple[int, int]

    @property
    def setting(self) -> str:
        setting = f"{self.layout[0]}P/{self.layout[1]}D"
        if self.layout != self.sized:
            setting += (
                f" (raised from the busiest minute's {self.sized[0]}P/{self.sized[1]}D, which fell behind "
                "over the span)"
            )
        return setting


def raise_static_peak(
    trace: Trace,
    config: SimConfig,
    sized: tuple[int, int],
    goal: float | None,
    score_until_s: float | None = None,
) -> RaisedLayout:
    """The busiest minute's layout run over the whole trace, and raised where it misses `goal` there, as
    a user who saw it fall behind would (and as aggregated-static is): a replica at a time to the role
    whose objective misses more (TTFT: prefill, TPOT: decode), each role up to 1.5x its size, until it
    meets; kept as sized where none does (the goal is out of a fixed layout's reach). A minute is not
    the span: a queue a longer peak builds, a prefix cache that starts cold (a chat trace's first
    minutes at full rate), a dip in the hit rate. `score_until_s`: the load goes on past the scored
    span (`run.simulate`)."""

    def run(layout: tuple[int, int]) -> RunResult:
        policy = StaticPolicy(layout[0], layout[1], name="static-peak")
        return simulate(trace, policy, config, score_until_s=score_until_s)

    def meets(result: RunResult) -> bool:
        return goal is None or result.summary.slo_attainment >= goal - 1e-12

    layout, result = sized, run(sized)
    first = result
    ceiling = (math.ceil(1.5 * sized[0]), math.ceil(1.5 * sized[1]))
    while not meets(result):
        summary = result.summary
        prefill_first = (1.0 - summary.ttft_attainment) >= (1.0 - summary.tpot_attainment)
        grow = [0, 1] if prefill_first else [1, 0]
        role = next((r for r in grow if layout[r] < ceiling[r]), None)
        if role is None:
            break
        layout = (layout[0] + (role == 0), layout[1] + (role == 1))
        result = run(layout)
    if not meets(result):
        layout, result = sized, first
    return RaisedLayout(layout, result, sized)


def fitted_static_peak(trace: Trace, config: SimConfig) -> RaisedLayout:
    """static-peak as `dopd simulate` and `dopd bench` deploy it: sized for the busiest minute, raised
    where it falls behind over the trace (`raise_static_peak`) to the goal it met at that minute. (The
    published suite raises it to its seed's goal over the span, `benchmark.static_peak_row`.)"""
    sizing = static_peak_sizing(trace, config)
    raised = raise_static_peak(trace, config, sizing.layout, sizing.goal)
    raised.result.summary.layout = raised.setting
    return raised


def aggregated_peak_layout(
    trace: Trace, config: SimConfig, chunks: tuple[int, ...] = CHUNK_SIZES_TOKENS
) -> tuple[int, int]:
    """The fewest colocated replicas meeting the target for the busiest minute's requests, and the chunk
    size (tokens per iteration) that needs the fewest (ties: the default chunk)."""
    peak = busiest_minute(trace)
    sized = layout_for_workload(
        dataclasses.replace(trace_workload(peak.trace, rate_percentile=100), arrival_rate_rps=peak.rate_rps),
        config.resolved_profile(),
        config,
        aggregated=True,
    )
    ceiling = 2 * max(config.spec.prefill.max_replicas, config.spec.decode.max_replicas)
    best: tuple[int, int] | None = None
    for chunk in chunks:
        chunked = dataclasses.replace(config, aggregated_token_budget=chunk)
        ample = min(max(round(sized.mixed * _AMPLE), 2), ceiling)
        goal = _goal(peak, FixedAggregatedPolicy(ample), FixedAggregatedPolicy(ceiling), chunked)

        def meets(n: int, chunked: SimConfig = chunked, goal: float = goal) -> bool:
            return _peak_attainment(peak, FixedAggregatedPolicy(n), chunked) >= goal

        replicas = fewest_meeting(meets, sized.mixed, ceiling, floor=1)
        if best is None or replicas < best[0]:
            best = (replicas, chunk)
    assert best is not None
    return best
