"""The output lengths the planner sizes decode with while the decode pool's slots are full: the sequences
finishing then are the join order's pick (long outputs first), not the demand's mix, so the lengths last
measured with free slots are kept until what the full pool seated has finished and a window without
full slots measures them again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.api import OutputLengths
from dopd_operator.planner import plan
from dopd_operator.planner_lengths import hold_output_lengths
from dopd_operator.planner_load import decode_slots_full, lead_time_seconds
from dopd_operator.planner_types import Decision, Observation, PlannerState, RoleObservation
from dopd_operator.profile import resolve_profile

SPEC = make_spec(decode={"maxReplicas": 64})
PROFILE = resolve_profile(SPEC.profile)
SLOTS = PROFILE.max_batch_size


def _tick(
    decode_ready: int, running: float, osl: float, decode_current: int | None = None, **extra: Any
) -> Observation:
    return make_obs(
        rate=160.0,
        isl=1150.0,
        osl=osl,
        prefill=7,
        decode_obs=RoleObservation(current=decode_current or decode_ready, ready=decode_ready),
        decode_running=running,
        **extra,
    )


def _run(ticks: list[Observation]) -> list[Decision]:
    state, out = PlannerState(), []
    for i, observation in enumerate(ticks):
        decision = plan(SPEC, observation, None, state, T0 + timedelta(seconds=30 * i))
        state = decision.state
        out.append(decision)
    return out


def test_a_full_decode_pool_is_sized_for_the_lengths_measured_with_free_slots() -> None:
    """As on the steps trace: 2 decode replicas with free slots measure 210-token outputs; the load
    doubles and fills every slot while more replicas start, and the finishing sequences read 446 tokens
    (the join order admitted the long ones first). The pool is sized for the 210 tokens, as it would be
    had the window measured the demand, not for twice the sequences."""
    free = _tick(2, 0.6 * 2 * SLOTS, 210.0)
    full = _tick(2, 2 * SLOTS, 446.0, decode_current=6)
    (held,) = _run([free, full])[1:]
    demand = _run([free, _tick(2, 2 * SLOTS, 210.0, decode_current=6)])[1]
    unheld = plan(SPEC, full, None, PlannerState(), T0)  # no lengths measured with free slots yet
    assert held.raw_decode == demand.raw_decode < unheld.raw_decode
    assert any(
        "output lengths held at mean 210/P90 420 tokens" in r and "mean 446" in r for r in held.reasons
    )
    assert not any("output lengths held" in r for r in unheld.reasons)
    assert held.state.output_lengths_free_slots == OutputLengths(mean=210.0, p90=420.0)


def test_the_lengths_stay_held_for_the_window_after_the_slots_free_up() -> None:
    """Once new replicas join, the late short sequences finish and the window reads short (165 tokens):
    the window still holds the full time, so the held lengths are kept for one tick more (outputs of a
    few hundred tokens finish within it); the next window with free slots throughout measures them
    afresh."""
    decisions = _run(
        [
            _tick(2, 0.6 * 2 * SLOTS, 210.0),
            _tick(2, 2 * SLOTS, 446.0, decode_current=6),
            _tick(6, 0.4 * 6 * SLOTS, 165.0),
            _tick(6, 0.4 * 6 * SLOTS, 205.0),
        ]
    )
    after, fresh = decisions[2], decisions[3]
    assert any("they were 30s ago" in r and "mean 165" in r for r in after.reasons)
    assert after.state.output_lengths_free_slots == OutputLengths(mean=210.0, p90=420.0)
    assert not any("output lengths held" in r for r in fresh.reasons)
    assert fresh.state.output_lengths_free_slots == OutputLengths(mean=205.0, p90=410.0)


def test_long_outputs_seated_while_the_slots_were_full_keep_the_lengths_held_until_they_finish() -> None:
    """The reasoning trace's peak: the slots fill and the join order seats the long outputs first.
    Those take minutes to generate (P90 4800 tokens at 20 ms: 96 s), so they finish into the windows
    after the slots free up, which read 2700 tokens where the demand's are 2400 (the pool had grown by a
    quarter on the way down). The held lengths stand until the window and the P90 output's generation
    (156 s) have passed since the slots were last full; then the window's are measured afresh."""

    def reading(osl: float, full: bool) -> Observation:
        return _rising(osl, 2 * osl, full).model_copy(update={"arrival_rate_trend_rps_per_s": 0.0})

    state = PlannerState(output_lengths_free_slots=OutputLengths(mean=2400.0, p90=4800.0))
    _, state, _ = hold_output_lengths(SPEC, reading(2600.0, full=True), state, PROFILE, T0)
    assert state.decode_slots_full_time == T0
    for seconds in (30, 60, 90, 120, 150):
        sized, state, reason = hold_output_lengths(
            SPEC, reading(2700.0, full=False), state, PROFILE, T0 + timedelta(seconds=seconds)
        )
        assert (sized.output_tokens_mean, sized.output_tokens_p90) == (2400.0, 4800.0)
        assert reason is not None and f"they were {seconds}s ago" in reason and "for 156s" in reason
    sized, state, reason = hold_output_lengths(
        SPEC, reading(2450.0, full=False), state, PROFILE, T0 + timedelta(seconds=180)
    )
    assert (sized.output_tokens_mean, reason) == (2450.0, None)
    assert state.output_lengths_free_slots == OutputLengths(mean=2450.0, p90=4900.0)


