"""Offline searches that use the simulator itself: the best static P/D layout at a GPU count
(DistServe's placement search), DistServe's per-GPU goodput (the highest rate scale at which SLO
attainment stays at the target, divided by the GPUs used) and the oracle's calibration (the fewest
replicas, with perfect foresight, that meet the target). Callers: policies (static), benchmark, cli.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_operator.capacity import CapacityModel, Workload
from dopd_sim.config import SimConfig
from dopd_sim.metrics import percentile
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.run import RunResult, simulate
from dopd_sim.workload import scale_rate


def trace_workload(trace: Trace, window_s: float = 60.0, rate_percentile: float = 50.0) -> Workload:
    """The trace's lengths and a percentile of its per-window arrival rate, as a capacity-model workload."""
    counts = np.bincount((trace.arrival_s // window_s).astype(np.int64)).astype(np.float64)
    rates = counts / window_s
    inputs = trace.input_tokens.astype(np.float64)
    outputs = trace.output_tokens.astype(np.float64)
    return Workload(
        arrival_rate_rps=percentile(rates, rate_percentile) or 0.0,
        input_tokens_mean=float(np.mean(inputs)),
        input_tokens_p90=percentile(inputs, 90),
        output_tokens_mean=float(np.mean(outputs)),
        output_tokens_p90=percentile(outputs, 90),
    )


def default_static_gpus(trace: Trace, config: SimConfig) -> int:
    """GPUs a user would provision by hand: the capacity model's layout for the trace's P90 minute."""
    model = CapacityModel(
        config.resolved_profile(),
        config.spec.slo,
        trace_workload(trace, rate_percentile=90),
        config.prefill_token_budget,
    )
    rate = model.workload.arrival_rate_rps
    return max(2, model.prefill_replicas(rate) + model.decode_replicas(rate))


def balanced_split(trace: Trace, config: SimConfig, gpus: int) -> int:
    """Prefill replicas maximizing the capacity model's sustainable rate min(mu_P, mu_D) at `gpus`."""
    model = CapacityModel(
        config.resolved_profile(), config.spec.slo, trace_workload(trace), config.prefill_token_budget
    )
    best_prefill, best_rate = 1, -1.0
    for prefill in range(1, gpus):
        rate = model.sustainable_rps(prefill, gpus - prefill)
        if rate > best_rate:
            best_prefill, best_rate = prefill, rate
    return best_prefill


def best_static_layout(
    trace: Trace, config: SimConfig, gpus: int | None, candidates: int = 5
) -> tuple[int, int]:
    """The (prefill, decode) split of `gpus` single-GPU replicas with the highest simulated attainment
    (ties: higher goodput), among `candidates` splits around the capacity model's balanced split."""
    gpus = gpus if gpus is not None else default_static_gpus(trace, config)
    gpus = max(gpus, 2)
    centre = balanced_split(trace, config, gpus)
    half = candidates // 2
    splits = sorted({min(max(centre + offset, 1), gpus - 1) for offset in range(-half, half + 1)})
    best: tuple[tuple[float, float], tuple[int, int]] | None = None
    for prefill in splits:
        layout = (prefill, gpus - prefill)
        summary = simulate(trace, StaticPolicy(*layout), config).summary
        score = (summary.slo_attainment, summary.goodput_rps)
        if best is None or score > best[0]:
            best = (score, layout)
    assert best is not None
    return best[1]


def max_rate_meeting_target(
    trace: Trace,
    run_at: Callable[[Trace], RunResult],
    target: float,
    low_scale: float,
    high_scale: float,
    iterations: int = 6,
    seed: int = 0,
) -> tuple[float, RunResult | None]:
    """Bisection over rate scale for the highest scale whose attainment >= `target` (DistServe's goodput).
    Returns the scale and the run at it (None when even `low_scale` misses)."""
    best: tuple[float, RunResult | None] = (0.0, None)
    low, high = low_scale, high_scale
    first = run_at(scale_rate(trace, low, seed))
    if first.summary.slo_attainment < target:
        return best
    best = (low, first)
    for _ in range(iterations):
        mid = math.sqrt(low * high)
        result = run_at(scale_rate(trace, mid, seed))
        if result.summary.slo_attainment >= target:
            best, low = (mid, result), mid
        else:
            high = mid
    return best


@dataclass(frozen=True)
class OracleCalibration:
    """The oracle's search result. `target` is the attainment it was calibrated to: the spec's target,
    or, where no layout reaches it (`feasible` False: prompts that cannot prefill within the SLO at any
    size), that share of the ceiling `ceiling` (the attainment with ample replicas: the model's sizes x3,
    and where that misses, the most replicas the spec allows, so the goal does not hang on the model under
    test buying too little of a prefix cache). `calibrated` is False
    when even the widest factors searched miss the target; the ratio to dopd then means nothing."""

    prefill_scale: float
    decode_scale: float
    result: RunResult
    model_result: RunResult  # the oracle at factors 1.0: the capacity model's own sizes, told the load
    target: float
    ceiling: float
    feasible: bool
    calibrated: bool
    # whether the found factor changed any of that role's sizes from the model's own (rounded up and
    # clamped): where it changed none, the model's sizes are the fewest found, whatever the factor
    prefill_resized: bool = True
    decode_resized: bool = True


# The factors searched: wide enough that a capacity model 4x too generous or 4x too stingy is still
# found out, and reported, rather than clipped to the range.
ORACLE_SCALE_RANGE = (0.25, 4.0)
_CEILING_SCALE = 3.0


def ceiling_attainment(ample: float, widest: Callable[[], float], target: float) -> float:
    """What any layout reaches, for an infeasible trace's goal: the attainment of ample replicas (the
    model's sizes x3), and where that misses `target`, of the widest layout the spec allows (`widest`,
    run only then) if higher, so the goal does not hang on the capacity model's sizes (a prefix cache
    grows with the pool, and a model that buys too little of it would lower its own goal)."""
    return ample if ample >= target else max(ample, widest())


def oracle_calibration(
    trace: Trace,
    config: SimConfig,
    target: float | None = None,
    iterations: int = 5,
    start: tuple[float, float] = (1.0, 1.0),
    step: float = 2.0,
    score_from_s: float = 0.0,
    score_until_s: float | None = None,
) -> OracleCalibration:
    """The smallest per-role factors on the capacity model's sizes at which the foresighted oracle still
    meets the attainment target: prefill first (decode ample), then decode. Each search brackets
    around `start` by multiplying or dividing by `step` within ORACLE_SCALE_RANGE, then bisects in log
    space `iterations` times (a search started from a known calibration, as for a trace's later seeds,
    can take a small step and no bisection). Runs score the requests arriving from `score_from_s` on
    (`run.simulate`), up to `score_until_s` where the load goes on past the scored span: the oracle is
    calibrated to the span the policies it bounds are scored on."""
    from dopd_sim.policies.oracle import OraclePolicy

    resized: dict[tuple[float, float], dict[str, bool]] = {}  # per factors run, the roles they resized

    def run_with(prefill: float, decode: float) -> RunResult:
        policy = OraclePolicy(trace, prefill_scale=prefill, decode_scale=decode)
        result = simulate(trace, policy, config, score_from_s=score_from_s, score_until_s=score_until_s)
        resized[(prefill, decode)] = dict(policy.resized)
        return result

    goal = target if target is not None else config.spec.slo.attainment_target
    model_result = run_with(1.0, 1.0)
    spec = config.spec
    widest = StaticPolicy(spec.prefill.max_replicas, spec.decode.max_replicas)
    ceiling = ceiling_attainment(
        run_with(_CEILING_SCALE, _CEILING_SCALE).summary.slo_attainment,
        lambda: (
            simulate(
                trace, widest, config, score_from_s=score_from_s, score_until_s=score_until_s
            ).summary.slo_attainment
        ),
        goal,
    )
    feasible = ceiling >= goal
    if not feasible:
        goal *= ceiling  # the same share of what any layout can reach

    def meets(result: RunResult) -> bool:
        return result.summary.slo_attainment >= goal - 1e-12

    def smallest(run: Callable[[float], RunResult], first: float) -> tuple[float, RunResult | None]:
        low_bound, high_bound = ORACLE_SCALE_RANGE
        best: tuple[float, RunResult | None] = (high_bound, None)
        scale = min(max(first, low_bound), high_bound)
        result = run(scale)
        if meets(result):  # walk down until it misses
            best, high = (scale, result), scale
            low = high / step
            while low > low_bound:
                result = run(low)
                if not meets(result):
                    break
                best, high, low = (low, result), low, low / step
            low = max(low, low_bound)
        else:  # walk up until it meets
            low, high = scale, scale * step
            while True:
                high = min(high, high_bound)
                result = run(high)
                if meets(result):
                    best = (high, result)
                    break
                if high >= high_bound:
                    return best
                low, high = high, high * step
        for _ in range(iterations):
            mid = math.sqrt(low * high)
            result = run(mid)
            if meets(result):
                best, high = (mid, result), mid
            else:
                low = mid
        return best

    prefill_scale, found = smallest(lambda k: run_with(k, _CEILING_SCALE), start[0])
    calibrated = found is not None
    decode_scale, result = smallest(lambda k: run_with(prefill_scale, k), start[1])
    calibrated = calibrated and result is not None
    if result is None:
        result = run_with(prefill_scale, decode_scale)
    return OracleCalibration(
        prefill_scale,
        decode_scale,
        result,
        model_result,
        goal,
        ceiling,
        feasible,
        calibrated and meets(result),
        resized[(prefill_scale, decode_scale)]["prefill"],
        resized[(prefill_scale, decode_scale)]["decode"],
    )


def calibrate_oracle(
    trace: Trace,
    config: SimConfig,
    target: float | None = None,
    iterations: int = 5,
    score_from_s: float = 0.0,
) -> tuple[float, float, RunResult]:
    """(prefill factor, decode factor, run) of `oracle_calibration`."""
    found = oracle_calibration(trace, config, target, iterations, score_from_s=score_from_s)
    return found.prefill_scale, found.decode_scale, found.result
