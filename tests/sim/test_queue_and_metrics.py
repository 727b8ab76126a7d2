"""Prefill queue order, the length-aware scheduling effect, and the metric arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_helpers import make_trace, toy_config, toy_profile

from dopd_sim.metrics import percentile, summarize_latencies
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.queues import PrefillQueue
from dopd_sim.run import simulate


def test_fifo_queue_keeps_arrival_order_under_budget() -> None:
    queue = PrefillQueue("fifo", 1.0, [500, 100, 300, 50])
    for request in range(4):
        queue.push(request, 0.0)
    assert queue.pop_batch(600, 0.0) == [0, 1]  # 300 would exceed 600; FIFO does not skip ahead
    assert queue.pop_batch(600, 0.0) == [2, 3]
    assert len(queue) == 0


def test_length_aware_queue_serves_shortest_first_until_a_prompt_starves() -> None:
    queue = PrefillQueue("length-aware", 1.0, [500, 100, 300, 50])
    for request in range(4):
        queue.push(request, 0.0)
    assert queue.pop_batch(200, 0.5) == [3, 1]  # shortest first: 50 + 100
    assert queue.pop_batch(200, 2.0) == [0]  # request 0 has waited 2 s >= 1 s: served before 300
    assert queue.pop_batch(200, 2.0) == [2]
    assert len(queue) == 0


def test_length_aware_queue_cuts_short_prompt_ttft() -> None:
    # A burst of long and short prompts on one prefill replica (one prompt per batch).
    rng = np.random.default_rng(3)
    prompts = [4000 if i % 2 else 200 for i in range(40)]
    arrivals = np.sort(rng.uniform(0, 0.5, 40)).tolist()
    trace = make_trace(arrivals, prompts, [2] * 40)
    profile = toy_profile(prefill_a=0.005, prefill_b=5e-5)
    short = [i for i, p in enumerate(prompts) if p == 200]
    ttft = {}
    for queue in ("fifo", "length-aware"):
        config = toy_config(profile, prefill_queue=queue, prefill_token_budget=1, starvation_seconds=60.0)
        result = simulate(trace, StaticPolicy(1, 1), config)
        ttft[queue] = float(np.mean(result.ttft_s[short]))
    assert ttft["length-aware"] < 0.5 * ttft["fifo"]


def test_nearest_rank_percentiles() -> None:
    values = np.array([0.5, 1.0, 2.0])
    assert percentile(values, 50) == 1.0  # rank ceil(1.5) = 2
    assert percentile(values, 90) == 2.0  # rank ceil(2.7) = 3
    assert percentile(np.array([]), 90) is None


def test_attainment_counts_unserved_requests_as_misses() -> None:
    ttft = np.array([0.5, 2.0, 1.0, math.nan])
    tpot = np.array([0.01, 0.01, 0.06, math.nan])
    stats = summarize_latencies(ttft, tpot, ttft_slo_s=1.5, tpot_slo_s=0.05)
    # Only the first meets both; the unserved fourth is in the denominator (else it would be 1/3).
    assert stats["slo_attainment"] == 0.25
    assert stats["ttft_attainment"] == 0.5
    assert stats["tpot_attainment"] == 0.5
    assert stats["ttft_p50_s"] == 1.0


def test_gpu_hours_and_goodput_on_a_static_cluster() -> None:
    # 3 replicas from t=0 until the last request finishes at 3600.1 + 0.01*9 s.
    trace = make_trace([0.0, 3600.0], [10, 10], [10, 10])
    summary = simulate(trace, StaticPolicy(2, 1), toy_config(toy_profile())).summary
    assert summary.simulated_end_s == pytest.approx(3600.19)
    assert summary.gpu_hours == pytest.approx(3 * 3600.19 / 3600)
    assert summary.peak_gpus == 3
    assert summary.goodput_rps == pytest.approx(2 / 3600.0)
