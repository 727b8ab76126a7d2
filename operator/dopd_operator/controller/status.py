"""What people see: the status a tick writes, its conditions, and the Events that explain each action.

Pure: (previous status, this tick's inputs and result, now) -> (new status, events). The controller
writes the status in one patch and posts the events; nothing here talks to the API server.

Conditions follow Kubernetes conventions (type, status True/False/Unknown, CamelCase reason, message,
lastTransitionTime that moves only when status changes, observedGeneration):
- SpecValid: the spec can work (semantic checks in `validation.py`).
- MetricsHealthy: Prometheus answered and every input the planner needs is known.
- ScalingActive: dopd is changing replicas (False in Advisory and Paused mode, when metrics are
  unknown, when another controller owns the replicas, or when the spec is invalid).
- Ready: every pool has the replicas dopd decided on, ready.
- ScalingLimited: a limit (max replicas, GPU budget, step limit) changed the planner's answer.
- CapacityBlocked: pods dopd asked for cannot be scheduled (no free GPUs).
- BudgetLimited: the GPU budget binds: "serving X of Y rps; N more GPUs would serve all of it"
  (`dopd_operator.budget`).
Event reasons are the `EventReason` vocabulary, documented in docs/operator.md.
Callers: `controller.loop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from dopd_operator.api import (
    Condition,
    DecisionRecord,
    DisaggregatedModelSpec,
    DisaggregatedModelStatus,
    ForecastStatus,
    ObservedLoad,
    Role,
    RoleStatus,
    ScalingMode,
    SloAttainmentStatus,
)
from dopd_operator.budget import CONDITION_TYPE as BUDGET_CONDITION
from dopd_operator.budget import budget_event_due, budget_verdict
from dopd_operator.planner_types import Decision, Observation
from dopd_operator.tick import TickResult

HISTORY_LENGTH = 10
ConditionStatus = Literal["True", "False", "Unknown"]


class EventReason(StrEnum):
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    RECOMMENDED = "Recommended"  # Advisory mode: what dopd would have done
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    METRICS_RECOVERED = "MetricsRecovered"
    INVALID_SPEC = "InvalidSpec"
    SPEC_FIXED = "SpecValid"
    CAPACITY_BLOCKED = "CapacityBlocked"
    SCALING_CONFLICT = "ScalingConflict"
    SCALE_FAILED = "ScaleFailed"
    BUDGET_LIMITED = "BudgetLimited"
    CHILDREN_APPLIED = "ChildrenApplied"


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: EventReason
    message: str


@dataclass(frozen=True)
class Health:
    """Why the metrics are (un)healthy, for MetricsHealthy."""

    healthy: bool
    reason: str
    message: str


WAITING_FOR_METRICS = "WaitingForMetrics"


def metrics_grace_seconds(spec: DisaggregatedModelSpec) -> float:
    """How long a new model may have no metrics before that is a warning: two metrics windows (rates and
    quantiles need samples across one) and two ticks."""
    return 2 * spec.metrics.window_seconds + 2 * spec.scaling.interval_seconds


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Conditions with one set; its lastTransitionTime moves only when its status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:1024],
        last_transition_time=since,
        observed_generation=generation,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def condition(status: DisaggregatedModelStatus | None, type_: str) -> Condition | None:
    if status is None:
        return None
    return next((c for c in status.conditions if c.type == type_), None)


def ratio_text(prefill: int, decode: int) -> str | None:
    if decode == 0:
        return None
    return f"{prefill}:{decode} ({prefill / decode:.2f} P/D)"


def _role_status(desired: int, observation: Observation, role: Role) -> RoleStatus:
    seen = observation.role(role)
    return RoleStatus(
        desired=desired,
        current=seen.current,
        ready=seen.ready,
        unschedulable=seen.unschedulable,
        startup_seconds=None if seen.startup_seconds is None else round(seen.startup_seconds, 1),
        summary=f"{seen.ready}/{desired}",
    )


def capacity_deficit(spec: DisaggregatedModelSpec, observation: Observation) -> str | None:
    """'3 decode pod(s) cannot be scheduled: 3 GPUs short' when the cluster is full; None otherwise."""
    parts = []
    short = 0
    for role in ("prefill", "decode"):
        pods = observation.role(role).unschedulable
        if pods:
            gpus = pods * spec.role(role).gpus_per_replica  # type: ignore[arg-type]
            short += gpus
            parts.append(f"{pods} {role} pod(s)")
    if not parts:
        return None
    return (
        f"{' and '.join(parts)} cannot be scheduled: the cluster is {short} nvidia.com/gpu short; dopd "
        "stops adding replicas until they are placed (add GPU nodes or lower maxReplicas)"
    )


def _load(observation: Observation) -> ObservedLoad:
    return ObservedLoad(
        arrival_rate_rps=_round(observation.arrival_rate_rps),
        shed_rate_rps=_round(observation.shed_rate_rps),
        input_tokens_mean=_round(observation.input_tokens_mean),
        input_tokens_p90=_round(observation.input_tokens_p90),
        output_tokens_mean=_round(observation.output_tokens_mean),
        output_tokens_p90=_round(observation.output_tokens_p90),
        queue_depth=_round(observation.prefill_queue_depth),
        decode_queue_depth=_round(observation.decode_queue_depth),
        kv_usage=_round(observation.decode_kv_usage, 4),
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _attainment(observation: Observation) -> SloAttainmentStatus:
    known = [v for v in (observation.ttft_attainment, observation.tpot_attainment) if v is not None]
    summary = f"{min(known) * 100:.1f}%" if known else "-"
    return SloAttainmentStatus(
        ttft=_round(observation.ttft_attainment, 4),
        tpot=_round(observation.tpot_attainment, 4),
        summary=summary,
    )


def decision_record(decision: Decision, now: datetime) -> DecisionRecord:
    return DecisionRecord.model_validate(
        {
            "time": now,
            "prefill": decision.prefill,
            "decode": decision.decode,
            "rawPrefill": decision.raw_prefill,
            "rawDecode": decision.raw_decode,
            "reasons": list(decision.reasons),
            "clamps": [c.model_dump() for c in decision.clamps],
        }
    )


def scale_message(
    role: Role, before: int, after: int, decision: Decision, spec: DisaggregatedModelSpec
) -> str:
    """One sentence that says why a role moves, e.g. "decode 3 -> 5: load 41.0 rps: forecast P90 at
    +210s by arima ...; needs 5 decode replicas at batch 96 within TPOT 50 ms"."""
    load = decision.reasons[0] if decision.reasons else "load unknown"
    text = f"{role} {before} -> {after}: {load}"
    capacity = decision.capacity
    if capacity is not None:
        if role == "decode":
            text += (
                f"; needs {decision.raw_decode} decode replica(s) at batch {capacity.decode_batch_size} "
                f"(step {capacity.decode_step_seconds * 1000:.1f} ms) within TPOT "
                f"{spec.slo.tpot_seconds * 1000:g} ms"
            )
        else:
            text += (
                f"; needs {decision.raw_prefill} prefill replica(s) at {capacity.prefill_rps_per_replica:.2f} "
                f"rps each within TTFT {spec.slo.ttft_seconds:g} s"
            )
    limits = [c.stage for c in decision.clamps if c.role == role and c.before != c.after]
    if limits:
        text += "; limited by " + ", ".join(dict.fromkeys(limits))
    return text


