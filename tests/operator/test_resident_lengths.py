"""The output lengths the planner sizes decode with where the metrics window is too short to see the long
outputs finish: no shorter than what the decode pool's residents imply by Little's law. The numbers are
those the reasoning trace's first tick read (`dopd simulate --trace synthetic:diurnal,...,lengths=reasoning`):
mean 1020 finished in the window, where the demand's is 2400."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dopd_builders import T0, make_obs, make_spec, settled_state
from dopd_operator.planner import plan
from dopd_operator.planner_lengths import (
    FINISHED_LENGTHS_WINDOW_SHARE,
    RESIDENT_LENGTHS_WINDOW_SHARE,
    resident_output_lengths,
)
from dopd_operator.planner_types import Observation, PlannerState, RoleObservation

SPEC = make_spec(decode={"maxReplicas": 64})
WINDOW_S = SPEC.metrics.window_seconds


def _cold_reasoning(**extra: object) -> Observation:
    """The first tick of the reasoning trace: 178 sequences decode on 5 replicas at 10.87 rps and 8.5 ms
    a token, while the window saw outputs of 1020 tokens on average finish (P90 1950)."""
    fields: dict[str, object] = {
        "decode_running": 178.0,
        "tpot_mean_seconds": 0.0085,
        "tpot_seconds": 0.0097,
        "osl_p90": 1950.0,
        "decode_kv_usage": 0.32,
    }
    fields.update(extra)
    return make_obs(
        rate=10.87,
        isl=720.0,
        osl=1020.0,
        prefill=1,
        decode_obs=RoleObservation(current=5, ready=5),
        **fields,
    )


def test_long_outputs_still_decoding_raise_the_lengths_to_what_the_residents_imply() -> None:
    """178 residents at 10.87 rps and 8.5 ms a token hold outputs of 178 / (10.87 * 0.0085) + 1 = 1928
    tokens on average: the mean is raised to that, the P90 with it, and the reason says why."""
    raised, reason = resident_output_lengths(SPEC, _cold_reasoning())
    implied = 178.0 / (10.87 * 0.0085) + 1.0
    assert raised.output_tokens_mean == pytest.approx(implied)
    assert raised.output_tokens_p90 == pytest.approx(1950.0 * implied / 1020.0)
    assert reason is not None
    assert "raised to mean 1928/P90 3685 tokens from the window's 1020" in reason
    assert (
        "178 sequences decode at 10.87 rps and 8.5 ms a token in the window's gaps (Little's law)" in reason
    )
    assert (
        "its P90 output takes 31s to generate, over 50% of the 60s window (those that finished in it, 17s)"
        in reason
    )
    assert raised.input_tokens_mean == 720.0  # nothing but the output lengths moves


def test_the_residents_gap_is_the_one_over_their_lives_where_the_router_reads_it() -> None:
    """A resident's time in the decode stage is its life. On a ramp the window's gaps, observed as each
    step leaves, are the fuller batches' of now (10.4 ms) while the requests that finished lived at 8.5
    ms a token: divided by the window's gaps the residents imply 1575 tokens, by their lives' 1928."""
    raised, reason = resident_output_lengths(
        SPEC, _cold_reasoning(tpot_mean_seconds=0.0104, request_tpot_mean_seconds=0.0085)
    )
    assert raised.output_tokens_mean == pytest.approx(178.0 / (10.87 * 0.0085) + 1.0)
    assert reason is not None
    assert "8.5 ms a token over the finished requests' lives (Little's law)" in reason
    window, _ = resident_output_lengths(SPEC, _cold_reasoning(tpot_mean_seconds=0.0104))
    assert window.output_tokens_mean == pytest.approx(178.0 / (10.87 * 0.0104) + 1.0)


def _rising_with_a_queue(trend_rps_per_s: float) -> Observation:
    """The reasoning trace's rise at minute 9 (seed 0): 22 rps, 900 sequences decoding at 20 ms a token
    with every KV slot taken, 300 more waiting for one, outputs of 2300 tokens finishing (P90 5000)."""
    return make_obs(
        rate=22.0,
        isl=800.0,
        osl=2300.0,
        osl_p90=5000.0,
        prefill=1,
        decode_obs=RoleObservation(current=12, ready=12),
        decode_running=900.0,
        decode_queue_depth=300.0,
        decode_kv_usage=0.99,
        tpot_mean_seconds=0.02,
        arrival_rate_trend_rps_per_s=trend_rps_per_s,
        arrival_rate_trend_noise_rps_per_s=0.01,
    )


def test_on_a_rise_the_sequences_waiting_for_a_slot_count_with_the_residents() -> None:
    """By Little's law the sequences past their first token, decoding or waiting for a slot, are the rate
    times their time there, which the mean gap (slot waits included) measures: (900 + 300) / (22 *
    0.02) + 1 = 2728 tokens. The residents alone imply 2046, below the 2300 that finished, and a full
    pool caps them. Counted only on a rise of outputs that outlast the window: after a step, the queue
    of a flood is arrivals beyond the pool, not outputs still decoding (on the steps trace it had read
    200-token outputs as 860-2000)."""
    raised, reason = resident_output_lengths(SPEC, _rising_with_a_queue(0.03))
    assert raised.output_tokens_mean == pytest.approx((900.0 + 300.0) / (22.0 * 0.02) + 1.0)
    assert reason is not None and "1200 sequences decode or wait for a slot at 22.00 rps" in reason
    flat, reason = resident_output_lengths(SPEC, _rising_with_a_queue(0.0))
    assert (flat.output_tokens_mean, reason) == (2300.0, None)


def test_the_decode_pool_is_sized_for_the_implied_lengths() -> None:
    """Sized on the 1020 tokens that finished, the pool gets fewer replicas than on the residents'
    1927; the decision's reasons carry the raise."""
    raised, _ = resident_output_lengths(SPEC, _cold_reasoning())
    decision = plan(SPEC, _cold_reasoning(), None, PlannerState(), T0)
    as_if_told = plan(SPEC, raised, None, PlannerState(), T0)
    short = _cold_reasoning(decode_running=10.87 * 0.0085 * 1019.0)  # residents that agree with 1020
    unraised = plan(SPEC, short, None, PlannerState(), T0)
    assert decision.raw_decode == as_if_told.raw_decode > unraised.raw_decode
    assert any("output lengths raised" in r for r in decision.reasons)
    assert not any("output lengths raised" in r for r in unraised.reasons)


