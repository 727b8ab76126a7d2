"""Offline searches that use the simulator itself: the best static P/D layout at a GPU count
(DistServe's placement search) and DistServe's per-GPU goodput (the highest rate scale at which SLO
attainment stays at the target, divided by the GPUs used). Callers: policies (static), bench, cli.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
        config.resolved_profile(), config.spec.slo, trace_workload(trace, rate_percentile=90)
    )
    rate = model.workload.arrival_rate_rps
    return max(2, model.prefill_replicas(rate) + model.decode_replicas(rate))


def balanced_split(trace: Trace, config: SimConfig, gpus: int) -> int:
    """Prefill replicas maximizing the capacity model's sustainable rate min(mu_P, mu_D) at `gpus`."""
    model = CapacityModel(config.resolved_profile(), config.spec.slo, trace_workload(trace))
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


def calibrate_oracle(
    trace: Trace, config: SimConfig, target: float | None = None, iterations: int = 4
) -> tuple[float, float, RunResult]:
    """The smallest per-role factors on the capacity model's sizes at which the foresighted oracle still
    meets the attainment target (bisection on prefill, then on decode). Returns (prefill, decode, run)."""
    from dopd_sim.policies.oracle import OraclePolicy

    goal = target if target is not None else config.spec.slo.attainment_target

    def run_with(prefill: float, decode: float) -> RunResult:
        return simulate(trace, OraclePolicy(trace, prefill_scale=prefill, decode_scale=decode), config)

    def bisect(
        meets: Callable[[float], RunResult | None], low: float, high: float
    ) -> tuple[float, RunResult | None]:
        best: tuple[float, RunResult | None] = (high, meets(high))
        for _ in range(iterations):
            mid = (low + high) / 2
            result = meets(mid)
            if result is not None:
                best, high = (mid, result), mid
            else:
                low = mid
        return best

    def meeting(result: RunResult) -> RunResult | None:
        return result if result.summary.slo_attainment >= goal else None

    prefill_scale, _ = bisect(lambda k: meeting(run_with(k, 1.0)), 0.25, 1.0)
    decode_scale, result = bisect(lambda k: meeting(run_with(prefill_scale, k)), 0.25, 1.0)
    if result is None:
        result = run_with(prefill_scale, decode_scale)
    return prefill_scale, decode_scale, result
