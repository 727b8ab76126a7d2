"""Prefill queue order (the router's scheduler), the length-aware scheduling effect, and the metric arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from sim_helpers import make_trace, toy_config, toy_profile

from dopd_sim.config import QueuePolicy
from dopd_sim.metrics import percentile, summarize_latencies
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.queues import PrefillQueue, scheduler_config
from dopd_sim.report import MeanCI
from dopd_sim.run import simulate
from dopd_worker.scheduler import Lane


@dataclass
class Worker:
    """A prefill worker as the router's policy sees it (what `instances.PrefillInstance` carries)."""

    name: str
    inflight_tokens: int = 0
    inflight_long: int = 0
    lane: Lane = Lane.SHARED


def _queue(policy: QueuePolicy, prompts: list[int], budget: int = 600) -> PrefillQueue:
    config = scheduler_config(
        toy_config(toy_profile(), prefill_token_budget=budget, starvation_seconds=1.0), policy
    )
    queue = PrefillQueue(config, prompts)
    for request in range(len(prompts)):
        queue.push(request, 0.0)
    return queue


def test_fifo_queue_is_the_routers_head_of_line_order() -> None:
    queue = _queue("fifo", [500, 100, 300, 50])
    busy = Worker("p0", inflight_tokens=500)
    assert queue.next_assignment(0.0, [Worker("p0")]) == (0, "p0")
    # 100 fits next to 500 in-flight tokens of a 600 budget; 300 would not, and FIFO never skips ahead.
    assert queue.next_assignment(0.0, [busy]) == (1, "p0")
    assert queue.next_assignment(0.0, [Worker("p0", inflight_tokens=600)]) is None
    assert len(queue) == 2


def test_length_aware_queue_serves_shortest_first_until_a_prompt_ages() -> None:
    queue = _queue("length-aware", [500, 100, 300, 50])
    idle = [Worker("p0")]
    assert queue.next_assignment(0.5, idle) == (3, "p0")  # shortest first: 50, then 100
    assert queue.next_assignment(0.5, idle) == (1, "p0")
    # At 2 s every prompt has waited past the 1 s aging bound: oldest first (500 before 300).
    assert queue.next_assignment(2.0, idle) == (0, "p0")
    assert queue.next_assignment(2.0, idle) == (2, "p0")
    assert len(queue) == 0


def test_length_aware_queue_cuts_short_prompt_ttft() -> None:
    # A burst of long and short prompts on one prefill replica; a long prompt fills a batch's budget.
    rng = np.random.default_rng(3)
    prompts = [4000 if i % 2 else 200 for i in range(40)]
    arrivals = np.sort(rng.uniform(0, 0.5, 40)).tolist()
    trace = make_trace(arrivals, prompts, [2] * 40)
    profile = toy_profile(prefill_a=0.005, prefill_b=5e-5)
    short = [i for i, p in enumerate(prompts) if p == 200]
    ttft = {}
    for queue in ("fifo", "length-aware"):
        config = toy_config(profile, prefill_queue=queue, prefill_token_budget=4000, starvation_seconds=60.0)
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


def test_gpu_hours_count_the_traces_span_not_the_drain() -> None:
    # 3 replicas from t=0; the last request arrives at 3600 s and finishes at 3600.19 s. GPU-hours count
    # the span (3600 s); counting the drain as well would charge 3 x 0.19 s more.
    trace = make_trace([0.0, 3600.0], [10, 10], [10, 10])
    summary = simulate(trace, StaticPolicy(2, 1), toy_config(toy_profile())).summary
    assert summary.simulated_end_s == pytest.approx(3600.19)
    assert summary.gpu_hours == pytest.approx(3.0)
    assert summary.mean_gpus == pytest.approx(3.0)
    assert summary.peak_gpus == 3
    assert summary.goodput_rps == pytest.approx(2 / 3600.0)


@pytest.mark.parametrize(
    ("values", "mean", "half_width"),
    [
        # t(0.975, 4 dof) = 2.776; sd 1.5811 / sqrt(5) = 0.7071 -> 1.963
        pytest.param([1.0, 2.0, 3.0, 4.0, 5.0], 3.0, 1.963, id="five-seeds"),
        pytest.param([2.0], 2.0, 0.0, id="one-run-has-no-interval"),
    ],
)
def test_mean_and_95_percent_interval(values: list[float], mean: float, half_width: float) -> None:
    stat = MeanCI.of(values)
    assert stat.mean == pytest.approx(mean)
    assert stat.half_width == pytest.approx(half_width, abs=1e-3)
