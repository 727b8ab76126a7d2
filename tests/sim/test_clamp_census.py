"""Which safety stages changed dopd's decisions (`dopd_sim.clamp_census`, `bench/clamp_census.py`): how a
default that does not fit a workload is found."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dopd_operator.planner_types import Clamp
from dopd_sim.clamp_census import clamp_census

REPO = Path(__file__).resolve().parents[2]


def _clamp(stage: str, role: str, before: int, after: int) -> Clamp:
    return Clamp(stage=stage, role=role, before=before, after=after, reason="test")


def test_each_stage_counts_the_decisions_it_changed_and_the_replicas_it_moved() -> None:
    """Four decisions at a 30 s interval: the ratio band raises prefill 1 -> 2 twice; in the second
    decision the scale-down window also holds decode at 5 where 3 were asked for, and in the third it
    clamps decode twice (4 -> 5 -> 6; the tolerance's 6 -> 7 counts apart) while a step limit cuts a
    prefill scale-up 9 -> 6; the fourth changes nothing."""
    effects = clamp_census(
        [
            [_clamp("RatioBand", "prefill", 1, 2)],
            [_clamp("RatioBand", "prefill", 1, 2), _clamp("ScaleDownStabilized", "decode", 3, 5)],
            [
                _clamp("ScaleDownStabilized", "decode", 4, 5),
                _clamp("ScaleDownStabilized", "decode", 5, 6),
                _clamp("WithinTolerance", "decode", 6, 7),
                _clamp("ScaleUpLimit", "prefill", 9, 6),
            ],
            [],
        ],
        interval_seconds=30.0,
    )
    table = [(e.stage, e.role, e.ticks, e.replica_ticks, e.direction) for e in effects]
    # Largest effect first; a stage that clamped a role twice in one decision counts it once.
    assert table == [
        ("ScaleDownStabilized", "decode", 2, 4, "added"),
        ("ScaleUpLimit", "prefill", 1, -3, "removed"),
        ("RatioBand", "prefill", 2, 2, "added"),
        ("WithinTolerance", "decode", 1, 1, "added"),
    ]
    assert math.isclose(effects[0].replica_hours, 4 * 30.0 / 3600.0)


def test_no_clamps_no_effects_and_a_bad_interval_is_refused() -> None:
    assert clamp_census([[], []], interval_seconds=30.0) == []
    with pytest.raises(ValueError, match="interval_seconds is 0: give the decision interval"):
        clamp_census([], interval_seconds=0.0)


def test_the_default_ratio_band_changes_no_decision_on_the_most_skewed_traces() -> None:
    """The command as the docs cite it, on the two traces whose ratios the old default of [0.05, 20] did
    not admit (reasoning about 1P/22D at its peak, Mooncake up to 74P/2D): no RatioBand line, and the
    stages that do bind are listed with their effect."""
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "clamp_census.py"), "reasoning", "mooncake", "--seed", "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=600,
    )
    out = run.stdout
    assert re.search(r"^reasoning seed 0: \d+ decisions, 99\.\d\d% attainment", out, re.M), out
    assert re.search(r"^mooncake seed 0: \d+ decisions", out, re.M), out
    assert "RatioBand" not in out, out
    assert re.search(r"ScaleDownStabilized\s+decode\s+\d+ decisions, added \d+ replica-ticks", out), out


def test_an_unknown_scenario_is_refused_naming_the_choices() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "clamp_census.py"), "nosuch"],
        capture_output=True,
        check=False,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2
    assert "unknown scenario(s) nosuch: give any of azure-conv" in run.stderr
