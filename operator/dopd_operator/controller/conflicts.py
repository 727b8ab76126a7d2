"""Who else scales our Deployments, so that dopd never fights them (no tug of war).

Two kinds of owner compete for a Deployment's replicas:
- an autoscaler object targeting it: a HorizontalPodAutoscaler, including the one KEDA creates for a
  ScaledObject (`keda-hpa-<name>`). While one exists, dopd does not act on that pool; the condition
  ScalingConflict and an Event name it, and how to resolve it (delete it, or set scaling.mode: Advisory).
- a person or a script that set `spec.replicas` (`kubectl scale`) while dopd was acting: the replicas
  are no longer what dopd decided. dopd honours the change for a hold-off window (the scale-down
  stabilization window, at least `MIN_HOLD_OFF_SECONDS`), reported the same way, then resumes and
  takes the replicas back.
Pure: the watch-fed autoscaler index and the Deployment summaries in, a message or None out.
Callers: `controller.loop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from dopd_operator.api import DisaggregatedModelSpec, DisaggregatedModelStatus, Role
from dopd_operator.controller.cluster_state import DeploymentSummary
from dopd_operator.controller.kube import FIELD_MANAGER, SCALE_FIELD_MANAGER

MIN_HOLD_OFF_SECONDS = 30.0
OUR_MANAGERS = frozenset({SCALE_FIELD_MANAGER, FIELD_MANAGER})


@dataclass(frozen=True)
class AutoscalerRef:
    kind: str  # HorizontalPodAutoscaler
    name: str
    target_kind: str
    target_name: str


@dataclass(frozen=True)
class ConflictCheck:
    """What the loop knows at the tick: autoscalers in the model's namespace, and the time."""

    autoscalers: tuple[AutoscalerRef, ...]
    now: datetime


def autoscaler_ref(kind: str, name: str, spec: Mapping[str, object]) -> AutoscalerRef | None:
    target = spec.get("scaleTargetRef")
    if not isinstance(target, Mapping) or not target.get("name"):
        return None
    return AutoscalerRef(kind, name, str(target.get("kind", "Deployment")), str(target["name"]))


def _condition_true(previous: DisaggregatedModelStatus | None, type_: str) -> datetime | None:
    """Since when the condition has been True in the previous status; None when it is not."""
    if previous is None:
        return None
    for cond in previous.conditions:
        if cond.type == type_ and cond.status == "True":
            return cond.last_transition_time
    return None


def find_conflict(
    check: ConflictCheck,
    spec: DisaggregatedModelSpec,
    deployments: Mapping[Role, DeploymentSummary | None],
    previous: DisaggregatedModelStatus | None,
) -> str | None:
    """Why dopd must not act this tick, or None when it owns the replicas of both pools. Only Active
    mode asks: Advisory is the documented way to keep another autoscaler and read dopd's advice.

    A manual scale is recognised by its effect: dopd was acting last tick (ScalingActive=True) and a
    pool's replicas are no longer what dopd decided. (The scale subresource records no field manager
    for spec.replicas, so managedFields cannot say who; they name the manager when they can.)
    """
    for role, summary in deployments.items():
        if summary is None:
            continue
        for scaler in check.autoscalers:
            if scaler.target_kind == "Deployment" and scaler.target_name == summary.name:
                return (
                    f"{scaler.kind} {scaler.name} scales Deployment {summary.name} ({role}); dopd does not "
                    "fight it: delete it, or set scaling.mode: Advisory to keep it and read dopd's advice"
                )
    hold_off = timedelta(seconds=max(MIN_HOLD_OFF_SECONDS, spec.scaling.scale_down.stabilization_seconds))
    since = _condition_true(previous, "ScalingConflict")
    if since is not None and previous is not None:
        if check.now - since >= hold_off:
            return None  # honoured long enough: dopd takes the replicas back
        carried = next(c.message for c in previous.conditions if c.type == "ScalingConflict")
        return carried
    if previous is None or _condition_true(previous, "ScalingActive") is None:
        return None
    for role, summary in deployments.items():
        if summary is None or summary.replicas is None:
            continue
        decided = (previous.prefill if role == "prefill" else previous.decode).desired
        if summary.replicas == decided:
            continue
        who = [m for m in summary.replica_managers if m not in OUR_MANAGERS]
        by = f" by {', '.join(sorted(set(who)))}" if who else ""
        resume = check.now + hold_off
        return (
            f"the {role} Deployment's replicas were changed to {summary.replicas}{by} outside dopd "
            f"(dopd had set {decided}); dopd leaves them until {resume.isoformat(timespec='seconds')}, "
            "then resumes (set scaling.mode: Paused to keep manual control)"
        )
    return None
