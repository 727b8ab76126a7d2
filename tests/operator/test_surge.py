"""Surge headroom: the upper quantile of how far the load rose, within a lead time, above the observed
rate and its trend (`dopd_operator.surge`), and how the tick and the planner use it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.planner import plan
from dopd_operator.planner_load import lead_time_seconds
from dopd_operator.planner_types import PlannerState
from dopd_operator.surge import SurgeHeadroom, surge_headroom
from dopd_operator.tick import (
    FORECAST_STEP_SECONDS,
    LoadHistory,
    forecast_load,
    load_surge,
    make_forecaster,
    surge_quantile,
)

STEP = 10.0
LEAD = 150.0
WINDOW = 60.0
TREND = 120.0


def _headroom(rates: np.ndarray, quantile: float = 0.99, scv: float = 1.0) -> float:
    result = surge_headroom(rates, STEP, LEAD, quantile, WINDOW, TREND, scv)
    assert result is not None
    return result.rps


def test_a_flat_load_needs_no_headroom() -> None:
    assert _headroom(np.full(360, 100.0)) == 0.0


def test_poisson_noise_is_discounted() -> None:
    # An hour of 10 s buckets of a 100 rps Poisson load: its window means wander by about a rps, which
    # the capacity model already queues for; the headroom stays within a few percent of the rate.
    rng = np.random.default_rng(0)
    rates = rng.poisson(100.0 * STEP, 360) / STEP
    assert _headroom(rates) < 3.0


def test_a_smooth_rise_is_the_trend_guards_not_the_headroom() -> None:
    # A linear rise of 6 rps a minute: the trend extrapolated over the lead time foresees it.
    rates = 50.0 + np.arange(360) * STEP * 0.1
    assert _headroom(rates) == pytest.approx(0.0, abs=1e-6)


def test_a_step_is_remembered_as_headroom_of_its_size() -> None:
    rates = np.concatenate([np.full(60, 80.0), np.full(60, 160.0)])
    result = surge_headroom(rates, STEP, LEAD, 0.99, WINDOW, TREND)
    assert result is not None
    # 80 rps rise, less the noise allowance at the quantile (a few rps at 80 rps)
    assert 65.0 < result.rps <= 80.0
    assert result.largest_rps == pytest.approx(result.rps, rel=0.2)
    assert "surge headroom" in result.describe()


def test_headroom_is_additive_in_rps_not_scaled_by_the_level() -> None:
    low = _headroom(np.concatenate([np.full(60, 80.0), np.full(60, 160.0)]), scv=0.0)
    high = _headroom(np.concatenate([np.full(60, 800.0), np.full(60, 880.0)]), scv=0.0)
    assert low == pytest.approx(80.0) and high == pytest.approx(80.0)


def test_the_quantile_decides_whether_a_rare_jump_counts() -> None:
    # One jump in an hour: ~15 of ~340 lead times saw it (4%). P99 keeps headroom for it, P90 does not.
    rates = np.concatenate([np.full(200, 100.0), np.full(160, 200.0)])
    assert _headroom(rates, quantile=0.99, scv=0.0) == pytest.approx(100.0)
    assert _headroom(rates, quantile=0.9, scv=0.0) == 0.0


def test_falls_are_not_surges() -> None:
    rates = np.concatenate([np.full(60, 200.0), np.full(60, 100.0)])
    assert _headroom(rates, scv=0.0) == 0.0


def test_a_surge_soon_after_the_last_counts_its_whole_rise() -> None:
    # Surges of 200 rps over a 100 rps base, each starting 40 s after the last ended: within a metrics
    # window, so the window mean still reads 150-180 rps when the next one starts, but the planner read
    # the base at once (a level change) and met the whole 100 rps rise.
    surges = np.concatenate([np.full(4, 100.0), np.full(20, 200.0)])
    rates = np.concatenate([np.full(20, 200.0), *([surges] * 3), np.full(20, 100.0)])
    assert _headroom(rates, scv=0.0) == pytest.approx(100.0)
    # And on a noisy load (Poisson buckets) the same rise, less the noise allowance.
    noisy = np.random.default_rng(1).poisson(rates * STEP) / STEP
    assert 80.0 < _headroom(noisy) <= 110.0


def test_gaps_are_skipped_and_too_little_history_gives_none() -> None:
    assert surge_headroom(np.full(10, 100.0), STEP, LEAD, 0.99, WINDOW, TREND) is None
    rates = np.concatenate([np.full(60, 80.0), np.full(60, 160.0)])
    rates[5:9] = np.nan  # a Prometheus gap well before the step
    assert _headroom(rates, scv=0.0) == pytest.approx(80.0)
    assert surge_headroom(np.full(100, np.nan), STEP, LEAD, 0.99, WINDOW, TREND) is None


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        surge_headroom(np.full(100, 1.0), STEP, LEAD, 1.0, WINDOW, TREND)


def test_the_tick_uses_the_provisioning_quantile_and_the_forecast_history() -> None:
    spec = make_spec(forecast={"model": "naive", "historySeconds": 600})
    assert surge_quantile(spec) == pytest.approx(0.99)  # P90 objectives, 99% attainment target
    lenient = make_spec(slo={"attainmentTarget": 0.8, "percentile": 90})
    assert surge_quantile(lenient) == pytest.approx(0.9)
    # A step 20 minutes ago: outside a 10-minute forecast history, inside a 30-minute one.
    rates = np.concatenate([np.full(60, 80.0), np.full(120, 160.0)])
    history = LoadHistory(np.arange(len(rates)) * FORECAST_STEP_SECONDS, rates)
    forecaster = make_forecaster(spec)
    short = load_surge(spec, make_obs(rate=160.0), history, forecaster, LEAD)
    assert short is not None and short.rps == 0.0
    longer = spec.model_copy(
        update={"forecast": spec.forecast.model_copy(update={"history_seconds": 1800.0})}
    )
    remembered = load_surge(longer, make_obs(rate=160.0), history, forecaster, LEAD)
    assert remembered is not None and remembered.rps > 60.0
    # `forecast.model: none` sizes for the observed load only
    assert load_surge(longer, make_obs(rate=160.0), history, None, LEAD) is None


def test_the_planner_adds_the_headroom_to_the_observed_rate() -> None:
    spec = make_spec()
    obs = make_obs(rate=100.0, prefill=4, decode=4)
    # a 100 rps surge over a 100 rps base, over again: the base it fell back to is served with room for it
    rates = np.concatenate([np.full(60, 100.0), np.full(60, 200.0), np.full(60, 100.0)])
    surge = surge_headroom(rates, STEP, LEAD, 0.99, WINDOW, TREND, 0.0)
    assert surge is not None and surge.rps == pytest.approx(100.0)
    plain = plan(spec, obs, None, PlannerState(), T0)
    guarded = plan(spec, obs, None, PlannerState(), T0, surge)
    assert plain.capacity is not None and guarded.capacity is not None
    assert guarded.capacity.load_rps == pytest.approx(200.0)
    assert guarded.raw_prefill > plain.raw_prefill
    assert any("surge headroom" in r for r in guarded.reasons)
    # not stacked on the trend extrapolation: while a rise is under way, that already overshoots
    rising = make_obs(rate=100.0, prefill=4, decode=4, arrival_rate_trend_rps_per_s=1.0)
    steep = plan(spec, rising, None, PlannerState(), T0, surge)
    assert steep.capacity is not None
    assert steep.capacity.load_rps == pytest.approx(100.0 + 1.0 * lead_time_seconds(spec, rising))
    # no arrivals: nothing to add headroom to (the idle path sizes for no load)
    idle = plan(spec, make_obs(rate=0.0, isl=None, osl=None), None, PlannerState(), T0, surge)
    assert idle.capacity is not None and idle.capacity.load_rps == 0.0


def test_the_headroom_stops_at_the_historys_peak() -> None:
    """Every rise in the history ended at or below its peak: a load at that peak is not provisioned for
    a surge on top of it (on the simulated bursts trace a 2x surge's 240 rps had been provisioned as
    360 rps for as long as it lasted), one below it up to the peak, and the reason says so."""
    spec = make_spec()
    rates = np.concatenate([np.full(60, 100.0), np.full(60, 200.0), np.full(60, 100.0)])
    surge = surge_headroom(rates, STEP, LEAD, 0.99, WINDOW, TREND, 0.0)
    assert surge is not None and surge.peak_rps == pytest.approx(200.0)
    loads = {}
    for rate in (100.0, 150.0, 200.0, 260.0):
        decision = plan(spec, make_obs(rate=rate, prefill=4, decode=4), None, PlannerState(), T0, surge)
        assert decision.capacity is not None
        loads[rate] = decision.capacity.load_rps
        if rate > 100.0:
            assert any("up to the history's peak of 200.00 rps" in r for r in decision.reasons), rate
    assert loads == pytest.approx({100.0: 200.0, 150.0: 200.0, 200.0: 200.0, 260.0: 260.0})


@given(headroom=st.floats(0.0, 1e4), peak=st.floats(0.0, 1e4), observed=st.floats(0.0, 2e4))
def test_the_headroom_never_lifts_the_load_past_the_peak_nor_lowers_it(
    headroom: float, peak: float, observed: float
) -> None:
    surge = SurgeHeadroom(
        rps=headroom, quantile=0.99, samples=10, largest_rps=headroom, lead_seconds=150.0, peak_rps=peak
    )
    extra = surge.above(observed)
    assert 0.0 <= extra <= headroom
    assert observed + extra <= max(observed, peak) + 1e-9
    if observed + headroom <= peak:
        assert extra == pytest.approx(headroom, abs=1e-6)  # below the peak the whole headroom counts


def test_the_trend_guard_extrapolates_only_the_rise_beyond_the_rates_noise() -> None:
    """A slope within one standard error of what a flat load shows is not a rise: 180 rps with a slope
    of 2 rps/min against a noise of 2.1 rps/min is sized as 180. A steeper one is extrapolated by what
    exceeds the noise, and the reason says how much of it counted; with the noise unknown, all of it."""
    spec = make_spec()
    lead = lead_time_seconds(spec)

    def load(slope: float, noise: float | None) -> float:
        obs = make_obs(
            rate=180.0,
            prefill=8,
            decode=5,
            arrival_rate_trend_rps_per_s=slope,
            arrival_rate_trend_noise_rps_per_s=noise,
        )
        decision = plan(spec, obs, None, PlannerState(), T0)
        assert decision.capacity is not None
        if decision.capacity.load_rps > 180.0:
            assert "rising" in decision.reasons[0] and "beyond the rate's noise" in decision.reasons[0]
        return decision.capacity.load_rps

    assert load(2.0 / 60, 2.1 / 60) == pytest.approx(180.0)
    assert load(6.0 / 60, 2.0 / 60) == pytest.approx(180.0 + 4.0 / 60 * lead)
    assert load(6.0 / 60, None) == pytest.approx(180.0 + 6.0 / 60 * lead)


def test_a_young_series_trend_is_extrapolated_no_further_than_its_data() -> None:
    """A model that just started has its trend fitted over the minute of data it has: that line is
    extrapolated over at most that minute, not the whole lead time (on the code trace a flat start's
    7 rps/min beyond its noise, over a 150 s lead, had ordered two prefill replicas too many), and the
    reason says so. A full trend window's line still counts over the whole lead time."""
    spec = make_spec()
    lead = lead_time_seconds(spec)
    assert lead > 60.0

    def decide(span_s: float | None) -> tuple[float, str]:
        obs = make_obs(
            rate=180.0,
            prefill=8,
            decode=5,
            arrival_rate_trend_rps_per_s=9.0 / 60,
            arrival_rate_trend_noise_rps_per_s=2.0 / 60,
            arrival_rate_trend_span_seconds=span_s,
        )
        decision = plan(spec, obs, None, PlannerState(), T0)
        assert decision.capacity is not None
        return decision.capacity.load_rps, decision.reasons[0]

    young, why = decide(60.0)
    assert young == pytest.approx(180.0 + 7.0 / 60 * 60.0)
    assert f"extrapolated over the {lead:g}s lead time (over 60s: a line fitted over the 60s" in why
    whole, why = decide(None)
    assert whole == pytest.approx(180.0 + 7.0 / 60 * lead)
    assert "(over" not in why
    # a young series longer than the lead time is extrapolated over the whole lead time
    assert decide(2 * lead)[0] == pytest.approx(whole)


