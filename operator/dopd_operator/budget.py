"""Whether the GPU budget binds, and what it would take to serve all the demand. Pure: from the spec and
one tick's Decision.

When `scaling.gpuBudget` is below what the load needs, the planner picks the budget layout that
sustains the highest rate (`safety.fit_budget`) and the router's admission sheds the rest
(`dopd_worker.admission`). The load the planner provisions for is the demand, shed requests included:
the router counts every request in `dopd_requests_arrived_total` before it decides, so shedding does
not hide the load. This module turns that Decision into the sentence an operator acts on: "the budget
binds: serving X of Y rps; N more GPUs would serve all of it", for a `BudgetLimited` condition and an
Event (`controller.status`).

- Y is the rate the decision provisions for (`CapacityEstimate.load_rps`: the observed demand, or its
  forecast at the lead time when that is higher).
- X is the rate the decided layout sustains within the SLOs (`CapacityEstimate.sustainable_rps`, a
  lower bound), capped at Y.
- N: the layout the planner would have chosen without the budget is the capacity model's raw answer
  for Y (`Decision.raw_prefill` / `raw_decode`) within minReplicas, maxReplicas and the ratio band,
  the same shaping the planner applies before the budget; N is its GPUs minus the budget. When
  maxReplicas caps that layout, more GPUs alone would not serve all of it, and the message says so.

Callers: `controller.status` (the condition and the Event), tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dopd_operator.api import ROLES, DisaggregatedModelSpec
from dopd_operator.planner_types import Decision
from dopd_operator.safety import Layout, apply_ratio_band, clamp_bounds, gpus

CONDITION_TYPE = "BudgetLimited"
EVENT_REASON = "BudgetLimited"


class BudgetVerdict(BaseModel):
    """One tick's answer to "does the GPU budget bind?", shaped for a status condition."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    binds: bool = Field(..., description="The GPU budget cut the layout the load needs.")
    reason: Literal["BudgetBinds", "WithinBudget", "NoBudget"]
    message: str
    demand_rps: float = Field(..., ge=0, description="Y: the rate the decision provisions for.")
    serving_rps: float = Field(..., ge=0, description="X: what the decided layout sustains, at most Y.")
    budget_gpus: int | None = Field(..., description="scaling.gpuBudget; None: no budget.")
    gpus_for_demand: int = Field(..., ge=0, description="GPUs of the layout that would serve Y.")
    more_gpus: int = Field(..., ge=0, description="N: GPUs above the budget that layout needs.")
    max_replicas_limit: bool = Field(
        ..., description="maxReplicas caps that layout too: more GPUs alone would not serve all of Y."
    )

    @property
    def condition_status(self) -> Literal["True", "False"]:
        return "True" if self.binds else "False"


def budget_verdict(spec: DisaggregatedModelSpec, decision: Decision) -> BudgetVerdict | None:
    """The verdict for this tick; None when the decision carries no capacity estimate (the planner held:
    paused, metrics unknown), where the condition should be Unknown rather than guessed."""
    capacity = decision.capacity
    if capacity is None:
        return None
    raw = Layout(decision.raw_prefill, decision.raw_decode)
    wanted = apply_ratio_band(clamp_bounds(raw, spec, None), spec, None)
    capped = any(raw.get(role) > spec.role(role).max_replicas for role in ROLES)
    budget = spec.scaling.gpu_budget
    demand = capacity.load_rps
    serving = min(capacity.sustainable_rps, demand)
    needed = gpus(wanted, spec)
    binds = budget is not None and any(c.stage == "GpuBudget" for c in decision.clamps)
    more = max(needed - budget, 0) if budget is not None else 0
    if binds:
        assert budget is not None
        message = (
            f"the budget binds: serving {serving:.1f} of {demand:.1f} rps; {more} more GPUs would serve all "
            f"of it (gpuBudget {budget} -> {needed}: {wanted.prefill} prefill + {wanted.decode} decode)"
        )
        if capped:
            message += "; maxReplicas caps that layout too, raise it as well"
        message += "; the router sheds the rest (429) so what it admits meets the SLO"
        reason: Literal["BudgetBinds", "WithinBudget", "NoBudget"] = "BudgetBinds"
    elif budget is not None:
        message = f"the budget does not bind: {decision.gpus} of {budget} GPUs serve {demand:.1f} rps"
        reason = "WithinBudget"
    else:
        message = "no gpuBudget is set"
        reason = "NoBudget"
    return BudgetVerdict(
        binds=binds,
        reason=reason,
        message=message,
        demand_rps=demand,
        serving_rps=serving,
        budget_gpus=budget,
        gpus_for_demand=needed,
        more_gpus=more,
        max_replicas_limit=capped,
    )


def budget_event_due(
    previous_status: str | None, previous_message: str | None, verdict: BudgetVerdict
) -> bool:
    """Post a Warning Event when the budget starts to bind, and again when the GPUs it would take change
    (the message changes with them); not every tick while it keeps binding at the same shortfall.
    `previous_*` are the BudgetLimited condition's status and message before this tick (None: none)."""
    if not verdict.binds:
        return False
    if previous_status != "True":
        return True
    return previous_message is not None and _more_gpus_in(previous_message) != verdict.more_gpus


def _more_gpus_in(message: str) -> int | None:
    """The N of a previous "N more GPUs would serve all of it" message."""
    head, sep, _ = message.partition(" more GPUs would serve")
    if not sep:
        return None
    word = head.rsplit(" ", 1)[-1]
    return int(word) if word.isdigit() else None