@dataclass(frozen=True)
class TickOutcome:
    """What one tick did, as the status writer needs it."""

    spec: DisaggregatedModelSpec
    generation: int | None
    observation: Observation
    result: TickResult
    health: Health
    acted: bool  # replicas were patched (Active mode, no conflict)
    conflict: str | None = None  # why dopd does not own the replicas right now, if it does not
    notes: Mapping[str, str] = field(default_factory=dict)  # per role, what the actuator did beyond scaling
    created: datetime | None = None  # the model's creationTimestamp (grace for its first metrics)
    scale_failure: str | None = None  # the scale patch failed (RBAC, API server): why


def build_status(
    previous: DisaggregatedModelStatus | None, outcome: TickOutcome, now: datetime
) -> tuple[DisaggregatedModelStatus, list[Event]]:
    """The status after a tick and the Events that explain it."""
    spec, decision, observation = outcome.spec, outcome.result.decision, outcome.observation
    gen = outcome.generation
    conditions = list(previous.conditions) if previous is not None else []
    events: list[Event] = []

    conditions = set_condition(conditions, "SpecValid", "True", "SpecValid", "the spec can work", now, gen)
    was_healthy = condition(previous, "MetricsHealthy")
    health = outcome.health
    waiting = (
        not health.healthy
        and health.reason == "MetricsUnknown"
        and (was_healthy is None or was_healthy.reason == WAITING_FOR_METRICS)
        and outcome.created is not None
        and (now - outcome.created).total_seconds() < metrics_grace_seconds(spec)
    )
    reason = WAITING_FOR_METRICS if waiting else health.reason
    conditions = set_condition(
        conditions, "MetricsHealthy", "True" if health.healthy else "False", reason, health.message, now, gen
    )
    # One Warning when the metrics are lost (or a new model still has none after its grace period),
    # not one per tick; a new model waiting for its first windows of data is not a warning.
    was_warned = (
        was_healthy is not None
        and was_healthy.status == "False"
        and was_healthy.reason != WAITING_FOR_METRICS
    )
    if not health.healthy and not waiting and not was_warned:
        events.append(Event("Warning", EventReason.METRICS_UNAVAILABLE, health.message))
    elif health.healthy and was_warned:
        events.append(Event("Normal", EventReason.METRICS_RECOVERED, "metrics are back: scaling resumes"))

    mode = spec.scaling.mode
    was_conflict = condition(previous, "ScalingConflict")
    conditions = set_condition(
        conditions,
        "ScalingConflict",
        "True" if outcome.conflict is not None else "False",
        "ReplicasOwnedElsewhere" if outcome.conflict is not None else "NoConflict",
        outcome.conflict or "no other controller sets these replicas",
        now,
        gen,
    )
    if outcome.conflict is not None and (was_conflict is None or was_conflict.status != "True"):
        events.append(Event("Warning", EventReason.SCALING_CONFLICT, outcome.conflict))
    if outcome.conflict is not None:
        active: tuple[ConditionStatus, str, str] = ("False", "ScalingConflict", outcome.conflict)
    elif outcome.scale_failure is not None:
        active = ("False", "ScaleFailed", outcome.scale_failure)
    elif mode is ScalingMode.PAUSED:
        active = ("False", "ScalingPaused", "scaling.mode is Paused: dopd changes nothing")
    elif mode is ScalingMode.ADVISORY:
        active = ("False", "AdvisoryMode", "scaling.mode is Advisory: decisions go to status only")
    elif not health.healthy:
        active = ("False", "MetricsUnknown", "holding replicas until the metrics are known")
    else:
        active = ("True", "ScalingActive", "dopd sets the replicas of both pools")
    conditions = set_condition(conditions, "ScalingActive", *active, now, gen)

    limited = [c for c in decision.clamps if c.before != c.after and c.stage != "MetricsUnknown"]
    conditions = set_condition(
        conditions,
        "ScalingLimited",
        "True" if decision.scaling_limited else "False",
        limited[0].stage if decision.scaling_limited and limited else "WithinLimits",
        "; ".join(f"{c.role} {c.before}->{c.after}: {c.reason}" for c in limited[:3])
        if decision.scaling_limited
        else "no limit changed the planner's answer",
        now,
        gen,
    )
    verdict = budget_verdict(spec, decision)
    was_budget = condition(previous, BUDGET_CONDITION)
    if verdict is None:  # the planner held (paused, or the load unknown): no capacity estimate to judge
        conditions = set_condition(
            conditions, BUDGET_CONDITION, "Unknown", "PlannerHeld", "no capacity estimate this tick", now, gen
        )
    else:
        conditions = set_condition(
            conditions, BUDGET_CONDITION, verdict.condition_status, verdict.reason, verdict.message, now, gen
        )
        if budget_event_due(
            was_budget.status if was_budget else None, was_budget.message if was_budget else None, verdict
        ):
            events.append(Event("Warning", EventReason.BUDGET_LIMITED, verdict.message))

    deficit = capacity_deficit(spec, observation)
    was_blocked = condition(previous, "CapacityBlocked")
    conditions = set_condition(
        conditions,
        "CapacityBlocked",
        "True" if deficit else "False",
        "PodsUnschedulable" if deficit else "PodsSchedulable",
        deficit or "every pod dopd asked for could be placed",
        now,
        gen,
    )
    if deficit and (was_blocked is None or was_blocked.status != "True"):
        events.append(Event("Warning", EventReason.CAPACITY_BLOCKED, deficit))

    desired = {"prefill": decision.prefill, "decode": decision.decode}
    if outcome.acted or mode is ScalingMode.ACTIVE:
        target_of = desired
    else:  # Advisory/Paused: the pools keep what they have; status still says what dopd would do
        target_of = {r: observation.role(r).current for r in ("prefill", "decode")}
    roles = {r: _role_status(desired[r], observation, r) for r in ("prefill", "decode")}  # type: ignore[arg-type]
    pending = [
        f"{r} {observation.role(r).ready}/{target_of[r]} ready"
        for r in ("prefill", "decode")
        if observation.role(r).ready < target_of[r]
    ]
    conditions = set_condition(
        conditions,
        "Ready",
        "False" if pending else "True",
        "ReplicasStarting" if pending else "AllReplicasReady",
        "; ".join(pending) if pending else "every pool has its replicas ready",
        now,
        gen,
    )

    record = decision_record(decision, now)
    history = list(previous.history) if previous is not None else []
    changes = [
        (role, observation.role(role).current, desired[role])
        for role in ("prefill", "decode")
        if desired[role] != observation.role(role).current
    ]
    if changes:
        history = [*history, record][-HISTORY_LENGTH:]
        for role, before, after in changes:
            message = scale_message(role, before, after, decision, spec)  # type: ignore[arg-type]
            if role in outcome.notes:
                message += f"; {outcome.notes[role]}"
            if outcome.acted:
                reason = EventReason.SCALED_UP if after > before else EventReason.SCALED_DOWN
                events.append(Event("Normal", reason, message))
            elif mode is ScalingMode.ADVISORY:
                events.append(Event("Normal", EventReason.RECOMMENDED, "would scale " + message))
    forecast = outcome.result.forecast
    status = DisaggregatedModelStatus(
        observed_generation=gen,
        prefill=roles["prefill"],
        decode=roles["decode"],
        ratio=ratio_text(decision.prefill, decision.decode),
        gpus=decision.gpus,
        load=_load(observation),
        forecast=None
        if forecast is None
        else ForecastStatus(
            model=forecast.model,
            horizon_seconds=round(forecast.horizon_seconds, 1),
            quantile=forecast.quantile,
            arrival_rate_rps_mean=round(forecast.arrival_rate_rps_mean, 3),
            arrival_rate_rps_upper=round(forecast.arrival_rate_rps_upper, 3),
        ),
        last_decision=record,
        history=history,
        planner=decision.state,
        slo_attainment=_attainment(observation),
        conditions=conditions,
    )
    return status, events


def invalid_status(
    previous: DisaggregatedModelStatus | None, message: str, generation: int | None, now: datetime
) -> tuple[DisaggregatedModelStatus, list[Event]]:
    """The status of a model whose spec cannot work: SpecValid=False, nothing else touched."""
    base = previous if previous is not None else DisaggregatedModelStatus()
    conditions = set_condition(
        list(base.conditions), "SpecValid", "False", "InvalidSpec", message, now, generation
    )
    conditions = set_condition(
        conditions, "ScalingActive", "False", "InvalidSpec", "fix the spec: " + message, now, generation
    )
    events: list[Event] = []
    was = condition(previous, "SpecValid")
    if was is None or was.status != "False" or was.message != message[:1024]:
        events.append(Event("Warning", EventReason.INVALID_SPEC, message))
    return base.model_copy(update={"conditions": conditions, "observed_generation": generation}), events