def test_lengths_measured_just_after_a_step_are_not_remembered_as_the_demands() -> None:
    """As on the steps trace: free slots at 110 rps measure 205-token outputs; the rate steps to 190
    rps, and the windows after it read 190 (the new level's long outputs still decode). Those are
    neither sized with nor remembered: the 205 measured before the step is, with free slots and when
    the slots fill a tick later. A window clear of the step is sized with and remembered again."""
    state = PlannerState()
    _, state, _ = hold_output_lengths(SPEC, _tick(4, 0.5 * 4 * SLOTS, 205.0), state, PROFILE, T0)
    assert state.output_lengths_free_slots == OutputLengths(mean=205.0, p90=410.0)
    stepped = _tick(4, 0.8 * 4 * SLOTS, 190.0, arrival_level_age_seconds=30.0)
    sized, state, reason = hold_output_lengths(SPEC, stepped, state, PROFILE, T0 + timedelta(seconds=30))
    assert (sized.output_tokens_mean, sized.output_tokens_p90) == (205.0, 410.0)
    assert reason is not None and "as last measured before the arrivals stepped 30s ago" in reason
    assert "this window's mean 190/P90 380" in reason
    assert state.output_lengths_free_slots == OutputLengths(mean=205.0, p90=410.0)
    full = _tick(4, 4 * SLOTS, 190.0, arrival_level_age_seconds=60.0)
    sized, state, reason = hold_output_lengths(SPEC, full, state, PROFILE, T0 + timedelta(seconds=60))
    assert sized.output_tokens_mean == 205.0
    assert reason is not None and "held at mean 205/P90 410" in reason
    # free again, and the step far behind (past the window and the P90 output's generation)
    settled = _tick(6, 0.5 * 6 * SLOTS, 212.0, arrival_level_age_seconds=110.0)
    later = T0 + timedelta(seconds=300)
    sized, state, reason = hold_output_lengths(SPEC, settled, state, PROFILE, later)
    assert (sized.output_tokens_mean, reason) == (212.0, None)
    assert state.output_lengths_free_slots == OutputLengths(mean=212.0, p90=424.0)


def test_after_a_step_the_decode_pool_is_sized_for_the_lengths_measured_before_it() -> None:
    """A reasoning model's answers (P90 twice the mean) at a steady rate, then a step up: the windows
    after it read the new level's shortest answers first (a mean 15% short), then its longest (a P90
    30% long). The decode pool is sized for the lengths measured before the step until what arrived
    since has finished (the window and the P90 output's generation: 156 s), where the windows' readings
    had swung it a replica or more either way, and past the two minutes the observation reports the
    step for; then for the window's again."""
    gap = {"tpot_mean_seconds": 0.02}  # the P90 output generates for 96 s: a 156 s hold
    before = _tick(4, 0.5 * 4 * SLOTS, 2400.0, **gap)
    state = plan(SPEC, before, None, PlannerState(), T0).state
    steady = _tick(4, 0.5 * 4 * SLOTS, 2400.0, arrival_level_age_seconds=60.0, **gap)
    expected = plan(SPEC, steady, None, state, T0 + timedelta(seconds=30)).raw_decode
    # the step 30 s ago, then 150 s ago where the trend window no longer spans it
    for seconds, age_s, osl, p90 in ((30, 30.0, 2040.0, 4080.0), (150, None, 2400.0, 6240.0)):
        after = _tick(4, 0.5 * 4 * SLOTS, osl, arrival_level_age_seconds=age_s, osl_p90=p90, **gap)
        decision = plan(SPEC, after, None, state, T0 + timedelta(seconds=seconds))
        unheld = plan(SPEC, after, None, PlannerState(), T0 + timedelta(seconds=seconds))
        assert decision.raw_decode == expected != unheld.raw_decode
        assert any("as last measured before the arrivals stepped" in r for r in decision.reasons)
        state = decision.state
        assert state.arrivals_stepped_time == T0
    clear = _tick(4, 0.5 * 4 * SLOTS, 2040.0, **gap)
    decision = plan(SPEC, clear, None, state, T0 + timedelta(seconds=180))
    assert decision.raw_decode < expected
    assert not any("output lengths held" in r for r in decision.reasons)
    assert decision.state.arrivals_stepped_time is None


