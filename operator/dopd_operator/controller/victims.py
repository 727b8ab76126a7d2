"""Which pods a scale-down removes: the cheapest to lose, chosen by dopd, carried out by the ReplicaSet.

A ReplicaSet scaling down removes, among Ready pods, those with the lowest
`controller.kubernetes.io/pod-deletion-cost` first. So before lowering a role's replicas dopd ranks its
pods and marks the ones to go: pods not yet Ready first (they hold nothing), then the fewest requests
in flight, then (decode) the least KV cache (the least cached context lost), then the youngest. Marked
pods get the lowest deletion cost and the `dopd.io/draining` annotation (for people and tools); pods
marked by an earlier scale-down that did not happen are unmarked. Without per-pod load (Prometheus has
no `pod` label, or is down) dopd says so and leaves the choice to the ReplicaSet's own order.
Pure: pods and loads in, annotations to patch out. Callers: `controller.loop`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dopd_operator.controller.cluster_state import DRAINING_ANNOTATION, PodSummary
from dopd_operator.planner_types import PodLoad

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DRAINING = DRAINING_ANNOTATION
VICTIM_COST = -1000  # below any cost users set by hand (0 by default), so the ReplicaSet takes these


@dataclass(frozen=True)
class VictimPlan:
    victims: tuple[str, ...]  # pod names, cheapest first
    annotations: dict[str, dict[str, str | None]]  # pod -> annotations to set (None removes)
    why: str


def choose_victims(
    role: str,
    pods: Sequence[PodSummary],
    loads: Mapping[str, PodLoad] | None,
    count: int,
    now_text: str,
) -> VictimPlan:
    """The `count` pods of `role` to remove, and the annotations that make the ReplicaSet take them."""
    live = [p for p in pods if p.role == role and not p.terminating]
    if loads is None:
        return VictimPlan(
            (), _unmark(live, set()), "no per-pod load from Prometheus: the ReplicaSet's own order"
        )

    def cost(pod: PodSummary) -> tuple[int, float, float, float]:
        load = loads.get(pod.name)
        ready = pod.ready_since is not None
        inflight = load.inflight if load is not None else float("inf")  # unknown is not idle
        kv = load.kv_usage if load is not None and load.kv_usage is not None else 0.0
        age = -(pod.created.timestamp() if pod.created else 0.0)
        return (1 if ready else 0, inflight, kv, age)

    ranked = sorted(live, key=cost)[: max(count, 0)]
    chosen = {p.name for p in ranked}
    annotations = _unmark(live, chosen)
    for pod in ranked:
        annotations[pod.name] = {DELETION_COST: str(VICTIM_COST), DRAINING: now_text}
    described = []
    for pod in ranked:
        load = loads.get(pod.name)
        if pod.ready_since is None:
            described.append(f"{pod.name} (not ready)")
        elif load is None:
            described.append(f"{pod.name} (load unknown)")
        else:
            described.append(f"{pod.name} ({load.inflight:g} in flight)")
    return VictimPlan(tuple(p.name for p in ranked), annotations, "draining " + ", ".join(described))


def _unmark(pods: Sequence[PodSummary], keep: set[str]) -> dict[str, dict[str, str | None]]:
    return {p.name: {DELETION_COST: None, DRAINING: None} for p in pods if p.draining and p.name not in keep}