def test_the_forecasts_upper_quantile_stops_at_the_historys_peak() -> None:
    """A load that switches between 100 and 180 rps every 5 minutes: the naive forecaster's upper quantile
    carries the switches it cannot fit (180 + 80). The planner provisions up to the history's peak from
    it, never above (the surge headroom is its allowance for jumps), and says so."""
    spec = make_spec(forecast={"model": "naive", "historySeconds": 3600})
    forecaster = make_forecaster(spec)
    assert forecaster is not None
    rates = np.tile(np.concatenate([np.full(30, 100.0), np.full(30, 180.0)]), 4)
    history = LoadHistory(np.arange(len(rates)) * FORECAST_STEP_SECONDS, rates)
    now_s = float(history.timestamps_s[-1])
    forecast, problem = forecast_load(spec, history, forecaster, LEAD, now_s)
    assert problem is None and forecast is not None
    assert forecast.arrival_rate_rps_upper_uncapped is not None
    assert forecast.arrival_rate_rps_upper_uncapped > 200.0  # the forecaster's own P90
    assert forecast.arrival_rate_rps_upper == pytest.approx(180.0)  # the highest 60 s mean seen
    decision = plan(spec, make_obs(rate=170.0, prefill=8, decode=8), forecast, PlannerState(), T0)
    assert decision.capacity is not None and decision.capacity.load_rps == pytest.approx(180.0)
    assert any("capped at the history's peak" in r for r in decision.reasons)


def test_a_point_forecast_above_the_historys_peak_is_kept() -> None:
    """A steady rise: the point forecast is above every rate seen so far, and the cap never takes the upper
    quantile below it (a rise to a new high is the forecast's to announce)."""
    spec = make_spec(forecast={"model": "holt-winters", "historySeconds": 3600})
    forecaster = make_forecaster(spec)
    assert forecaster is not None
    rates = 50.0 + np.arange(240) * 0.5  # +3 rps a minute, 50 -> 170 rps
    history = LoadHistory(np.arange(len(rates)) * FORECAST_STEP_SECONDS, rates)
    forecast, problem = forecast_load(spec, history, forecaster, LEAD, float(history.timestamps_s[-1]))
    assert problem is None and forecast is not None
    assert forecast.arrival_rate_rps_mean > float(rates.max())
    assert forecast.arrival_rate_rps_upper >= forecast.arrival_rate_rps_mean
