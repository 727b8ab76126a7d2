"""Lengths that rise at a flat rate: a tenant with longer answers (or prompts) moving onto the model. The
replicas ordered now serve a lead time later, so the pools are sized for the lengths then: the window's
mean extrapolated along its rise beyond the noise two windows of one mix differ by (`trending_lengths`).
On a generated shift from code completion to conversation at 120 rps, the decode pool had met the
longer answers three minutes late (98.3% of requests within both SLOs; 99.2-100% with the trend)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.api import Recommendation
from dopd_operator.planner import plan
from dopd_operator.planner_lengths import LENGTH_TREND_NOISE_MULTIPLE, trending_lengths
from dopd_operator.planner_load import lead_time_seconds
from dopd_operator.planner_types import Decision, LoadForecast, Observation, PlannerState

SPEC = make_spec(prefill={"maxReplicas": 64}, decode={"maxReplicas": 64})
LEAD_S = lead_time_seconds(SPEC)
NOISE = 2.0 / 60  # tokens per second: two windows of the mix differ by 2 tokens a minute


def _obs(osl: float = 60.0, isl: float = 1800.0, **extra: Any) -> Observation:
    return make_obs(rate=120.0, isl=isl, osl=osl, prefill=10, decode=1, arrival_scv=1.0, **extra)


def _rising(slope_per_min: float, **extra: Any) -> Observation:
    return _obs(
        output_tokens_trend_per_s=slope_per_min / 60,
        output_tokens_trend_noise_per_s=NOISE,
        **extra,
    )


def _decide(observation: Observation) -> Decision:
    return plan(SPEC, observation, None, PlannerState(), T0)


def test_rising_outputs_size_decode_for_the_outputs_a_lead_time_ahead() -> None:
    """Outputs rising 30 tokens a minute, 24 of it beyond 3x the noise: over the 150 s lead time the
    60-token mean becomes 120 (P90 alike), as on the shift from code completion to conversation. The pools are those the 70-token outputs would get, the
    reason says so, and the corrections still judge the window at the lengths it measured."""
    rise_per_s = (30.0 / 60) - LENGTH_TREND_NOISE_MULTIPLE * NOISE
    ahead = 60.0 + rise_per_s * LEAD_S
    rising = _decide(_rising(30.0, tpot_mean_seconds=0.02, tpot_seconds=0.03))
    told = _decide(_obs(osl=ahead, osl_p90=2 * ahead, tpot_mean_seconds=0.02, tpot_seconds=0.03))
    flat = _decide(_obs(tpot_mean_seconds=0.02, tpot_seconds=0.03))
    assert ahead == pytest.approx(120.0)
    assert (rising.raw_prefill, rising.raw_decode) == (told.raw_prefill, told.raw_decode)
    assert rising.raw_decode > flat.raw_decode
    assert any(
        r.startswith(f"lengths extrapolated over the {LEAD_S:g}s lead time: outputs 60 -> 120 tokens")
        for r in rising.reasons
    )
    assert rising.state.decode_correction == flat.state.decode_correction


@given(
    slope_per_min=st.floats(-50.0, LENGTH_TREND_NOISE_MULTIPLE * NOISE * 60),
    isl_slope_per_min=st.floats(-500.0, LENGTH_TREND_NOISE_MULTIPLE * NOISE * 60),
)
def test_a_rise_within_the_noise_or_a_fall_is_sized_as_observed(
    slope_per_min: float, isl_slope_per_min: float
) -> None:
    observation = _obs(
        output_tokens_trend_per_s=slope_per_min / 60,
        output_tokens_trend_noise_per_s=NOISE,
        input_tokens_trend_per_s=isl_slope_per_min / 60,
        input_tokens_trend_noise_per_s=NOISE,
    )
    assert trending_lengths(SPEC, observation, False) == (observation, None)


def test_unknown_trends_are_sized_as_observed() -> None:
    """No window before (a series younger than two windows): the window's lengths, nothing invented."""
    unknown = _obs(output_tokens_trend_per_s=1.0, input_tokens_trend_per_s=None)
    assert trending_lengths(SPEC, unknown, False) == (unknown, None)


