"""Ready pods are capacity, pending pods are not; startup time is learned from the pods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dopd_operator.controller.cluster_state import (
    DeploymentSummary,
    deployment_summary,
    pod_summary,
    replica_managers,
    role_observation,
)

T = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _pod(name: str, role: str, created_s: float, ready_s: float | None, **extra: object) -> dict:  # type: ignore[type-arg]
    conditions = []
    if ready_s is not None:
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "lastTransitionTime": (T + timedelta(seconds=ready_s)).isoformat(),
            }
        )
    else:
        conditions.append({"type": "Ready", "status": "False"})
    if extra.get("unschedulable"):
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable"})
    meta = {
        "name": name,
        "labels": {"dopd.io/model": "m", "dopd.io/role": role},
        "creationTimestamp": (T + timedelta(seconds=created_s)).isoformat(),
    }
    if extra.get("terminating"):
        meta["deletionTimestamp"] = T.isoformat()
    return {"meta": meta, "status": {"conditions": conditions}}


def test_role_observation_counts_ready_pending_unschedulable_and_ignores_terminating() -> None:
    pods = [
        pod_summary(**_pod("a", "decode", 0, 30)),
        pod_summary(**_pod("b", "decode", 0, None)),
        pod_summary(**_pod("c", "decode", 0, None, unschedulable=True)),
        pod_summary(**_pod("d", "decode", 0, 20, terminating=True)),
        pod_summary(**_pod("e", "prefill", 0, 10)),
    ]
    deployment = DeploymentSummary("m-decode", "decode", 3, 1, ())
    obs = role_observation("decode", deployment, pods)
    assert (obs.current, obs.ready, obs.pending, obs.unschedulable) == (3, 1, 2, 1)


def test_startup_time_is_the_median_of_recent_pods_once_there_are_three() -> None:
    two = [pod_summary(**_pod(f"p{i}", "prefill", 0, s)) for i, s in enumerate((100, 140))]
    assert role_observation("prefill", None, two).startup_seconds is None  # the spec's prior applies
    three = [*two, pod_summary(**_pod("p9", "prefill", 10, 130))]
    # durations 100, 140, 120 -> median 120 s (the mean, 120, would agree here; 100 would be the first pod's)
    assert role_observation("prefill", None, three).startup_seconds == 120.0


def test_replica_managers_are_who_owns_spec_replicas() -> None:
    fields = [
        {"manager": "dopd", "operation": "Apply", "fieldsV1": {"f:spec": {"f:template": {}}}},
        {
            "manager": "kubectl",
            "operation": "Update",
            "subresource": "scale",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        },
    ]
    assert replica_managers(fields) == ("kubectl",)
    summary = deployment_summary(
        {"name": "m-prefill", "labels": {"dopd.io/role": "prefill"}, "managedFields": fields},
        {"replicas": 4},
        {"readyReplicas": 3},
    )
    assert (summary.replicas, summary.ready_replicas, summary.replica_managers) == (4, 3, ("kubectl",))
