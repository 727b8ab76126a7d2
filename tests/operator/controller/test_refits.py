"""The operator's ticks never wait for a forecast fit: the first fit and every due refit run in the one
refit worker beside the ticks, and the tick after it forecasts from the new fit."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from dopd_builders import make_obs, make_spec
from dopd_forecaster.forecaster import SeriesForecaster
from dopd_operator.controller.loop import ModelRef, Runtime, refit_spread
from dopd_operator.controller.observability import Telemetry
from dopd_operator.planner_types import PlannerState
from dopd_operator.tick import FORECAST_STEP_SECONDS, LoadHistory, run_tick
from dopd_sim.policies.dopd import EPOCH

REF = ModelRef("ns", "llama", "uid-1")


def _runtime() -> Runtime:
    # writer and metrics are not used by the refit path
    return Runtime(writer=None, metrics=None, telemetry=Telemetry(CollectorRegistry()))  # type: ignore[arg-type]


def _history(now_s: float) -> LoadHistory:
    stamps = np.arange(0.0, now_s, FORECAST_STEP_SECONDS)
    rng = np.random.default_rng(0)
    return LoadHistory(stamps + EPOCH.timestamp(), 20.0 + rng.normal(0.0, 1.0, len(stamps)))


def _sample(runtime: Runtime, name: str) -> float:
    value = runtime.telemetry.registry.get_sample_value(name)
    assert value is not None, name
    return value


def _tick(runtime: Runtime, forecaster: SeriesForecaster, now_s: float) -> Any:
    spec = make_spec(forecast={"model": "ewma"})
    result = run_tick(
        spec, make_obs(rate=20), _history(now_s), forecaster, PlannerState(), EPOCH + timedelta(seconds=now_s)
    )
    runtime.refit_later(REF, forecaster)
    return result


def _drain(runtime: Runtime) -> None:
    runtime.refit_pool.submit(lambda: None).result(timeout=60)  # one worker: everything before it ran


def test_the_first_tick_plans_for_observed_load_and_the_next_forecasts_from_the_background_fit() -> None:
    runtime = _runtime()
    forecaster = runtime.forecaster_for(REF.uid, make_spec(forecast={"model": "ewma"}))
    assert forecaster is not None and forecaster.background_refits
    first = _tick(runtime, forecaster, 900.0)
    assert first.forecast is None
    assert first.forecast_problem.endswith("first fit on 90 points is running in the background")
    assert "; no forecast (first fit on 90 points is running in the background)" in first.decision.reasons[0]
    _drain(runtime)
    second = _tick(runtime, forecaster, 915.0)
    assert second.forecast is not None and second.forecast.model == "ewma"
    assert _sample(runtime, "dopd_operator_forecast_refit_seconds_count") == 1.0
    assert _sample(runtime, "dopd_operator_forecast_refits_waiting") == 0.0


def test_one_refit_per_model_is_queued_however_many_ticks_ask() -> None:
    runtime = _runtime()
    blocker = threading.Event()
    runtime.refit_pool.submit(blocker.wait, 30)  # hold the worker: requests queue up behind it
    forecaster = runtime.forecaster_for(REF.uid, make_spec(forecast={"model": "ewma"}))
    assert forecaster is not None
    for now_s in (900.0, 915.0, 930.0):
        assert _tick(runtime, forecaster, now_s).forecast is None
    assert _sample(runtime, "dopd_operator_forecast_refits_waiting") == 1.0
    blocker.set()
    _drain(runtime)
    assert _sample(runtime, "dopd_operator_forecast_refit_seconds_count") == 1.0
    assert _tick(runtime, forecaster, 945.0).forecast is not None


def test_a_failed_refit_is_counted_and_logged_and_the_ticks_go_on(caplog: Any) -> None:
    runtime = _runtime()
    forecaster = runtime.forecaster_for(REF.uid, make_spec(forecast={"model": "ewma"}))
    assert forecaster is not None

    def broken(*_: object) -> object:
        raise RuntimeError("statsmodels blew up")

    forecaster._refit = broken  # type: ignore[method-assign]
    assert _tick(runtime, forecaster, 900.0).forecast is None
    _drain(runtime)
    errors = {"kind": "RuntimeError"}
    assert runtime.telemetry.registry.get_sample_value("dopd_operator_errors_total", errors) == 1.0
    assert "forecast refit failed: statsmodels blew up" in caplog.text
    # the next tick asks again (and the planner keeps sizing for the observed load meanwhile)
    assert _tick(runtime, forecaster, 915.0).forecast is None
    _drain(runtime)
    assert runtime.telemetry.registry.get_sample_value("dopd_operator_errors_total", errors) == 2.0


def test_shutdown_drops_queued_refits() -> None:
    runtime = _runtime()
    blocker = threading.Event()
    runtime.refit_pool.submit(blocker.wait, 30)
    forecaster = runtime.forecaster_for(REF.uid, make_spec(forecast={"model": "ewma"}))
    assert forecaster is not None
    _tick(runtime, forecaster, 900.0)
    runtime.refit_pool.shutdown(wait=False, cancel_futures=True)  # what the Kopf cleanup handler does
    blocker.set()
    assert _sample(runtime, "dopd_operator_forecast_refits_waiting") == 0.0
    assert _sample(runtime, "dopd_operator_forecast_refit_seconds_count") == 0.0


def test_models_started_together_refit_on_spread_periods() -> None:
    """Each model's refit period is fixed by its uid within 10% of the ten minutes, so a batch of models
    applied at once drifts apart instead of refitting in lockstep forever."""
    runtime = _runtime()
    periods = []
    for i in range(200):
        forecaster = runtime.forecaster_for(f"uid-{i}", make_spec(forecast={"model": "auto"}))
        assert forecaster is not None
        periods.append(forecaster.refit_every_s)
        assert forecaster.repick_every_s == 3 * forecaster.refit_every_s
    assert all(540.0 <= p < 660.0 for p in periods)
    assert len(set(periods)) == 200
    assert np.std(periods) > 25.0  # spread over the range, not bunched (uniform: about 35 s)
    assert refit_spread("uid-7") == refit_spread("uid-7")  # the same model keeps its period