@pytest.mark.parametrize(
    ("running", "kv_usage", "full"),
    [
        (0.95 * 2 * SLOTS, None, True),  # every slot (95% of them) taken
        (0.5 * 2 * SLOTS, 0.97, True),  # the KV cache full before the slots are
        (0.9 * 2 * SLOTS, 0.9, False),
        (None, 0.99, False),  # the running count unknown: not known to be full
    ],
)
def test_a_decode_pool_is_full_at_its_slots_or_its_kv_cache(
    running: float | None, kv_usage: float | None, full: bool
) -> None:
    observation = make_obs(rate=100.0, decode=2, decode_running=running, decode_kv_usage=kv_usage)
    assert decode_slots_full(observation, PROFILE) is full


def _rising(osl: float, p90: float, full: bool) -> Observation:
    """A reasoning load on the rise (its trend beyond the slope's noise): outputs of `osl` tokens (P90
    `p90`) at 20 ms a token, so the P90 takes 100 s to generate, over half the 60 s window; as many
    residents as those lengths imply (Little's law), in a KV cache full or half full."""
    return make_obs(
        rate=20.0,
        isl=800.0,
        osl=osl,
        osl_p90=p90,
        prefill=1,
        decode=12,
        decode_running=20.0 * (osl - 1.0) * 0.02,
        decode_kv_usage=0.97 if full else 0.5,
        tpot_mean_seconds=0.02,
        arrival_rate_trend_rps_per_s=0.03,
        arrival_rate_trend_noise_rps_per_s=0.01,
    )


def test_on_a_rise_of_outputs_that_outlast_the_window_the_longer_lengths_stand() -> None:
    """On the reasoning trace's rise both readings are short of the demand's mix: the window's finishers
    are the shorter outputs, and the lengths measured with free slots a few minutes earlier, when the rise
    was younger, are shorter still. The hold kept those (2161 tokens where the windows read 2300-2800),
    and the pool grew behind the load. There the window's stand, and the reason says why; shorter than
    the held ones, or on a flat load, the held ones do (the join order's pick, as on the steps trace)."""
    state = PlannerState(output_lengths_free_slots=OutputLengths(mean=2160.0, p90=4620.0))
    longer = _rising(2600.0, 5300.0, full=True)
    sized, _, reason = hold_output_lengths(SPEC, longer, state, PROFILE, T0)
    assert (sized.output_tokens_mean, sized.output_tokens_p90) == (2600.0, 5300.0)
    assert reason is not None and "output lengths of this window kept (mean 2600)" in reason
    shorter = _rising(1900.0, 4000.0, full=True)
    assert hold_output_lengths(SPEC, shorter, state, PROFILE, T0)[0].output_tokens_mean == 2160.0
    flat = longer.model_copy(update={"arrival_rate_trend_rps_per_s": 0.0})
    assert hold_output_lengths(SPEC, flat, state, PROFILE, T0)[0].output_tokens_mean == 2160.0
    # and the decision: sized for the window's lengths, as with nothing held, beyond what the held buy
    decided = plan(SPEC, longer, None, state, T0)
    assert decided.raw_decode == plan(SPEC, longer, None, PlannerState(), T0).raw_decode
    assert (
        decided.raw_decode
        > plan(SPEC, _rising(2160.0, 4620.0, full=True), None, PlannerState(), T0).raw_decode
    )
    assert any("output lengths of this window kept" in r for r in decided.reasons)


