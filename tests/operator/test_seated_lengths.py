"""The output lengths the planner sizes decode with where the mix moves to longer answers at a steady
rate: no shorter than how far the decode residents are into their answers implies. The numbers are
those a shift from code completion to a reasoning model's answers read as it began, at minute 5 (`dopd
simulate --trace synthetic:poisson,rate_rps=12,duration_s=1800,lengths=code,shift_to=reasoning,
shift_start_s=300,shift_end_s=1500 --seed 0`): answers of 31 tokens (P90 62) finished in the window,
while the 6 sequences decoding had generated 638 tokens each."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.lengths import MAX_P90_OVER_MEAN, LengthDistribution
from dopd_operator.planner import plan
from dopd_operator.planner_lengths import RESIDENT_GENERATED_MARGIN, seated_output_lengths
from dopd_operator.planner_types import Observation, PlannerState

SPEC = make_spec(decode={"maxReplicas": 64})


def _shifting(**extra: object) -> Observation:
    """Minute 5 of the shift's trace (seed 0): 11.43 rps, prompts 1919 (P90 3935), answers finished 31
    (P90 62, their mean up 0.04 tokens/s on the window before), 6 residents on one decode replica at 4%
    of its KV, 7.2 ms a token."""
    fields: dict[str, object] = {
        "output_tokens_trend_per_s": 0.04,
        "output_tokens_trend_noise_per_s": 0.052,
        "isl_p90": 3935.0,
        "osl_p90": 62.0,
        "decode_running": 6.0,
        "decode_kv_usage": 0.037,
        "decode_generated_tokens_mean": 638.0,
        "tpot_mean_seconds": 0.0072,
        "tpot_seconds": 0.0093,
    }
    fields.update(extra)
    return make_obs(rate=11.43, isl=1919.0, osl=31.0, prefill=2, decode=1, **fields)


def _expected_generated(observation: Observation) -> float:
    """What a resident has generated on average at the observation's output lengths: E[n^2] / (2 E[n])
    under the gamma fitted to their mean and P90 (residents weighted by their answers, each halfway)."""
    assert observation.output_tokens_mean is not None
    outputs = LengthDistribution.from_mean_p90(observation.output_tokens_mean, observation.output_tokens_p90)
    return outputs.moment(2) / outputs.moment(1) / 2


def test_residents_deep_into_longer_answers_raise_the_outputs_to_the_least_that_accounts_for_them() -> None:
    raised, reason = seated_output_lengths(_shifting(), _shifting())  # no trend extrapolated
    assert raised.output_tokens_mean is not None and raised.output_tokens_p90 is not None
    # the least mean that explains the residents: the widest spread a fit takes, at a raised mean
    assert raised.output_tokens_p90 == pytest.approx(MAX_P90_OVER_MEAN * raised.output_tokens_mean)
    assert 31.0 < raised.output_tokens_mean < 638.0
    assert _expected_generated(raised) == pytest.approx(638.0, rel=1e-6)
    assert raised.input_tokens_mean == 1919.0  # the prompts are measured as they arrive, and stand
    assert reason is not None
    assert "from the window's 31/P90 62: the 6 decode residents have generated 638 tokens each" in reason
    assert "the answers seated now are longer than those finishing" in reason


def test_a_wider_spread_at_the_window_mean_where_one_accounts_for_the_residents() -> None:
    """Residents twice as far in as the window implies: the window's mean stands, its tail widens."""
    base = _shifting(osl_p90=45.0, decode_running=500.0)
    target = 2.0 * _expected_generated(base)
    observation = base.model_copy(update={"decode_generated_tokens_mean": target})
    raised, reason = seated_output_lengths(observation, observation)
    assert reason is not None
    assert raised.output_tokens_mean == 31.0
    assert raised.output_tokens_p90 is not None and 45.0 < raised.output_tokens_p90 < MAX_P90_OVER_MEAN * 31.0
    assert _expected_generated(raised) == pytest.approx(target, rel=1e-4)


def test_the_trends_lengths_stand_where_they_account_for_the_residents_and_are_widened_where_not() -> None:
    """The floor is on the lengths sized with: where the trend extrapolated the outputs far enough that
    residents weighted by them would be 638 tokens in, they stand; where it extrapolated the mean but not
    far enough, the raise starts from its mean, not the window's."""
    observation = _shifting()
    far = observation.model_copy(update={"output_tokens_mean": 900.0, "output_tokens_p90": 1800.0})
    assert _expected_generated(far) > 638.0
    assert seated_output_lengths(observation, far) == (far, None)
    near = observation.model_copy(update={"output_tokens_mean": 150.0, "output_tokens_p90": 300.0})
    raised, reason = seated_output_lengths(observation, near)
    assert reason is not None
    assert raised.output_tokens_mean is not None and raised.output_tokens_mean >= 150.0
    assert _expected_generated(raised) == pytest.approx(638.0, rel=1e-4)
    # read against the window's own lengths: 31 tokens, as the reason says
    assert "from the window's 31/P90 62" in reason


