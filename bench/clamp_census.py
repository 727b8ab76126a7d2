"""Which safety stages changed dopd's decisions on the benchmark's traces, and by how many replicas.

    python bench/clamp_census.py [SCENARIO ...] [--seed N]

Runs dopd on each scenario (`sim_bench.SCENARIOS`, all of them by default) and seed as the suite runs it,
and prints, per trace, each safety stage that changed a decision: how many decisions it changed and the
replicas it added or removed, summed over them (and as replica-hours ordered). A default that does not
fit a workload shows here first: the ratio band's old default bought the reasoning trace a prefill
replica and Mooncake decode replicas nobody asked for (docs/benchmarks/sim-history.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sim_bench import SCENARIOS

from dopd_operator.planner_types import Clamp
from dopd_sim.clamp_census import clamp_census
from dopd_sim.config import SimConfig
from dopd_sim.policies.base import Layout, TickInput
from dopd_sim.policies.dopd import DopdPolicy
from dopd_sim.run import simulate


class _RecordingDopd(DopdPolicy):
    """dopd, keeping every decision's clamps."""

    def __init__(self) -> None:
        super().__init__()
        self.clamps: list[Sequence[Clamp]] = []

    def decide(self, tick: TickInput) -> Layout:
        layout = super().decide(tick)
        assert self.last_decision is not None
        self.clamps.append(self.last_decision.clamps)
        return layout


def main() -> None:
    names = [s.name for s in SCENARIOS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"one of {', '.join(names)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = [n for n in args.scenarios if n not in names]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}: give any of {', '.join(names)}")
    for name in args.scenarios or names:
        scenario = next(s for s in SCENARIOS if s.name == name)
        config = SimConfig(seed=args.seed)
        policy = _RecordingDopd()
        trace, until = scenario.run_trace(args.seed, False)
        result = simulate(
            trace, policy, config, score_from_s=scenario.scored_from_s(False), score_until_s=until
        )
        effects = clamp_census(policy.clamps, config.spec.scaling.interval_seconds)
        print(
            f"{name} seed {args.seed}: {len(policy.clamps)} decisions, "
            f"{result.summary.slo_attainment * 100:.2f}% attainment, {result.summary.gpu_hours:.2f} GPU-hours"
        )
        if not effects:
            print("  no safety stage changed a decision")
        for e in effects:
            print(
                f"  {e.stage:<20} {e.role:<8} {e.ticks:4d} decisions, {e.direction} {abs(e.replica_ticks)} "
                f"replica-ticks ({abs(e.replica_hours):.2f} replica-hours ordered)"
            )


if __name__ == "__main__":
    main()