def test_after_a_step_in_the_arrivals_only_the_prompts_are_extrapolated() -> None:
    """The arrivals stepped 40 s ago: the outputs finishing since are the new level's short ones first,
    not the demand's mix, so their apparent rise is not carried forward; the prompts, measured as they
    arrive, are. Nor are outputs already raised or held by the planner (`outputs_adjusted`)."""
    observation = _rising(
        30.0,
        arrival_level_age_seconds=40.0,
        input_tokens_trend_per_s=60.0 / 60,
        input_tokens_trend_noise_per_s=NOISE,
    )
    sized, reason = trending_lengths(SPEC, observation, False)
    assert sized.output_tokens_mean == observation.output_tokens_mean
    assert sized.input_tokens_mean is not None and sized.input_tokens_mean > 1800.0
    assert reason is not None and "prompts 1800 ->" in reason and "outputs" not in reason
    held, _ = trending_lengths(SPEC, _rising(30.0), True)
    assert held.output_tokens_mean == 60.0


@pytest.mark.parametrize(
    ("slope_noises", "stepped", "window_s"),
    [
        pytest.param(-4.0, False, 30, id="prompts-shorten-one-interval"),
        # two standard errors down is a chance dip of the mix, not a decline (3x is the bound)
        pytest.param(-2.0, False, 150, id="dip-lead-time"),
        pytest.param(-4.0, True, 30, id="prompts-stand-after-a-step"),
    ],
)
def test_shortening_prompts_release_prefill_after_one_interval(
    slope_noises: float, stepped: bool, window_s: int
) -> None:
    """As on the mix shift's second half: the rate is flat, the prompts shorten, and the layouts
    recommended a lead time and a minute ago (12P/3D) were sized for the longer prompts then. Where the
    forecasts held and the prompts' mean falls beyond three times its noise, the window shortens to one
    interval, as for a falling rate (`planner_lengths.lengths_declining`); a chance dip keeps the lead-time
    window. Prompts are measured as they arrive, so a step in the arrivals does not discount them."""
    spec = make_spec(scaling={"scaleDown": {"stabilizationSeconds": 300, "maxStepReplicas": 1000}})
    history = [
        Recommendation(time=T0 - timedelta(seconds=150), prefill=12, decode=3),
        Recommendation(time=T0 - timedelta(seconds=60), prefill=12, decode=3),
    ]
    noise = 50.0 / 60
    obs = make_obs(
        rate=40,
        isl=1200.0,
        osl=200.0,
        prefill=12,
        decode=3,
        input_tokens_trend_per_s=slope_noises * noise,
        input_tokens_trend_noise_per_s=noise,
        arrival_level_age_seconds=40.0 if stepped else None,
    )
    upcoming = LoadForecast(
        model="naive", horizon_seconds=150, quantile=0.9, arrival_rate_rps_mean=40, arrival_rate_rps_upper=41
    )
    d = plan(spec, obs, upcoming, PlannerState(recommendations=history), T0)
    assert any(f"scale-down window {window_s}s instead of 300s" in r for r in d.reasons), d.reasons
    if window_s == 30:
        assert d.prefill == d.raw_prefill < 12
        assert any(
            "the prompts shorten (-200.0 tokens/min, beyond 3x its noise of 50.0)" in r for r in d.reasons
        )
    else:
        assert d.prefill == 12


def test_outputs_that_outlast_the_window_are_not_extrapolated() -> None:
    """A reasoning model's answers (P90 4,000 tokens, 80 s at 20 ms a token) take longer to generate than
    half the 60 s window: the window's finishers trail the arrivals by more than a window, and their
    mean's slope is that lag as much as the mix's (on a shift from code completion into such answers
    it bought 17-23% more GPU-hours at no attainment). The residents' Little's law reads those
    (`resident_output_lengths`). Answers of 60 tokens with the same slope are extrapolated."""
    long_answers = _obs(
        osl=2000.0,
        osl_p90=4000.0,
        tpot_mean_seconds=0.02,
        output_tokens_trend_per_s=600.0 / 60,
        output_tokens_trend_noise_per_s=NOISE,
    )
    assert trending_lengths(SPEC, long_answers, False) == (long_answers, None)
    short_answers = _rising(30.0, tpot_mean_seconds=0.02)
    sized, reason = trending_lengths(SPEC, short_answers, False)
    assert reason is not None and sized.output_tokens_mean is not None and sized.output_tokens_mean > 60.0
