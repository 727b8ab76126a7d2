"""Decision-time benchmark (pytest-benchmark). `make bench` records it; the target and where it is missed:
docs/benchmarks/planner.md."""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.planner import plan
from dopd_operator.planner_types import PlannerState


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
    decision = benchmark(plan, spec, obs, None, PlannerState(), T0)
    assert decision.prefill >= 1


def test_one_decision_with_binding_budget(benchmark: BenchmarkFixture) -> None:
    spec = make_spec(scaling={"gpuBudget": 16})
    decision = benchmark(plan, spec, make_obs(rate=400, prefill=3, decode=2), None, PlannerState(), T0)
    assert decision.gpus == 16
