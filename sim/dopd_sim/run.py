"""Run one policy over one trace and summarize it: the function behind `dopd simulate`, `dopd bench`,
the static-layout search and the per-GPU goodput search. Callers: cli, bench, search, tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_sim.cluster import Simulator
from dopd_sim.config import SimConfig
from dopd_sim.metrics import RunSummary, summarize_latencies
from dopd_sim.policies.base import Policy


@dataclass
class RunResult:
    """A summary plus the per-request arrays behind it (for CDF plots and tests)."""

    summary: RunSummary
    ttft_s: np.ndarray
    tpot_s: np.ndarray


def simulate(
    trace: Trace, policy: Policy, config: SimConfig, trace_name: str = "", rate_scale: float = 1.0
) -> RunResult:
    """Replay `trace` under `policy`; deterministic for a given (trace, policy, config)."""
    started = time.perf_counter()
    sim = Simulator(trace, policy, config)
    sim.run()
    wall = time.perf_counter() - started
    log = sim.log
    ttft = np.asarray(log.ttft_s, dtype=np.float64)
    tpot = np.asarray(log.tpot_s, dtype=np.float64)
    slo = config.spec.slo
    stats = summarize_latencies(ttft, tpot, slo.ttft_seconds, slo.tpot_seconds)
    duration = max(trace.duration_s, 1e-9)
    # Cost is counted over the trace's span: a policy is not charged for draining after the last arrival
    # (nor credited for releasing replicas then).
    gpu_seconds = sim.gpu_seconds(until_s=duration)
    mean_gpus = gpu_seconds / duration
    goodput = (stats["met"] or 0.0) / duration
    requests = len(trace)
    rejected = sum(log.rejected)
    final = sim.current_layout()
    layout = f"{final.mixed} colocated" if sim.aggregated else f"{final.prefill}P/{final.decode}D"
    summary = RunSummary(
        policy=policy.name,
        trace=trace_name or trace.source,
        rate_scale=rate_scale,
        seed=config.seed,
        requests=requests,
        completed=log.completed,
        rejected=rejected,
        unfinished=requests - log.completed - rejected,
        slo_attainment=float(stats["slo_attainment"] or 0.0),
        ttft_attainment=float(stats["ttft_attainment"] or 0.0),
        tpot_attainment=float(stats["tpot_attainment"] or 0.0),
        goodput_rps=goodput,
        goodput_rps_per_gpu=goodput / mean_gpus if mean_gpus > 0 else 0.0,
        ttft_p50_s=stats["ttft_p50_s"],
        ttft_p90_s=stats["ttft_p90_s"],
        ttft_p99_s=stats["ttft_p99_s"],
        tpot_p50_s=stats["tpot_p50_s"],
        tpot_p90_s=stats["tpot_p90_s"],
        tpot_p99_s=stats["tpot_p99_s"],
        ttft_mean_s=stats["ttft_mean_s"],
        tpot_mean_s=stats["tpot_mean_s"],
        gpu_hours=gpu_seconds / 3600.0,
        mean_gpus=mean_gpus,
        peak_gpus=sim.peak_gpus,
        scale_actions=sim.scale_actions,
        duration_s=trace.duration_s,
        simulated_end_s=sim.end_s,
        wall_seconds=wall,
        layout=layout,
        timeline=[point.__dict__ for point in sim.timeline],
    )
    return RunResult(summary, ttft, tpot)
