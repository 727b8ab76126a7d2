"""Kubernetes HPA's replica arithmetic and default behaviors, shared by `reactive` and `aggregated`.

HPA computes `desired = ceil(current * metric / target)` per metric and takes the largest, skips
changes within its 10% tolerance, limits scale-up to max(100%, 4 pods) per 15 s period and, by default,
takes the highest recommendation of the last 300 s before scaling down (scale-down stabilization).
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
