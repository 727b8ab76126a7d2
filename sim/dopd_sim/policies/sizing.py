"""Sizing a layout from a known load with the operator's capacity model (`dopd_operator.capacity`).

Used for the warm start every policy shares (the cluster the capacity model sizes for the first minute's
load as observed at its end, ready at time 0, so runs compare scaling rather than a cold first minute),
by `oracle` (the busiest window ahead) and by the peak-layout searches.
"""

from __future__ import annotations

import math

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.planner_types import Observation
from dopd_operator.prefix_curve import PrefixCacheCurve
from dopd_operator.profile import PerformanceProfile
from dopd_sim.config import SimConfig
from dopd_sim.policies.base import Layout

_MIN_ARRIVALS_FOR_SCV = 20


def layout_for_workload(
    workload: Workload, profile: PerformanceProfile, config: SimConfig, aggregated: bool
) -> Layout:
    """The replicas the planner's rules order for this workload, within the spec's bounds: the fewest
    prefill replicas the capacity model says meet the TTFT SLO, and decode with the planner's slot
    headroom (`CapacityModel.decode_replicas(every_slot_taken=True)`)."""
    model = CapacityModel(profile, config.spec.slo, workload, config.prefill_token_budget)
    rate = workload.arrival_rate_rps
    return _bounded_layout(
        model.prefill_replicas(rate), model.decode_replicas(rate, every_slot_taken=True), config, aggregated
    )


def _bounded_layout(prefill: int, decode: int, config: SimConfig, aggregated: bool) -> Layout:
    """`prefill` and `decode` replicas within the spec's bounds (at least one each); colocated, their sum."""
    spec = config.spec
    prefill = min(max(prefill, spec.prefill.min_replicas, 1), spec.prefill.max_replicas)
    decode = min(max(decode, spec.decode.min_replicas, 1), spec.decode.max_replicas)
    if aggregated:
        return Layout(mixed=prefill + decode)
    return Layout(prefill=prefill, decode=decode)


def busiest_window(
    trace: Trace, start_s: float, end_s: float, window_s: float
) -> tuple[float, float, int, int] | None:
    """The busiest `window_s` of arrivals among the windows overlapping [start_s, end_s + window_s)
    (those starting from one window before `start_s`, so the window covering `start_s` counts in full;
    windows past the trace's end stand for the last full one): its rate (rps), the squared coefficient
    of variation of its inter-arrival gaps (1 with too few arrivals to say), and the index range of the
    requests arriving in [start, end + window). None when none arrives there.

    A generated trace knows the law its arrivals were drawn from (`Trace.law`); there the rate is the
    law's busiest expected rate over the same windows and the burstiness the law's, not the busiest
    count of that one draw and its gaps: the most that chance put into one of several windows is above
    the load (4-6% on the bursty constant-rate traces, long-mix and code), and the capacity model, told
    the burstiness, provides for such chance bursts itself: the busiest count counted them twice."""
    arrivals = trace.arrival_s
    last_start = max(trace.duration_s - window_s, 0.0)
    start_s, end_s = min(max(start_s - window_s, 0.0), last_start), min(end_s, last_start)
    lo = int(np.searchsorted(arrivals, start_s, side="left"))
    hi = int(np.searchsorted(arrivals, end_s + window_s, side="left"))
    if hi <= lo:
        return None
    if trace.law is not None:
        return trace.law.busiest_mean_rps(start_s, end_s, window_s), trace.law.gap_scv, lo, hi
    span = arrivals[lo:hi]
    starts = int(np.searchsorted(span, end_s, side="right"))
    ends = np.searchsorted(span, span[:starts] + window_s, side="left")
    counts = ends - np.arange(starts)
    busiest = int(np.argmax(counts)) if starts else 0
    peak = int(counts[busiest]) if starts else len(span)
    gaps = np.diff(span[busiest : busiest + peak])
    scv = 1.0
    if len(gaps) >= _MIN_ARRIVALS_FOR_SCV and float(np.mean(gaps)) > 0:
        scv = float(np.var(gaps) / np.mean(gaps) ** 2)
    return peak / window_s, scv, lo, hi


def warm_start_layout(
    first: Observation, profile: PerformanceProfile, config: SimConfig, aggregated: bool
) -> Layout:
    """The cluster a run starts from: the capacity model's sizes for the first metrics window's load as
    the operator sees it at its end (`first`: its mean rate, the lengths' mean and P90), ready at time 0:
    what a planner that had watched that minute would have ordered, and no more (nothing from later in
    the trace). Where the router samples reuse distances (a trace with block hashes, an engine preset that
    reads them), the prefill pool is sized for the hits its cache would hold: the first window's curve,
    taken at face value (no engine has measured a hit rate to anchor it at), as the planner sizes with it
    a tick later. The same for every policy but `static` and `oracle` (which bring their own) and a
    cold-started dopd, so runs compare scaling, not a cold first minute. Nothing arrived in the first
    window: minReplicas."""
    rate = first.arrival_rate_rps
    if not rate or first.input_tokens_mean is None or first.output_tokens_mean is None:
        return _bounded_layout(0, 0, config, aggregated)
    workload = Workload(
        arrival_rate_rps=rate,
        input_tokens_mean=first.input_tokens_mean,
        input_tokens_p90=first.input_tokens_p90,
        output_tokens_mean=first.output_tokens_mean,
        output_tokens_p90=first.output_tokens_p90,
        prefix_hit_mix=first.prefix_hit_mix,
        prefix_cache_curve=None
        if not first.prefix_reuse_share_within
        else PrefixCacheCurve.self_anchored(
            first.prefix_reuse_share_within, config.spec.prefill.max_replicas * profile.kv_capacity_tokens
        ),
    )
    return layout_for_workload(workload, profile, config, aggregated)


def ceil_div(numerator: float, denominator: float) -> int:
    return max(0, math.ceil(numerator / denominator - 1e-9)) if denominator > 0 else 0
