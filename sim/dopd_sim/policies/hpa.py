"""Kubernetes HPA's replica arithmetic and default behaviors, shared by `reactive` and `aggregated`.

HPA computes `desired = ceil(current * metric / target)` per metric and takes the largest, skips
changes within its 10% tolerance, limits scale-up to max(100%, 4 pods) per 15 s period and, by default,
takes the highest recommendation of the last 300 s before scaling down (scale-down stabilization).
A per-pod metric (`pods_metric_replicas`: busy share, KV usage, running sequences) is averaged over
the pods that report it, the Ready ones; pods still starting report none, and HPA counts them at 0 on a
scale-up and at the target on a scale-down (kubernetes `ReplicaCalculator.calcPlainMetricReplicas`), so
a scale-up is not ordered again for every tick its pods take to start. An external metric with an
average-value target (KEDA's Prometheus scaler on the queue) is the total over the target
(`ratio_replicas` with the total spread over the current replicas).
Ticks here are the controller interval (KEDA's default polling is 30 s), so a tick may span two of
HPA's 15 s periods. Callers: policies.reactive, policies.aggregated.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

TOLERANCE = 0.1
SCALE_DOWN_STABILIZATION_SECONDS = 300.0
SCALE_UP_PERIOD_SECONDS = 15.0


def ratio_replicas(current: int, usage_ratio: float) -> int:
    """HPA's calculation for one metric: hold within the tolerance, else ceil(current * ratio)."""
    if current == 0:
        return math.ceil(usage_ratio) if usage_ratio > 0 else 0
    if abs(usage_ratio - 1.0) <= TOLERANCE:
        return current
    return math.ceil(current * usage_ratio - 1e-9)


def pods_metric_replicas(current: int, ready: int, usage_ratio: float) -> int:
    """HPA's calculation for a per-pod metric whose mean over the `ready` pods reporting it is
    `usage_ratio` times its target, the other `current - ready` pods (starting) reporting none: with none
    missing, `ratio_replicas`; else the mean is taken again over every pod, the missing ones at 0 on a
    scale-up and at the target on a scale-down, and HPA holds where that is within the tolerance or turns
    the direction, else asks for ceil(new ratio * pods). With no pod reporting it holds (HPA: "did not
    receive metrics for any ready pods")."""
    ready = min(ready, current)
    if ready <= 0:
        return current
    missing = current - ready
    if missing == 0:
        return ratio_replicas(current, usage_ratio)
    counted = 1.0 if usage_ratio < 1.0 else 0.0  # what each missing pod counts for, over the target
    new_ratio = (usage_ratio * ready + counted * missing) / current
    if abs(new_ratio - 1.0) <= TOLERANCE or (usage_ratio - 1.0) * (new_ratio - 1.0) < 0:
        return current
    return math.ceil(new_ratio * current - 1e-9)


@dataclass
class HpaBehavior:
    """Stabilization and rate limits for one scale target, as HPA's defaults set them."""

    min_replicas: int
    max_replicas: int
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def normalize(self, now_s: float, current: int, recommended: int, tick_seconds: float) -> int:
        recommended = min(max(recommended, self.min_replicas), self.max_replicas)
        if not self.history:  # the replicas found at start count as a recommendation, as HPA's do
            self.history.append((now_s, current))
        self.history.append((now_s, recommended))
        while self.history and self.history[0][0] < now_s - SCALE_DOWN_STABILIZATION_SECONDS:
            self.history.popleft()
        stabilized = recommended
        if recommended < current:
            stabilized = min(current, max(r for _, r in self.history))
        periods = max(1, math.ceil(tick_seconds / SCALE_UP_PERIOD_SECONDS - 1e-9))
        limit = current
        for _ in range(periods):
            limit = max(2 * limit, limit + 4)
        return max(min(stabilized, limit), self.min_replicas)
