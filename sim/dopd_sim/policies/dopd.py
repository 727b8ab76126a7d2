"""dopd: the operator's own planner and forecaster, imported, driven in simulated time.

Each tick: the forecaster (`dopd_forecaster.forecaster.SeriesForecaster`, the spec's model and quantile)
fits the arrival-rate history up to now and predicts at the planner's lead time (startup + interval);
`dopd_operator.planner.plan` turns (spec, observation, forecast, state, now) into a Decision; the
Decision's replicas are applied and its state is carried to the next tick, exactly as the Kopf timer
does. A forecast failure (too little history) passes None, and the planner sizes for the observed load.
dopd also brings its length-aware prefill queue (the DOPD paper's scheduling), which `dopd-fifo`
leaves out so the two contributions can be told apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dopd_operator.api import ForecastModelName
from dopd_operator.planner import plan
from dopd_operator.planner_types import Decision, LoadForecast, PlannerState
from dopd_sim.config import QueuePolicy
from dopd_sim.policies.base import Architecture, Layout, TickInput

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
SIM_FIT_TIMEOUT_S = 120.0


def _make_forecaster(model: str, quantile: float, step_s: float, season_s: float | None) -> Any | None:
    try:
        from dopd_forecaster.forecaster import SeriesForecaster
    except ImportError:  # the forecaster is an optional part of a build; the planner copes without it
        return None
    season_steps = round(season_s / step_s) if season_s else None
    # A generous fit timeout: a wall-clock limit hit on a busy machine would make runs non-deterministic.
    return SeriesForecaster(
        model=model,
        quantile=quantile,
        step_s=step_s,
        season_steps=season_steps,
        fit_timeout_s=SIM_FIT_TIMEOUT_S,
    )


@dataclass
class DopdPolicy:
    name: str = "dopd"
    architecture: Architecture = "disaggregated"
    prefill_queue: QueuePolicy = "length-aware"
    state: PlannerState = field(default_factory=PlannerState)
    forecasts: int = 0
    forecast_failures: int = 0
    last_decision: Decision | None = None
    _forecaster: Any | None = None
    _forecaster_ready: bool = False

    def _forecast(self, tick: TickInput) -> LoadForecast | None:
        spec = tick.config.spec
        if spec.forecast.model is ForecastModelName.NONE:
            return None
        if not self._forecaster_ready:
            self._forecaster = _make_forecaster(
                spec.forecast.model.value,
                spec.forecast.quantile,
                tick.config.forecast_step_seconds,
                spec.forecast.season_seconds,
            )
            self._forecaster_ready = True
        if self._forecaster is None or len(tick.history_arrival_rps) == 0:
            return None
        from dopd_forecaster.errors import ForecastError

        keep = int(spec.forecast.history_seconds // tick.config.forecast_step_seconds)
        stamps, values = tick.history_timestamps_s[-keep:], tick.history_arrival_rps[-keep:]
        horizon = (
            max(spec.prefill.startup_seconds, spec.decode.startup_seconds) + tick.config.interval_seconds
        )
        try:
            result = self._forecaster.forecast(stamps, values, horizon, now_s=tick.now_s)
        except ForecastError:
            self.forecast_failures += 1
            return None
        self.forecasts += 1
        return LoadForecast(
            model=str(result.model),
            horizon_seconds=float(result.horizon_s),
            quantile=float(result.quantile),
            arrival_rate_rps_mean=max(float(result.mean), 0.0),
            arrival_rate_rps_upper=max(float(result.upper), float(result.mean), 0.0),
        )

    def decide(self, tick: TickInput) -> Layout:
        forecast = self._forecast(tick)
        now = EPOCH + timedelta(seconds=tick.now_s)
        decision = plan(tick.config.spec, tick.observation, forecast, self.state, now)
        self.state = decision.state
        self.last_decision = decision
        return Layout(prefill=decision.prefill, decode=decision.decode)
