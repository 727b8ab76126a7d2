"""Run one policy over one trace and summarize it: the function behind `dopd simulate`, `dopd bench`,
the static-layout search and the per-GPU goodput search. Callers: cli, bench, search, tests.

`score_from_s` treats the trace's first seconds as the load's past, as a cluster that has been serving
has it in Prometheus: they are replayed and decided on like the rest (their arrivals are the history
the forecaster and the surge headroom read), and nothing in them is scored. Attainment, latencies,
request counts and goodput are those of the requests arriving from then on, GPU-hours those held from
then on to the trace's end; peak GPUs, scale actions and the timeline cover the whole replay.
`score_until_s` does the same at the other end: the load going on past the scored span (a cluster does
not stop at the end of a measurement), replayed and decided on, its requests and GPUs not scored
(`bench/miss_profile.py --load-goes-on`).
"""

from __future__ import annotations

import math
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


def check_score_from(score_from_s: float, trace: Trace, score_until_s: float | None = None) -> None:
    """Raise ValueError unless [`score_from_s`, `score_until_s`) leaves part of `trace` to score (from 0
    to the trace's end always does)."""
    if score_from_s < 0.0 or (score_from_s > 0.0 and score_from_s >= trace.duration_s):
        raise ValueError(
            f"score_from_s (--history-seconds) is {score_from_s:g} s, which leaves nothing to score in a "
            f"trace of {trace.duration_s:g} s: give at least 0 and less than the trace's span"
        )
    if score_until_s is not None and not score_from_s < score_until_s <= trace.duration_s:
        raise ValueError(
            f"score_until_s is {score_until_s:g} s: give more than score_from_s ({score_from_s:g} s) and at "
            f"most the trace's span ({trace.duration_s:g} s)"
        )


def scored_span(trace: Trace, score_from_s: float) -> Trace:
    """The requests arriving from `score_from_s` on, re-based to start at 0: what a fixed layout, which
    learns nothing from a past, is sized for and runs on (the trace itself when there is no past)."""
    return trace.window(score_from_s, math.inf) if score_from_s > 0 else trace


def fixed_layout_span(
    trace: Trace, score_from_s: float, score_until_s: float | None
) -> tuple[Trace, Trace, float | None]:
    """For a fixed layout, which learns nothing from a past: the span it runs on (`scored_span`), the
    scored requests alone it is sized for (the same where the load does not go on past `score_until_s`),
    and that end in the span's re-based time."""
    ran = scored_span(trace, score_from_s)
    if score_until_s is None:
        return ran, ran, None
    # how far `ran`'s time base is from the trace's (0 where it is the trace itself): both end with the
    # same request
    shift_s = float(trace.arrival_s[-1] - ran.arrival_s[-1]) if len(ran) else 0.0
    until = score_until_s - shift_s
    return ran, ran.window(0.0, until), until


def simulate(
    trace: Trace,
    policy: Policy,
    config: SimConfig,
    trace_name: str = "",
    rate_scale: float = 1.0,
    *,
    score_from_s: float = 0.0,
    score_until_s: float | None = None,
) -> RunResult:
    """Replay `trace` under `policy`; deterministic for a given (trace, policy, config). The summary
    scores what arrives in [`score_from_s`, `score_until_s`) (None: to the end; module docstring); the
    arrays cover every request."""
    check_score_from(score_from_s, trace, score_until_s)
    end_s = trace.duration_s if score_until_s is None else score_until_s
    started = time.perf_counter()
    sim = Simulator(trace, policy, config)
    sim.run()
    wall = time.perf_counter() - started
    log = sim.log
    ttft = np.asarray(log.ttft_s, dtype=np.float64)
    tpot = np.asarray(log.tpot_s, dtype=np.float64)
    arrivals = np.asarray(trace.arrival_s)
    scored = arrivals >= score_from_s
    if score_until_s is not None:
        scored &= arrivals < score_until_s
    slo = config.spec.slo
    stats = summarize_latencies(ttft[scored], tpot[scored], slo.ttft_seconds, slo.tpot_seconds)
    span = max(end_s - score_from_s, 1e-9)
    # Cost is counted over the trace's span: a policy is not charged for draining after the last arrival
    # (nor credited for releasing replicas then).
    gpu_seconds = sim.gpu_seconds(until_s=end_s, since_s=score_from_s)
    mean_gpus = gpu_seconds / span
    goodput = (stats["met"] or 0.0) / span
    requests = int(np.count_nonzero(scored))
    rejected = int(np.count_nonzero(np.asarray(log.rejected)[scored]))
    completed = int(np.count_nonzero(np.isfinite(np.asarray(log.finish_s)[scored])))
    final = sim.current_layout()
    layout = f"{final.mixed} colocated" if sim.aggregated else f"{final.prefill}P/{final.decode}D"
    summary = RunSummary(
        policy=policy.name,
        trace=trace_name or trace.source,
        rate_scale=rate_scale,
        seed=config.seed,
        requests=requests,
        completed=completed,
        rejected=rejected,
        unfinished=requests - completed - rejected,
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
        peak_gpus=sim.peak_gpus_within(score_from_s, end_s),
        scale_actions=sim.scale_actions,
        duration_s=end_s,
        simulated_end_s=sim.end_s,
        wall_seconds=wall,
        layout=layout,
        timeline=[point.__dict__ for point in sim.timeline],
        scored_from_s=score_from_s,
        prefix_cache_hit_rate=sim.prefix_cache_hit_rate(
            score_from_s, math.inf if score_until_s is None else score_until_s
        ),
    )
    return RunResult(summary, ttft, tpot)