def test_short_outputs_keep_the_window_lengths_whatever_the_gauge_reads() -> None:
    """On a chat mix (210-token outputs, P90 420, 20 ms a token: 8 s, well within the window) the
    sequences finishing in a window are the demand's; a running count 30% above what they imply is
    the gauge's noise, not a censored tail, and changes nothing."""
    chat = make_obs(
        rate=160.0, isl=1150.0, osl=210.0, decode_running=1.3 * 160.0 * 0.02 * 209.0, tpot_mean_seconds=0.02
    )
    kept, reason = resident_output_lengths(SPEC, chat)
    assert kept == chat and reason is None


def test_residents_fewer_than_the_window_implies_never_lower_the_lengths() -> None:
    """A full pool caps its residents (the rest wait for a slot), so they read low: the window's lengths
    stand."""
    full = _cold_reasoning(decode_running=40.0)
    kept, reason = resident_output_lengths(SPEC, full)
    assert kept == full and reason is None


def test_residents_beyond_what_short_finishers_imply_are_not_taken_for_a_tail() -> None:
    """150 sequences a replica at 20 rps of 200-token outputs (P90 400) and 17.7 ms a token: Little's law
    says outputs of 848 tokens, but the window saw outputs up to 400 finish in 7 s each, a window that
    would have seen 848-token ones finish too. The residents are something else (a pool flooded faster
    than the arrivals), and the window's lengths stand: on a right engine the decode correction stays
    at 1 (tests/operator/test_decode_correction.py)."""
    flooded = make_obs(
        rate=20.0, isl=1000.0, osl=200.0, decode=2, decode_running=300.0, tpot_mean_seconds=0.0177
    )
    kept, reason = resident_output_lengths(SPEC, flooded)
    assert kept == flooded and reason is None


def _load_stopped(**extra: object) -> Observation:
    """The reasoning trace 30 s after its load stopped: the rate is read from the step on (0.16 rps),
    while 92 sequences that arrived at 10 rps still decode at 11.4 ms a token."""
    fields: dict[str, object] = {
        "decode_running": 92.0,
        "tpot_mean_seconds": 0.0114,
        "osl_p90": 5940.0,
        "decode_kv_usage": 0.17,
        "arrival_level_age_seconds": 30.0,
    }
    fields.update(extra)
    return make_obs(
        rate=0.16, isl=860.0, osl=2810.0, decode_obs=RoleObservation(current=12, ready=12), **fields
    )


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({}, id="stepped"),
        pytest.param(
            {
                "rate": 11.3,
                "osl": 2480.0,
                "arrival_level_age_seconds": None,
                "decode_running": 286.0,
                "tpot_mean_seconds": 0.0098,
                "arrival_rate_trend_rps_per_s": -0.02,
                "arrival_rate_trend_noise_rps_per_s": 0.005,
            },
            id="declining",
        ),
    ],
)
def test_residents_that_came_at_another_rate_leave_the_window_lengths(changed: dict[str, object]) -> None:
    """Little's law holds the residents to the rate they arrived at. After a step (the rate is read from
    it on) or on a decline they came at a higher rate than the one read now, and the bound reads long:
    when the reasoning trace's load stopped it read 48,000-token outputs, and the planner ordered the
    most replicas the spec allows after the load had gone. The window's lengths stand, and the pool is
    sized for them; the same residents on a flat load still raise the lengths."""
    fields = dict(changed)
    rate, osl = fields.pop("rate", 0.16), fields.pop("osl", 2810.0)
    observation = _load_stopped(**fields).model_copy(
        update={"arrival_rate_rps": rate, "output_tokens_mean": osl}
    )
    kept, reason = resident_output_lengths(SPEC, observation)
    assert kept == observation and reason is None
    steady = observation.model_copy(
        update={"arrival_level_age_seconds": None, "arrival_rate_trend_rps_per_s": 0.0}
    )
    assert resident_output_lengths(SPEC, steady)[1] is not None
    decision = plan(SPEC, observation, None, settled_state(observation), T0)
    assert decision.raw_decode <= observation.decode.ready
    assert not any("output lengths raised" in r for r in decision.reasons)


