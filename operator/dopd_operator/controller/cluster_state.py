"""What the cluster says about a model's pools, from the operator's in-memory indexes (no API calls).

Kopf keeps two indexes from its watch streams (`handlers.py`): one summary per Deployment and one per
pod carrying the `dopd.io/model` and `dopd.io/role` labels. From them, per role:
- current: the Deployment's spec.replicas (what the scale subresource says);
- ready: pods Ready and not terminating — capacity; pending pods are not capacity;
- pending: pods neither Ready nor terminating; unschedulable: those the scheduler cannot place;
- startup_seconds: learned median of creation -> Ready over the role's recent pods (at least
  MIN_STARTUP_SAMPLES of them), which replaces the spec's `startupSeconds` prior in the lead time;
- replica managers: who last set spec.replicas (server-side field managers), for conflict detection.
Pure: summaries in, RoleObservation out. Callers: `controller.handlers` (index functions), `loop`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dopd_operator.api import Role
from dopd_operator.controller.children import MODEL_LABEL, ROLE_LABEL
from dopd_operator.planner_types import RoleObservation

DRAINING_ANNOTATION = "dopd.io/draining"
MIN_STARTUP_SAMPLES = 3
STARTUP_SAMPLES = 10  # the most recent pods the learned startup time is taken over


@dataclass(frozen=True)
class PodSummary:
    name: str
    role: str
    created: datetime | None
    ready_since: datetime | None  # when it last became Ready; None when not Ready
    terminating: bool
    unschedulable: bool
    draining: bool = False  # marked by dopd for removal (annotation dopd.io/draining)


@dataclass(frozen=True)
class DeploymentSummary:
    name: str
    role: str
    replicas: int | None  # spec.replicas
    ready_replicas: int
    replica_managers: tuple[str, ...]  # field managers owning spec.replicas


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def pod_summary(meta: Mapping[str, Any], status: Mapping[str, Any]) -> PodSummary:
    labels = meta.get("labels") or {}
    ready = _condition(status, "Ready")
    scheduled = _condition(status, "PodScheduled")
    is_ready = ready is not None and ready.get("status") == "True"
    return PodSummary(
        name=str(meta.get("name")),
        role=str(labels.get(ROLE_LABEL, "")),
        created=_time(meta.get("creationTimestamp")),
        ready_since=_time(ready.get("lastTransitionTime")) if is_ready and ready is not None else None,
        terminating=meta.get("deletionTimestamp") is not None,
        unschedulable=scheduled is not None
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == "Unschedulable",
        draining=DRAINING_ANNOTATION in (meta.get("annotations") or {}),
    )


def replica_managers(managed_fields: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """Field managers that own spec.replicas of a Deployment (or of its scale subresource)."""
    owners = []
    for entry in managed_fields:
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            owners.append(str(entry.get("manager", "")))
    return tuple(owners)


def deployment_summary(
    meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> DeploymentSummary:
    labels = meta.get("labels") or {}
    replicas = spec.get("replicas")
    return DeploymentSummary(
        name=str(meta.get("name")),
        role=str(labels.get(ROLE_LABEL, "")),
        replicas=int(replicas) if replicas is not None else None,
        ready_replicas=int(status.get("readyReplicas") or 0),
        replica_managers=replica_managers(meta.get("managedFields") or []),
    )


def index_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    model = labels.get(MODEL_LABEL)
    if namespace is None or model is None:
        return None
    return (namespace, model)


def learned_startup_seconds(pods: Iterable[PodSummary]) -> float | None:
    durations = sorted(
        (
            (p.ready_since, (p.ready_since - p.created).total_seconds())
            for p in pods
            if p.ready_since and p.created
        ),
        key=lambda pair: pair[0],
    )[-STARTUP_SAMPLES:]
    if len(durations) < MIN_STARTUP_SAMPLES:
        return None
    return max(statistics.median(d for _, d in durations), 0.0)


def role_observation(
    role: Role, deployment: DeploymentSummary | None, pods: Iterable[PodSummary]
) -> RoleObservation:
    mine = [p for p in pods if p.role == role]
    live = [p for p in mine if not p.terminating]
    ready = sum(1 for p in live if p.ready_since is not None)
    return RoleObservation(
        current=(deployment.replicas or 0) if deployment is not None else 0,
        ready=ready,
        pending=sum(1 for p in live if p.ready_since is None),
        unschedulable=sum(1 for p in live if p.ready_since is None and p.unschedulable),
        startup_seconds=learned_startup_seconds(mine),
    )
