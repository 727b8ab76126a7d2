"""dopd never fights another owner of the replicas (HPA, KEDA, a person with kubectl scale)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from dopd_builders import T0, make_spec
from dopd_operator.api import Condition, DisaggregatedModelStatus, RoleStatus
from dopd_operator.controller.cluster_state import DeploymentSummary
from dopd_operator.controller.conflicts import AutoscalerRef, ConflictCheck, autoscaler_ref, find_conflict


def _deployments(
    prefill_replicas: int = 2, managers: tuple[str, ...] = ()
) -> dict[Any, DeploymentSummary | None]:
    return {
        "prefill": DeploymentSummary("m-prefill", "prefill", prefill_replicas, 2, managers),
        "decode": DeploymentSummary("m-decode", "decode", 3, 3, ()),
    }


def _status(
    active: bool = True, conflict_since: datetime | None = None, message: str = "held"
) -> DisaggregatedModelStatus:
    conditions = [
        Condition(
            type="ScalingActive", status="True" if active else "False", reason="r", last_transition_time=T0
        )
    ]
    if conflict_since is not None:
        conditions.append(
            Condition(
                type="ScalingConflict",
                status="True",
                reason="r",
                message=message,
                last_transition_time=conflict_since,
            )
        )
    return DisaggregatedModelStatus(
        prefill=RoleStatus(desired=2), decode=RoleStatus(desired=3), conditions=conditions
    )


def test_an_hpa_targeting_a_pool_is_a_conflict_naming_it() -> None:
    hpa = autoscaler_ref(
        "HorizontalPodAutoscaler",
        "keda-hpa-m",
        {"scaleTargetRef": {"kind": "Deployment", "name": "m-decode"}},
    )
    assert hpa is not None
    why = find_conflict(ConflictCheck((hpa,), T0), make_spec(), _deployments(), _status())
    assert why is not None and "HorizontalPodAutoscaler keda-hpa-m scales Deployment m-decode" in why


def test_an_hpa_on_another_deployment_is_not_a_conflict() -> None:
    other = AutoscalerRef("HorizontalPodAutoscaler", "h", "Deployment", "web")
    assert find_conflict(ConflictCheck((other,), T0), make_spec(), _deployments(), _status()) is None


def test_replicas_changed_under_an_acting_dopd_are_a_manual_scale() -> None:
    why = find_conflict(ConflictCheck((), T0), make_spec(), _deployments(prefill_replicas=5), _status())
    assert why is not None
    assert "prefill Deployment's replicas were changed to 5 outside dopd (dopd had set 2)" in why


def test_the_manager_is_named_when_managed_fields_know_it() -> None:
    why = find_conflict(ConflictCheck((), T0), make_spec(), _deployments(5, ("kubectl-edit",)), _status())
    assert why is not None and "to 5 by kubectl-edit outside dopd" in why


def test_a_manual_scale_is_honoured_for_the_hold_off_window_then_dopd_resumes() -> None:
    spec = make_spec(scaling={"scaleDown": {"stabilizationSeconds": 600}})
    # the window is the scale-down stabilization (600 s here), at least 30 s
    held = _status(active=False, conflict_since=T0, message="kept")
    deployments = _deployments(prefill_replicas=5)
    assert find_conflict(ConflictCheck((), T0 + timedelta(seconds=599)), spec, deployments, held) == "kept"
    assert find_conflict(ConflictCheck((), T0 + timedelta(seconds=600)), spec, deployments, held) is None


def test_replicas_dopd_did_not_own_last_tick_are_not_a_conflict() -> None:
    # Advisory -> Active, or metrics unknown last tick: dopd had not set these replicas
    assert find_conflict(ConflictCheck((), T0), make_spec(), _deployments(5), _status(active=False)) is None
    assert find_conflict(ConflictCheck((), T0), make_spec(), _deployments(5), None) is None


def test_the_hold_off_is_at_least_thirty_seconds() -> None:
    spec = make_spec(scaling={"scaleDown": {"stabilizationSeconds": 0}})
    held = _status(active=False, conflict_since=T0, message="kept")
    deployments = _deployments(prefill_replicas=5)
    assert find_conflict(ConflictCheck((), T0 + timedelta(seconds=29)), spec, deployments, held) == "kept"
    assert find_conflict(ConflictCheck((), T0 + timedelta(seconds=30)), spec, deployments, held) is None
