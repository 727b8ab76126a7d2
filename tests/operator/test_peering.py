"""The operator's Kopf peering priority (`dopd run` with peering, the chart's HA): the replica that was
acting keeps acting when another starts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dopd_operator.cli_run import PRIORITY_TIEBREAKS, peering_priority

LAST_START_S = 9.9e9  # 2283: beyond it the priority's range is not promised


@given(
    st.floats(0.0, LAST_START_S, allow_nan=False),
    st.floats(0.02, 1e9, allow_nan=False),
    st.integers(0, PRIORITY_TIEBREAKS - 1),
    st.integers(0, PRIORITY_TIEBREAKS - 1),
)
def test_an_older_replica_outranks_a_newer_one(
    started_s: float, later_by_s: float, tiebreak_old: int, tiebreak_new: int
) -> None:
    """A newcomer (a rollout's new pod, a restarted standby) never takes over from a replica started
    before it, whatever either drew; every priority is a positive integer exact in any JSON client."""
    old = peering_priority(started_s, tiebreak_old)
    new = peering_priority(min(started_s + later_by_s, LAST_START_S + 1.0), tiebreak_new)
    assert old > new > 0
    assert old < 2**53


@given(st.floats(0.0, LAST_START_S, allow_nan=False))
def test_replicas_started_in_the_same_instant_differ_by_their_tiebreak(started_s: float) -> None:
    assert peering_priority(started_s, 1) == peering_priority(started_s, 0) + 1
    with pytest.raises(ValueError, match=r"tiebreak must be in \[0, 1000\)"):
        peering_priority(started_s, PRIORITY_TIEBREAKS)
