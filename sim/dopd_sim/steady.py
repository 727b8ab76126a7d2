"""The capacity model against the simulator's engines at a steady load.

For N replicas of one role (the other pool ample) and a length mix, the highest Poisson rate the capacity
model says they serve within the SLO, and the highest they do serve in the simulator. Nothing moves
(no forecast, no window, no policy), so the ratio of the two is the model's own error: 1.0 exact, below 1
conservative (it would buy more replicas than needed), above 1 optimistic. The simulator benchmark's
oracle factors measure the model through a policy on loads that move; this measures the model alone.

The model is given perfect knowledge of the load: the mix's lengths (a sample drawn apart from the
simulated requests) and the arrivals' burstiness: Poisson, or gamma inter-arrival gaps of coefficient of
variation `arrival_cv` (the suite's bursty long-mix and code traces use 2, a squared CV of 4). A pool
meets the SLO when the attainment target's share of its requests meet the role's objective (TTFT for
prefill, TPOT for decode); where some requests miss with nobody ahead of them (prompts whose prefill
alone outlasts the TTFT), the goal is that share of what an idle pool reaches, as the model sizes for
the other prompts (and `search.oracle_calibration` aims).

Callers: bench/capacity_bench.py, tests/sim/test_steady.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from dopd_operator.capacity import CapacityModel
from dopd_sim.config import QueuePolicy, SimConfig
from dopd_sim.policies.oracle import known_workload
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.run import simulate
from dopd_sim.workload import load_workload

Role = Literal["prefill", "decode"]
REQUESTS_PER_RUN = 30_000  # a steady run lasts this many arrivals (and at least MIN_RUN_SECONDS)
MIN_RUN_SECONDS = 120.0
BRACKET = (0.5, 1.6)  # the simulator's rate is searched within these multiples of the model's
BISECTIONS = 7  # about 1% resolution on that bracket
_MODEL_SAMPLE_SEED_OFFSET = 1000  # the model's length sample is drawn apart from the simulated requests


def steady_spec(mix: str, rate_rps: float, arrival_cv: float = 1.0) -> str:
    """The synthetic trace of a steady load (`dopd_sim.synthetic`), `mix` lengths: Poisson arrivals
    (`arrival_cv` 1), or gamma gaps of that coefficient of variation."""
    duration_s = max(MIN_RUN_SECONDS, REQUESTS_PER_RUN / rate_rps)
    shape = "poisson" if arrival_cv == 1.0 else f"gamma,cv={arrival_cv:g}"
    return f"synthetic:{shape},rate_rps={rate_rps:.4f},duration_s={duration_s:.0f},lengths={mix}"


def steady_model(mix: str, config: SimConfig, seed: int, arrival_cv: float = 1.0) -> CapacityModel:
    """The capacity model knowing a steady load of `mix` perfectly: its lengths and its arrivals'
    squared CV (the rate is set per question: `replicas_for` passes it; the workload's own is unused)."""
    sample = load_workload(
        f"synthetic:poisson,rate_rps=50,duration_s=400,lengths={mix}", seed=_MODEL_SAMPLE_SEED_OFFSET + seed
    )
    workload = known_workload(
        sample.input_tokens, sample.output_tokens, rate_rps=1.0, arrival_scv=arrival_cv**2
    )
    return CapacityModel(config.resolved_profile(), config.spec.slo, workload, config.prefill_token_budget)


def replicas_for(model: CapacityModel, role: Role, rate_rps: float) -> int:
    return model.prefill_replicas(rate_rps) if role == "prefill" else model.decode_replicas(rate_rps)


def highest(fits: Callable[[float], bool], low: float, high: float, steps: int) -> float:
    """The highest rate in [low, high] at which `fits` holds, by bisection in log space (`low` when it
    fails there too, `high` when it holds there)."""
    if not fits(low):
        return low
    if fits(high):
        return high
    for _ in range(steps):
        mid = math.sqrt(low * high)
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def model_highest_rps(model: CapacityModel, role: Role, replicas: int) -> float:
    """The highest rate at which the model asks for at most `replicas` of `role`."""
    return highest(lambda r: replicas_for(model, role, r) <= replicas, 1e-3, 1e5, 60)


def steady_attainment(
    mix: str,
    role: Role,
    rate_rps: float,
    replicas: int,
    model: CapacityModel,
    config: SimConfig,
    arrival_cv: float = 1.0,
) -> float:
    """The share of requests meeting `role`'s objective in the simulator, at a steady `rate_rps` with
    `replicas` of `role` and the other pool ample (twice what the model asks, plus 2)."""
    trace = load_workload(steady_spec(mix, rate_rps, arrival_cv), seed=config.seed)
    other: Role = "decode" if role == "prefill" else "prefill"
    ample = 2 * replicas_for(model, other, rate_rps) + 2
    prefill, decode = (replicas, ample) if role == "prefill" else (ample, replicas)
    summary = simulate(trace, StaticPolicy(prefill=prefill, decode=decode), config).summary
    return summary.ttft_attainment if role == "prefill" else summary.tpot_attainment


@dataclass(frozen=True)
class SteadyAccuracy:
    """One (mix, role, pool size, seed): the model's highest rate and the simulator's."""

    mix: str
    role: Role
    replicas: int
    seed: int
    arrival_cv: float
    prefill_queue: QueuePolicy  # the simulated router's prefill queue
    model_rps: float
    sim_rps: float
    goal: float  # the attainment the simulator's pool had to reach
    bracketed: bool  # False: the simulator's rate is at an end of BRACKET (the ratio is a bound)

    @property
    def ratio(self) -> float:
        return self.model_rps / self.sim_rps


def measure(
    mix: str,
    role: Role,
    replicas: int,
    seed: int,
    arrival_cv: float = 1.0,
    prefill_queue: QueuePolicy = "fifo",
) -> SteadyAccuracy:
    """One row: `prefill_queue` is the simulated router's (FIFO, the baselines' and vLLM's default, or
    dopd's length-aware one); the model is the operator's either way."""
    config = SimConfig(seed=seed, prefill_queue=prefill_queue)
    model = steady_model(mix, config, seed, arrival_cv)
    model_rps = model_highest_rps(model, role, replicas)
    low, high = BRACKET[0] * model_rps, BRACKET[1] * model_rps
    target = config.spec.slo.attainment_target
    ceiling = steady_attainment(mix, role, low, 8 * replicas, model, config, arrival_cv)
    goal = target * ceiling if ceiling < target else target
    sim_rps = highest(
        lambda r: steady_attainment(mix, role, r, replicas, model, config, arrival_cv) >= goal,
        low,
        high,
        BISECTIONS,
    )
    return SteadyAccuracy(
        mix, role, replicas, seed, arrival_cv, prefill_queue, model_rps, sim_rps, goal, low < sim_rps < high
    )
