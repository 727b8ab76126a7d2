"""The BudgetLimited verdict: does the GPU budget bind, serving X of Y rps, and how many more GPUs would
serve all of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_operator.api import DisaggregatedModel, DisaggregatedModelSpec
from dopd_operator.budget import budget_event_due, budget_verdict
from dopd_operator.planner import plan
from dopd_operator.planner_types import (
    CapacityEstimate,
    Clamp,
    Decision,
    Observation,
    PlannerState,
    RoleObservation,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vllm-llama3-8b.yaml"


def _spec(**scaling: Any) -> DisaggregatedModelSpec:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["scaling"].update(scaling)
    return DisaggregatedModel.model_validate(document).spec


def _decision(raw: tuple[int, int], layout: tuple[int, int], budget_clamped: bool) -> Decision:
    clamps = (
        (
            Clamp(stage="GpuBudget", role="prefill", before=raw[0], after=layout[0], reason="budget"),
            Clamp(stage="GpuBudget", role="decode", before=raw[1], after=layout[1], reason="budget"),
        )
        if budget_clamped
        else ()
    )
    return Decision(
        prefill=layout[0],
        decode=layout[1],
        raw_prefill=raw[0],
        raw_decode=raw[1],
        gpus=sum(layout),
        reasons=("load 400.00 rps observed",),
        clamps=clamps,
        capacity=CapacityEstimate(
            load_rps=400.0,
            prefill_service_seconds_mean=0.03,
            prefill_rps_per_replica=32.5,
            decode_batch_size=256,
            decode_step_seconds=0.026,
            decode_rps_per_replica=46.4,
            sustainable_rps=94.9,
            ttft_reachable=True,
            tpot_reachable=True,
        ),
        state=PlannerState(),
        metrics_healthy=True,
        scaling_limited=budget_clamped,
        capacity_blocked=False,
    )


def test_a_binding_budget_says_what_it_serves_and_what_it_would_take() -> None:
    verdict = budget_verdict(_spec(gpuBudget=6), _decision((13, 9), (3, 3), budget_clamped=True))
    assert verdict is not None and verdict.binds and verdict.condition_status == "True"
    assert verdict.reason == "BudgetBinds"
    # 13 prefill + 9 decode = 22 GPUs for 400 rps, 16 above the budget of 6
    assert (verdict.gpus_for_demand, verdict.more_gpus, verdict.budget_gpus) == (22, 16, 6)
    assert (verdict.serving_rps, verdict.demand_rps) == (94.9, 400.0)
    assert verdict.message.startswith(
        "the budget binds: serving 94.9 of 400.0 rps; 16 more GPUs would serve all of it "
        "(gpuBudget 6 -> 22: 13 prefill + 9 decode)"
    )
    assert not verdict.max_replicas_limit


def test_max_replicas_capping_the_layout_is_said_too() -> None:
    # 20 prefill wanted, maxReplicas 16: 16 + 9 = 25 GPUs, and more GPUs alone would not do
    verdict = budget_verdict(_spec(gpuBudget=6), _decision((20, 9), (3, 3), budget_clamped=True))
    assert verdict is not None and verdict.max_replicas_limit
    assert (verdict.gpus_for_demand, verdict.more_gpus) == (25, 19)
    assert "maxReplicas caps that layout too" in verdict.message


def test_minimums_count_in_the_gpus_needed() -> None:
    # raw 0 decode replicas (no load for decode) still needs decode.minReplicas = 1: 5 + 1 GPUs
    verdict = budget_verdict(_spec(gpuBudget=4), _decision((5, 0), (3, 1), budget_clamped=True))
    assert verdict is not None and (verdict.gpus_for_demand, verdict.more_gpus) == (6, 2)


def test_within_budget_and_no_budget_do_not_bind() -> None:
    within = budget_verdict(_spec(gpuBudget=24), _decision((13, 9), (13, 9), budget_clamped=False))
    assert within is not None and not within.binds and within.reason == "WithinBudget"
    assert within.condition_status == "False" and within.more_gpus == 0
    assert within.message == "the budget does not bind: 22 of 24 GPUs serve 400.0 rps"
    free = budget_verdict(_spec(gpuBudget=None), _decision((13, 9), (13, 9), budget_clamped=False))
    assert free is not None and free.reason == "NoBudget" and free.budget_gpus is None


def test_a_held_decision_has_no_verdict() -> None:
    held = _decision((1, 1), (1, 1), budget_clamped=False).model_copy(update={"capacity": None})
    assert budget_verdict(_spec(gpuBudget=6), held) is None  # Unknown, not "does not bind"


@pytest.mark.parametrize(
    ("previous_status", "previous_more", "more", "due"),
    [
        pytest.param(None, None, 4, True, id="first-tick-binding"),
        pytest.param("False", None, 4, True, id="starts-binding"),
        pytest.param("True", 4, 4, False, id="keeps-binding-at-the-same-shortfall"),
        pytest.param("True", 4, 6, True, id="shortfall-changes"),
    ],
)
def test_event_when_the_budget_starts_to_bind_or_the_shortfall_moves(
    previous_status: str | None, previous_more: int | None, more: int, due: bool
) -> None:
    spec = _spec(gpuBudget=6)
    previous = (
        budget_verdict(spec, _decision((3 + previous_more, 3), (3, 3), True)) if previous_more else None
    )
    verdict = budget_verdict(spec, _decision((3 + more, 3), (3, 3), True))
    assert verdict is not None and verdict.more_gpus == more
    previous_message = previous.message if previous is not None else None
    assert budget_event_due(previous_status, previous_message, verdict) is due


def test_no_event_while_the_budget_does_not_bind() -> None:
    verdict = budget_verdict(_spec(gpuBudget=24), _decision((13, 9), (13, 9), budget_clamped=False))
    assert verdict is not None and not budget_event_due("True", "whatever", verdict)


def test_through_the_planner_shed_demand_keeps_the_budget_binding() -> None:
    """The planner sizes for the arrival rate the router counts before admission (shed requests
    included); at twice what 6 GPUs sustain, the budget binds and the verdict says so."""
    spec = _spec(gpuBudget=6)
    observation = Observation(
        arrival_rate_rps=400.0,
        input_tokens_mean=1155.0,
        input_tokens_p90=2000.0,
        output_tokens_mean=211.0,
        output_tokens_p90=450.0,
        prefill=RoleObservation(current=3, ready=3),
        decode=RoleObservation(current=3, ready=3),
    )
    decision = plan(spec, observation, None, PlannerState(), datetime(2026, 1, 1, tzinfo=UTC))
    verdict = budget_verdict(spec, decision)
    assert verdict is not None and verdict.binds and decision.gpus <= 6
    assert verdict.demand_rps == 400.0 and 0 < verdict.serving_rps < 400.0
    assert verdict.more_gpus > 0 and f"gpuBudget 6 -> {6 + verdict.more_gpus}" in verdict.message
