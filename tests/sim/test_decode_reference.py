"""The closed-form decode segments against a plain one-event-per-step reference loop."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import make_trace, toy_config, toy_profile

from dopd_sim.policies.static import StaticPolicy
from dopd_sim.run import simulate


def reference_finish_times(
    arrivals: list[float], prompts: list[int], outputs: list[int], a: float, b: float
) -> list[float]:
    """Continuous batching step by step: a sequence arriving mid-step joins at the next step boundary."""
    waiting = sorted(range(len(arrivals)), key=lambda i: arrivals[i])
    finish = [0.0] * len(arrivals)
    batch: dict[int, list[int]] = {}  # request -> [context, steps left]
    now = 0.0
    while waiting or batch:
        if not batch:
            now = max(now, arrivals[waiting[0]])
        while waiting and arrivals[waiting[0]] <= now:
            r = waiting.pop(0)
            batch[r] = [prompts[r] + 1, outputs[r] - 1]
        now += a + b * sum(ctx for ctx, _ in batch.values())
        for r in list(batch):
            batch[r][0] += 1
            batch[r][1] -= 1
            if batch[r][1] == 0:
                finish[r] = now
                del batch[r]
    return finish


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_segments_match_step_by_step(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    arrivals = np.sort(rng.uniform(0, 5, n)).tolist()
    prompts = rng.integers(1, 300, n).tolist()
    outputs = rng.integers(2, 120, n).tolist()
    a, b = 0.01, 2e-5
    # Prefill takes no time and there are as many prefill replicas as requests: decode sees the arrivals.
    config = toy_config(toy_profile(prefill_a=0.0, decode_a=a, decode_b=b))
    result = simulate(make_trace(arrivals, prompts, outputs), StaticPolicy(n, 1), config)
    expected = reference_finish_times(arrivals, prompts, outputs, a, b)
    finish = [arrivals[i] + result.ttft_s[i] + result.tpot_s[i] * (outputs[i] - 1) for i in range(n)]
    assert finish == pytest.approx(expected, abs=1e-9)
