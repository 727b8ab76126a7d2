"""Scale-down removes the pods that are cheapest to lose, and dopd tells the ReplicaSet which."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dopd_operator.controller.cluster_state import PodSummary
from dopd_operator.controller.victims import DELETION_COST, DRAINING, choose_victims
from dopd_operator.planner_types import PodLoad

T = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOW = "2026-11-30T12:10:00+00:00"


def _pod(
    name: str, ready: bool = True, age_s: float = 600, draining: bool = False, role: str = "decode"
) -> PodSummary:
    created = T - timedelta(seconds=age_s)
    return PodSummary(
        name=name,
        role=role,
        created=created,
        ready_since=created + timedelta(seconds=30) if ready else None,
        terminating=False,
        unschedulable=False,
        draining=draining,
    )


def test_the_fewest_in_flight_go_first_then_the_least_cache() -> None:
    pods = [_pod("busy"), _pod("idle-cold"), _pod("idle-warm"), _pod("light")]
    loads = {
        "busy": PodLoad(inflight=40, kv_usage=0.9),
        "idle-cold": PodLoad(inflight=0, kv_usage=0.05),
        "idle-warm": PodLoad(inflight=0, kv_usage=0.6),
        "light": PodLoad(inflight=3, kv_usage=0.1),
    }
    plan = choose_victims("decode", pods, loads, 2, NOW)
    assert plan.victims == ("idle-cold", "idle-warm")  # the ReplicaSet's default might take "busy"
    assert plan.annotations == {
        "idle-cold": {DELETION_COST: "-1000", DRAINING: NOW},
        "idle-warm": {DELETION_COST: "-1000", DRAINING: NOW},
    }
    assert plan.why == "draining idle-cold (0 in flight), idle-warm (0 in flight)"


def test_pods_not_ready_go_before_any_ready_one_and_unknown_load_is_not_idle() -> None:
    pods = [_pod("ready-idle"), _pod("starting", ready=False, age_s=5), _pod("silent")]
    loads = {"ready-idle": PodLoad(inflight=0)}
    plan = choose_victims("decode", pods, loads, 2, NOW)
    # a pod with no series may be busy: it goes after the one known to be idle
    assert plan.victims == ("starting", "ready-idle")


def test_an_earlier_mark_that_did_not_happen_is_removed() -> None:
    pods = [_pod("old-mark", draining=True), _pod("a"), _pod("b")]
    loads = {"old-mark": PodLoad(inflight=9), "a": PodLoad(inflight=1), "b": PodLoad(inflight=2)}
    plan = choose_victims("decode", pods, loads, 1, NOW)
    assert plan.victims == ("a",)
    assert plan.annotations["old-mark"] == {DELETION_COST: None, DRAINING: None}


def test_without_per_pod_load_the_replicaset_chooses_and_that_is_said() -> None:
    plan = choose_victims("decode", [_pod("a"), _pod("b", draining=True)], None, 1, NOW)
    assert plan.victims == ()
    assert plan.annotations == {"b": {DELETION_COST: None, DRAINING: None}}
    assert "ReplicaSet's own order" in plan.why


def test_only_the_role_being_shrunk_is_considered() -> None:
    pods = [_pod("p", role="prefill"), _pod("d1"), _pod("d2")]
    loads = {"p": PodLoad(inflight=0), "d1": PodLoad(inflight=5), "d2": PodLoad(inflight=1)}
    assert choose_victims("decode", pods, loads, 1, NOW).victims == ("d2",)
