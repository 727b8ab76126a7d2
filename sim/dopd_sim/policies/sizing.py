"""Sizing a layout from a known load with the operator's capacity model (`dopd_operator.capacity`).

Used for the warm start every policy shares (the cluster the capacity model sizes for the first window
of load, ready at time 0, so runs compare scaling rather than a cold first minute) and by `oracle`.
"""

from __future__ import annotations

import math

from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.profile import PerformanceProfile
from dopd_sim.config import SimConfig
from dopd_sim.policies.base import Layout, TickInput


def layout_for_workload(
    workload: Workload, profile: PerformanceProfile, config: SimConfig, aggregated: bool
) -> Layout:
    """Fewest replicas the capacity model says meet the SLOs at this workload, within the spec's bounds."""
    spec = config.spec
    model = CapacityModel(profile, spec.slo, workload)
    rate = workload.arrival_rate_rps
    prefill = min(max(model.prefill_replicas(rate), spec.prefill.min_replicas, 1), spec.prefill.max_replicas)
    decode = min(max(model.decode_replicas(rate), spec.decode.min_replicas, 1), spec.decode.max_replicas)
    if aggregated:
        return Layout(mixed=prefill + decode)
    return Layout(prefill=prefill, decode=decode)


def warm_start_layout(tick: TickInput, aggregated: bool) -> Layout:
    obs = tick.observation
    if not obs.load_known:
        return Layout(mixed=2) if aggregated else Layout(prefill=1, decode=1)
    workload = Workload(
        arrival_rate_rps=obs.arrival_rate_rps or 0.0,
        input_tokens_mean=obs.input_tokens_mean or 0.0,
        input_tokens_p90=obs.input_tokens_p90,
        output_tokens_mean=obs.output_tokens_mean or 0.0,
        output_tokens_p90=obs.output_tokens_p90,
    )
    return layout_for_workload(workload, tick.profile, tick.config, aggregated)


def ceil_div(numerator: float, denominator: float) -> int:
    return max(0, math.ceil(numerator / denominator - 1e-9)) if denominator > 0 else 0