@pytest.mark.parametrize(
    "missing", [{"decode_running": None}, {"tpot_mean_seconds": None}, {"rate": None}, {"osl": None}]
)
def test_an_unknown_input_leaves_the_window_lengths(missing: dict[str, object]) -> None:
    """Unknown is not zero: without the running count, the mean gap, the rate or the window's lengths there
    is no bound to take, and the observation is left as measured (the planner says what is unknown)."""
    fields = {"rate": 10.87, "osl": 1020.0, "decode_running": 178.0, "tpot_mean_seconds": 0.0085, **missing}
    rate, osl = fields.pop("rate"), fields.pop("osl")
    observation = make_obs(rate=rate, isl=720.0, osl=osl, **fields)  # type: ignore[arg-type]
    kept, reason = resident_output_lengths(SPEC, observation)
    assert kept == observation and reason is None


@given(
    running=st.floats(0.0, 5000.0),
    rate=st.floats(0.1, 200.0),
    gap_s=st.floats(0.002, 0.2),
    osl=st.floats(1.0, 20000.0),
    p90_ratio=st.floats(1.0, 4.0),
)
def test_the_bound_only_raises_the_output_lengths_and_only_where_the_window_is_short(
    running: float, rate: float, gap_s: float, osl: float, p90_ratio: float
) -> None:
    observation = make_obs(
        rate=rate,
        isl=800.0,
        osl=osl,
        osl_p90=osl * p90_ratio,
        decode_running=running,
        tpot_mean_seconds=gap_s,
    )
    result, reason = resident_output_lengths(SPEC, observation)
    moved = {k for k, v in result.model_dump().items() if v != observation.model_dump()[k]}
    assert moved <= {"output_tokens_mean", "output_tokens_p90"}
    assert result.output_tokens_mean is not None
    assert result.output_tokens_mean >= osl
    if reason is None:
        assert result == observation
    else:
        assert result.output_tokens_mean == pytest.approx(running / (rate * gap_s) + 1.0)
        assert result.output_tokens_p90 is not None
        assert result.output_tokens_p90 * gap_s > RESIDENT_LENGTHS_WINDOW_SHARE * WINDOW_S
        assert osl * p90_ratio * gap_s > FINISHED_LENGTHS_WINDOW_SHARE * WINDOW_S
        assert result.output_tokens_p90 / result.output_tokens_mean == pytest.approx(p90_ratio)


def _decode_factor_after(
    osl: float, osl_p90: float, rate: float, decode: int, gap_s: float, trend_rps_per_s: float = 0.02
) -> float:
    """The decode factor after six settled ticks whose windows read mean gaps of `gap_s`, the running
    sequences as many as those gaps imply (Little's law), so the lengths stand as measured; the load
    rising by `trend_rps_per_s` (beyond its noise of 0.005 rps/s where positive)."""
    spec = make_spec()
    obs = make_obs(
        arrival_rate_trend_rps_per_s=trend_rps_per_s,
        arrival_rate_trend_noise_rps_per_s=0.005,
        rate=rate,
        isl=800,
        osl=osl,
        osl_p90=osl_p90,
        prefill=2,
        decode=decode,
        tpot_seconds=1.2 * gap_s,
        tpot_mean_seconds=gap_s,
        decode_running=rate * (osl - 1) * gap_s,
    )
    state = settled_state(obs)
    for _ in range(6):
        state = plan(spec, obs, None, state, T0).state
    return state.decode_correction


def test_on_a_rise_a_window_too_short_for_the_outputs_can_raise_the_decode_factor_but_not_lower_it() -> None:
    """Outputs that take longer than half the window to generate (2400 tokens, P90 5000, at 10-25 ms),
    on a rising load: the window has not seen its residents through, their contexts are shorter than
    the steady state's, so their steps read fast (on the reasoning trace a right profile's factor sank
    to 0.81 in the first two minutes). Such a window lowers nothing; a slow one still raises the factor.
    On a flat load, or with short outputs (200 tokens) the window sees through, a fast read lowers it
    (held on flat loads too, a factor raised at a cold start kept 15-25% more GPU-hours for good)."""
    assert _decode_factor_after(2400, 5000, 14.0, 9, gap_s=0.010) == 1.0
    assert _decode_factor_after(2400, 5000, 14.0, 9, gap_s=0.025) > 1.1
    assert _decode_factor_after(2400, 5000, 14.0, 9, gap_s=0.010, trend_rps_per_s=0.0) < 0.95
    assert _decode_factor_after(200, 400, 60.0, 2, gap_s=0.008) < 0.9