@given(
    free_osl=st.floats(1.0, 4000.0),
    window_osl=st.floats(1.0, 4000.0),
    running_share=st.floats(0.0, 1.0),
    was_full=st.booleans(),
)
def test_the_hold_changes_nothing_but_the_output_lengths(
    free_osl: float, window_osl: float, running_share: float, was_full: bool
) -> None:
    """Whatever the pool's fill: the observation keeps its rate, prompt lengths and pools; its output
    lengths are either the window's or the held ones, and the held ones are only ever replaced by a
    window with free slots at both ends."""
    state = PlannerState(
        output_lengths_free_slots=OutputLengths(mean=free_osl, p90=2 * free_osl),
        decode_slots_full_time=T0 - timedelta(seconds=30) if was_full else None,
    )
    observation = _tick(2, running_share * 2 * SLOTS, window_osl)
    sized, after, reason = hold_output_lengths(SPEC, observation, state, PROFILE, T0)
    assert (
        sized.model_copy(
            update={
                "output_tokens_mean": observation.output_tokens_mean,
                "output_tokens_p90": observation.output_tokens_p90,
            }
        )
        == observation
    )
    full = decode_slots_full(observation, PROFILE)
    assert after.decode_slots_full_time == (T0 if full else state.decode_slots_full_time)
    if full or was_full:
        assert (sized.output_tokens_mean, reason is not None) == (free_osl, True)
        assert after.output_lengths_free_slots == state.output_lengths_free_slots
    else:
        assert (sized, reason) == (observation, None)
        assert after.output_lengths_free_slots == OutputLengths(mean=window_osl, p90=2 * window_osl)


def test_a_hold_ends_when_the_slots_are_still_full_a_lead_time_after_it_began() -> None:
    """As on the mix-shift trace (code completion's answers giving way to conversation's at a flat
    rate): the pool fills while the answers lengthen, and the finishers read longer outputs window after
    window. The held lengths ordered the replicas that serve a lead time later; slots still full then
    say the held lengths were short of the demand's, so the window's are sized with. Held for ever, the
    pool had stayed at one replica while 21,000 sequences queued for a slot (70.5% of requests within
    both SLOs on seed 1; 97.3% with the hold ending)."""
    lead_s = lead_time_seconds(SPEC)
    full_ticks = int(lead_s // 30) + 2
    decisions = _run([_tick(2, 0.6 * 2 * SLOTS, 210.0)] + [_tick(2, 2 * SLOTS, 420.0)] * full_ticks)
    demand = _run([_tick(2, 0.6 * 2 * SLOTS, 210.0), _tick(2, 2 * SLOTS, 210.0)])[1]
    window = _run([_tick(2, 0.6 * 2 * SLOTS, 420.0), _tick(2, 2 * SLOTS, 420.0)])[1]
    held_for = [30.0 * i for i in range(full_ticks)]  # seconds since the hold began, tick by tick
    for seconds, decision in zip(held_for, decisions[1:], strict=True):
        expected = demand if seconds <= lead_s else window
        assert decision.raw_decode == expected.raw_decode, seconds
    assert demand.raw_decode < window.raw_decode
    assert any(
        "output lengths of this window used (mean 420), no longer those held for" in r
        for r in decisions[-1].reasons
    )
    assert decisions[-1].state.output_lengths_held_since == T0 + timedelta(seconds=30)
    # a tick with free slots long enough to measure again clears it
    assert (
        hold_output_lengths(
            SPEC, _tick(6, 0.3 * 6 * SLOTS, 400.0), decisions[-1].state, PROFILE, T0 + timedelta(hours=1)
        )[1].output_lengths_held_since
        is None
    )


def test_a_tick_that_keeps_the_windows_lengths_does_not_restart_the_holds_clock() -> None:
    """A tick on a rise keeps the window's (longer) lengths rather than the held ones; the hold's lead
    time still runs from when it first applied. Restarted there, on a conversation trace shifting to a
    reasoning model's answers, the hold went back to 272-token outputs for another lead time while 600
    sequences waited for a slot, and sized the decode pool at one replica where twelve were ordered."""
    state = PlannerState(output_lengths_free_slots=OutputLengths(mean=2160.0, p90=4620.0))
    kept = _rising(2600.0, 5300.0, full=True)
    _, after, reason = hold_output_lengths(SPEC, kept, state, PROFILE, T0)
    assert reason is not None and "output lengths of this window kept" in reason
    assert after.output_lengths_held_since == T0
    # a flat tick a lead time later, its slots still full: the held lengths were short, the window's stand
    later = T0 + timedelta(seconds=lead_time_seconds(SPEC) + 30)
    flat = _rising(2600.0, 5300.0, full=True).model_copy(update={"arrival_rate_trend_rps_per_s": 0.0})
    sized, _, reason = hold_output_lengths(SPEC, flat, after, PROFILE, later)
    assert sized.output_tokens_mean == 2600.0
    assert reason is not None and "no longer those held" in reason
    # had the clock restarted at the kept tick, the same tick holds them again
    restarted = after.model_copy(update={"output_lengths_held_since": None})
    assert hold_output_lengths(SPEC, flat, restarted, PROFILE, later)[0].output_tokens_mean == 2160.0
