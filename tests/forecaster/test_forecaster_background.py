"""Background refits (the operator's setting): a call never waits for a fit once there is one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_forecaster.errors import ForecastError, ForecastPendingError
from dopd_forecaster.forecaster import SeriesForecaster

STEP_S = 10.0


def _series(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.arange(n, dtype=np.float64) * STEP_S, 8 + np.sin(np.arange(n) / 9.0) + rng.normal(0, 0.3, n)


def test_first_call_requests_the_fit_and_the_next_call_forecasts_from_it() -> None:
    stamps, values = _series(100)
    forecaster = SeriesForecaster(model="ewma", background_refits=True)
    with pytest.raises(ForecastPendingError, match="first fit on 60 points is running in the background"):
        forecaster.forecast(stamps[:60], values[:60], horizon_s=60.0)
    assert forecaster.refit_requested and forecaster.stats.refits == 0
    assert forecaster.run_requested_refit()
    assert not forecaster.refit_requested and forecaster.stats.refits == 1
    forecast = forecaster.forecast(stamps[:61], values[:61], horizon_s=60.0)
    assert forecast.reason.endswith("updated with 1 point(s)")
    assert forecast.fitted_at_s == 590.0  # the request's time, not the call's
    assert not forecaster.run_requested_refit()  # nothing asked: nothing done


def test_a_due_refit_is_answered_from_the_current_fit_then_installed() -> None:
    stamps, values = _series(200)
    forecaster = SeriesForecaster(model="ewma", refit_every_s=300.0, background_refits=True)
    with pytest.raises(ForecastPendingError):
        forecaster.forecast(stamps[:60], values[:60], horizon_s=60.0)
    forecaster.run_requested_refit()
    # 40 steps = 400 s after the fit: due, yet this call updates the current fit and returns at once
    due = forecaster.forecast(stamps[:100], values[:100], horizon_s=60.0)
    assert forecaster.stats.refits == 1
    assert due.fitted_at_s == 590.0
    assert due.reason.endswith("updated with 40 point(s); refit requested")
    assert forecaster.refit_requested
    assert forecaster.run_requested_refit()
    after = forecaster.forecast(stamps[:101], values[:101], horizon_s=60.0)
    assert forecaster.stats.refits == 2
    assert after.fitted_at_s == 990.0
    assert after.reason.endswith("updated with 1 point(s)")


def test_the_synchronous_forecaster_is_unchanged_by_the_option() -> None:
    """Same inputs, same answers, once both have fitted on the same history (the simulator's results
    depend on it)."""
    stamps, values = _series(200, seed=3)
    inline = SeriesForecaster(model="arima", refit_every_s=300.0, fit_timeout_s=120.0)
    background = SeriesForecaster(
        model="arima", refit_every_s=300.0, fit_timeout_s=120.0, background_refits=True
    )
    with pytest.raises(ForecastPendingError):
        background.forecast(stamps[:80], values[:80], horizon_s=60.0)
    background.run_requested_refit()
    for n in range(80, 110):
        a = inline.forecast(stamps[:n], values[:n], horizon_s=60.0)
        b = background.forecast(stamps[:n], values[:n], horizon_s=60.0)
        assert (a.mean, a.upper) == pytest.approx((b.mean, b.upper), rel=1e-9)


class _ParkedRefit:
    """Runs `run_requested_refit` in a thread and holds it inside the fit until `release`."""

    def __init__(self, forecaster: SeriesForecaster) -> None:
        self.started, self.go = threading.Event(), threading.Event()
        self.installed: list[bool] = []
        original = forecaster._refit

        def slow_refit(*args: object) -> object:
            if threading.current_thread() is self.thread:  # an inline refit of the caller's runs through
                self.started.set()
                assert self.go.wait(10.0)
            return original(*args)  # type: ignore[arg-type]

        forecaster._refit = slow_refit  # type: ignore[method-assign]
        self.thread = threading.Thread(target=lambda: self.installed.append(forecaster.run_requested_refit()))
        self.thread.start()
        assert self.started.wait(10.0)

    def release(self) -> bool:
        self.go.set()
        self.thread.join(10.0)
        return self.installed[0]


def _fitted_and_due(refit_every_s: float) -> tuple[SeriesForecaster, np.ndarray, np.ndarray]:
    """A forecaster fitted at 1490 s on 150 points, with a refit requested at 1690 s."""
    stamps, values = _series(300)
    forecaster = SeriesForecaster(model="ewma", refit_every_s=refit_every_s, background_refits=True)
    with pytest.raises(ForecastPendingError):
        forecaster.forecast(stamps[:150], values[:150], horizon_s=60.0)
    forecaster.run_requested_refit()
    forecaster.forecast(stamps[:170], values[:170], horizon_s=60.0)
    assert forecaster.refit_requested
    return forecaster, stamps, values


def test_calls_do_not_wait_for_a_running_background_refit() -> None:
    forecaster, stamps, values = _fitted_and_due(refit_every_s=100.0)
    parked = _ParkedRefit(forecaster)
    # the refit is held mid-way: forecast calls still answer from the current fit, at once
    for n in range(171, 176):
        assert forecaster.forecast(stamps[:n], values[:n], horizon_s=60.0).fitted_at_s == 1490.0
    assert parked.release()
    assert forecaster.forecast(stamps[:176], values[:176], horizon_s=60.0).fitted_at_s == 1690.0


def test_a_newer_inline_fit_is_not_replaced_by_an_older_background_one() -> None:
    forecaster, stamps, values = _fitted_and_due(refit_every_s=100.0)
    parked = _ParkedRefit(forecaster)
    # a clock that went back cannot be absorbed: this call refits inline and installs that fit
    restarted = forecaster.forecast(stamps[:100] - 5000.0, values[:100], horizon_s=60.0, now_s=5000.0)
    assert restarted.reason.endswith("refitted") and restarted.fitted_at_s == 5000.0
    assert not parked.release()  # the background fit, made from older data, was thrown away
    kept = forecaster.forecast(stamps[:101] - 5000.0, values[:101], horizon_s=60.0, now_s=5010.0)
    assert kept.fitted_at_s == 5000.0


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 30), st.booleans(), st.sampled_from([60.0, 150.0])), max_size=12)
)
def test_any_call_and_refit_order_gives_a_forecast_or_a_forecast_error(
    steps: list[tuple[int, bool, float]],
) -> None:
    """Random interleavings of calls (advancing history, changing horizon) and background refits:
    every call returns a finite forecast with upper >= mean >= 0, or raises ForecastError."""
    stamps, values = _series(600, seed=7)
    forecaster = SeriesForecaster(model="auto", refit_every_s=120.0, background_refits=True)
    n = 40
    for advance, refit, horizon_s in steps:
        n = min(n + advance, 600)
        try:
            forecast = forecaster.forecast(stamps[:n], values[:n], horizon_s=horizon_s)
        except ForecastError:
            pass
        else:
            assert np.isfinite(forecast.mean) and forecast.upper >= forecast.mean >= 0.0
        if refit:
            forecaster.run_requested_refit()