def test_more_decode_replicas_are_ordered_before_the_new_answers_finish() -> None:
    """Half a minute later (12.12 rps, answers of 60 finished, 5 residents 1146 tokens in): without
    what the residents have generated the planner kept one decode replica until the KV cache had filled
    three minutes on, and 1,100 sequences waited; with it, it orders a second now."""
    later = _shifting().model_copy(
        update={
            "arrival_rate_rps": 12.12,
            "input_tokens_mean": 1970.0,
            "input_tokens_p90": 4416.0,
            "output_tokens_mean": 60.0,
            "output_tokens_p90": 74.0,
            "decode_running": 5.0,
            "decode_generated_tokens_mean": 1146.0,
            "decode_kv_usage": 0.033,
            "tpot_mean_seconds": 0.0077,
            "decode_step_mean_seconds": 0.0077,
            "tpot_seconds": 0.0097,
        }
    )
    blind = plan(
        SPEC, later.model_copy(update={"decode_generated_tokens_mean": None}), None, PlannerState(), T0
    )
    seeing = plan(SPEC, later, None, PlannerState(), T0)
    assert blind.raw_decode == 1
    assert seeing.raw_decode == 2
    assert any("5 decode residents have generated 1146 tokens each" in r for r in seeing.reasons)
    assert not any("decode residents have generated" in r for r in blind.reasons)


@pytest.mark.parametrize(
    ("why", "extra"),
    [
        ("the engine does not report it", {"decode_generated_tokens_mean": None}),
        ("nothing decodes", {"decode_running": 0.0}),
        # two residents 10 and 120 tokens into their answers: 65 where the window implies 24 (+-15)
        (
            "within the noise of a few residents",
            {"decode_running": 2.0, "decode_generated_tokens_mean": 65.0},
        ),
        # two thousand residents 20% further in than the window's fitted gamma says
        ("within the margin", {"decode_running": 2000.0, "decode_generated_tokens_mean": 1.2 * 24.0}),
        # the reverse shift's minute 23: the finishers' answers shorten, the residents are the old mix's
        ("the finishers' answers shorten", {"output_tokens_trend_per_s": -0.01}),
        ("the outputs' trend is unknown", {"output_tokens_trend_per_s": None}),
        ("after a step in the arrivals", {"arrival_level_age_seconds": 30.0}),
        (
            "on a decline: the short answers left first",
            {"arrival_rate_trend_rps_per_s": -0.05, "arrival_rate_trend_noise_rps_per_s": 0.001},
        ),
    ],
)
def test_outputs_stand_where_the_residents_are_not_evidence_of_longer_answers(
    why: str, extra: dict[str, object]
) -> None:
    observation = _shifting(**extra)
    same, reason = seated_output_lengths(observation, observation)
    assert reason is None, why
    assert same == observation, why


@given(
    output=st.floats(5.0, 4000.0),
    p90_ratio=st.floats(0.8, 3.0),
    running=st.floats(1.0, 2000.0),
    excess=st.floats(-0.5, 30.0),
)
def test_a_raise_is_upward_accounts_for_the_residents_and_is_not_raised_again(
    output: float, p90_ratio: float, running: float, excess: float
) -> None:
    """Whatever the lengths and the residents: the mean output never falls; where the outputs are
    raised, the residents' expected progress at the raised lengths is what they have generated, beyond
    the margin; and the raised observation is not raised again (the rule has a fixed point)."""
    base = make_obs(
        rate=10.0,
        isl=1000.0,
        osl=output,
        osl_p90=output * p90_ratio,
        decode_running=running,
        output_tokens_trend_per_s=0.0,
    )
    generated = _expected_generated(base) * (1.0 + excess)
    observation = base.model_copy(update={"decode_generated_tokens_mean": generated})
    raised, reason = seated_output_lengths(observation, observation)
    assert raised.output_tokens_mean is not None
    assert raised.output_tokens_mean >= output
    if reason is None:
        assert raised == observation
        return
    assert excess > RESIDENT_GENERATED_MARGIN
    assert _expected_generated(raised) == pytest.approx(generated, rel=1e-4)
    again, again_reason = seated_output_lengths(raised, raised)
    assert again_reason is None
    assert again == raised
