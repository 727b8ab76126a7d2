"""Which safety stages changed dopd's decisions over a run, and by how many replicas.

The planner sizes each pool with the capacity model, then the safety layer (bounds, ratio band, GPU
budget, stabilization, step limits, tolerance) may move the result, recording a `Clamp` each time
(`dopd_operator.safety`, docs/planner.md). A stage that binds on most ticks of a trace is either doing
its job (the scale-down window holding a noisy pool) or a default that does not fit the workload: the
ratio band of [0.05, 20] bought the reasoning trace a second prefill replica and Mooncake two more
decode replicas before it was widened (docs/benchmarks/sim-history.md). `bench/clamp_census.py` runs it
on the benchmark's scenarios. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dopd_operator.planner_types import Clamp


@dataclass(frozen=True)
class StageEffect:
    """One safety stage's effect on one role over a run."""

    stage: str  # the Clamp's CamelCase stage, e.g. "RatioBand"
    role: str
    ticks: int  # decisions it changed
    replica_ticks: int  # replicas it added (positive) or removed (negative), summed over those decisions
    replica_hours: float  # replica_ticks x the decision interval: replicas ordered for that long

    @property
    def direction(self) -> str:
        return "added" if self.replica_ticks > 0 else "removed" if self.replica_ticks < 0 else "moved"


def clamp_census(decisions_clamps: Iterable[Sequence[Clamp]], interval_seconds: float) -> list[StageEffect]:
    """Every (stage, role) that changed a decision, from each decision's clamps (in the order the
    decisions were made), largest effect first. A stage that clamped the same role twice in one decision
    counts that decision once and both changes."""
    if interval_seconds <= 0:
        raise ValueError(f"interval_seconds is {interval_seconds:g}: give the decision interval (> 0)")
    ticks: Counter[tuple[str, str]] = Counter()
    replicas: Counter[tuple[str, str]] = Counter()
    for clamps in decisions_clamps:
        ticks.update({(clamp.stage, clamp.role) for clamp in clamps})  # once per decision
        for clamp in clamps:
            replicas[clamp.stage, clamp.role] += clamp.after - clamp.before
    effects = [
        StageEffect(stage, role, ticks[stage, role], moved, moved * interval_seconds / 3600.0)
        for (stage, role), moved in replicas.items()
    ]
    return sorted(effects, key=lambda e: (-abs(e.replica_ticks), -e.ticks, e.stage, e.role))
