"""The planner when the load has just stepped: what it learns, what it says, how it drains the queue
the step leaves while new replicas start."""

from __future__ import annotations

from datetime import timedelta

from dopd_builders import T0, make_obs, make_spec, settled_state
from dopd_operator.planner import plan
from dopd_operator.planner_types import PlannerState, RoleObservation


def test_a_window_across_a_step_teaches_the_corrections_nothing() -> None:
    """The window's latencies are the old level's, the running count read at the tick the new one's:
    on the bursts trace such a window read the decode engine as 10% fast at a surge's start and the
    pool shrank under it. A step older than the metrics window (60 s) no longer holds them."""
    seen = {"ttft_seconds": 0.133, "tpot_seconds": 0.012, "tpot_mean_seconds": 0.012, "decode_running": 90}
    stepped = make_obs(rate=20, prefill=2, decode=2, arrival_level_age_seconds=20.0, **seen)
    held = plan(make_spec(), stepped, None, settled_state(stepped), T0)
    assert (held.state.prefill_correction, held.state.decode_correction) == (1.0, 1.0)
    settled = make_obs(rate=20, prefill=2, decode=2, arrival_level_age_seconds=90.0, **seen)
    learned = plan(make_spec(), settled, None, settled_state(settled), T0)
    assert learned.state.prefill_correction > 1.0 and learned.state.decode_correction > 1.0


def test_the_load_reason_says_the_rate_is_read_since_the_step() -> None:
    d = plan(make_spec(), make_obs(rate=160, arrival_level_age_seconds=20.0), None, PlannerState(), T0)
    assert "load 160.00 rps observed since it stepped 20s ago" in d.reasons[0]
    older = plan(make_spec(), make_obs(rate=160, arrival_level_age_seconds=90.0), None, PlannerState(), T0)
    assert "stepped" not in older.reasons[0]


def test_the_backlog_is_drained_as_it_will_be_when_the_new_replicas_serve() -> None:
    """150 rps on one ready prefill replica with 3000 prompts queued: the queue keeps growing by the
    arrivals one replica cannot compute until replicas ordered now start (120 s), and the pool is
    sized to drain that larger queue over the lead time. Replicas ordered 60 s ago start in 60 s:
    the queue grows for only those, and fewer replicas are ordered. Either way more than for the
    queue as it stands."""
    spec = make_spec()
    queued = {"rate": 150.0, "prefill_queue_depth": 3000.0, "decode": 4}
    fresh = plan(spec, make_obs(prefill=1, **queued), None, PlannerState(), T0)
    starting = make_obs(prefill_obs=RoleObservation(current=6, ready=1, pending=5), **queued)
    ordered = PlannerState(last_scale_up_time=T0 - timedelta(seconds=60))
    soon = plan(spec, starting, None, ordered, T0)
    served = make_obs(prefill=12, **queued)  # a pool that computes the arrivals: no growth
    standing = plan(spec, served, None, PlannerState(), T0)
    assert fresh.raw_prefill > soon.raw_prefill > standing.raw_prefill
    assert any("to drain the queue" in r for r in fresh.reasons)
