"""Decision-time benchmark (pytest-benchmark). `make bench` records it; the target and where it is missed:
docs/benchmarks/planner.md. Each call is a new tick, as in bench/planner_bench.py: the same load with its
token means a millionth apart (consecutive windows never measure the same means), so no call reads the
last one's memoized length fit."""

from __future__ import annotations

from collections.abc import Callable

from pytest_benchmark.fixture import BenchmarkFixture

from dopd_builders import T0, fresh_ticks, make_obs, make_spec
from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.planner import plan
from dopd_operator.planner_types import Decision, Observation, PlannerState


def _ticks(spec: DisaggregatedModelSpec, observation: Observation) -> Callable[[], Decision]:
    fresh = fresh_ticks(observation)
    return lambda: plan(spec, next(fresh), None, PlannerState(), T0)


def test_one_decision(benchmark: BenchmarkFixture) -> None:
    spec = make_spec()
    obs = make_obs(
        rate=40,
        prefill=3,
        decode=2,
        ttft_seconds=0.8,
        tpot_seconds=0.03,
        tpot_mean_seconds=0.025,
        decode_running=90,
    )
    decision = benchmark(_ticks(spec, obs))
    assert decision.prefill >= 1


def test_one_decision_with_binding_budget(benchmark: BenchmarkFixture) -> None:
    spec = make_spec(scaling={"gpuBudget": 16})
    decision = benchmark(_ticks(spec, make_obs(rate=400, prefill=3, decode=2)))
    assert decision.gpus == 16
