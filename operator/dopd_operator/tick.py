"""One control tick, shared by the operator's Kopf loop and the simulator's dopd policy.

    (spec, observation, load history, forecaster, planner state, now) -> TickResult(decision, forecast, ...)

The tick is the only place that knows how far ahead to forecast (`planner.lead_time_seconds`), how
much history to fit on (`spec.forecast.historySeconds`), how the forecaster's `Forecast` becomes the
planner's `LoadForecast`, and how much surge headroom that history calls for (`surge.py`). It reads
no clock and does no I/O: the operator gives it the arrival-rate history of a Prometheus range query
and wall-clock `now`; the simulator gives it the same history bucketed from its own counters and
simulated `now`. The forecaster may block for a fit (statsmodels), so the operator calls `run_tick`
off its event loop, and asks for background refits: then only a break in the data (a gap longer than
the history, points the model rejects) is fitted inside a tick, and a model with nothing fitted yet is
planned for its observed load until its first fit lands.

A forecast that cannot be made (too little history, a timeout) is not an error of the tick: the
planner sizes for the observed load and the reason is carried in `TickResult.forecast_problem`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt

from dopd_forecaster.errors import ForecastError as ForecasterError
from dopd_forecaster.forecaster import DEFAULT_REFIT_EVERY_S, Forecast, SeriesForecaster
from dopd_operator.api import DisaggregatedModelSpec, ForecastModelName
from dopd_operator.metrics.estimators import TREND_WINDOW_SECONDS
from dopd_operator.planner import plan
from dopd_operator.planner_load import lead_time_seconds
from dopd_operator.planner_types import Decision, LoadForecast, Observation, PlannerState
from dopd_operator.surge import SurgeHeadroom, history_peak_rps, surge_headroom

FloatArray = npt.NDArray[np.float64]

# Width of one arrival-rate bucket of the forecast history, in seconds: the step of the operator's
# Prometheus range query and of the simulator's bucketed counters.
FORECAST_STEP_SECONDS = 10.0
# Per-fit time limit: the operator's default keeps a tick responsive; the simulator passes a generous
# one, since a wall-clock limit hit on a busy machine would make a run non-deterministic.
OPERATOR_FIT_TIMEOUT_SECONDS = 2.0
# How often a forecaster refits (auto re-selects every three refits): the forecaster's own default.
REFIT_EVERY_SECONDS = DEFAULT_REFIT_EVERY_S
# With fewer than 10,000 past moments (a week of 10 s buckets is 60,480), this is their largest rise.
SURGE_QUANTILE_MAX = 0.9999


class Forecaster(Protocol):
    """What the tick needs of a forecaster (`dopd_forecaster.forecaster.SeriesForecaster`)."""

    def forecast(
        self, timestamps_s: FloatArray, values: FloatArray, horizon_s: float, now_s: float | None = None
    ) -> Forecast: ...


@dataclass(frozen=True)
class LoadHistory:
    """Arrival rate per bucket (requests per second), bucket start times in POSIX seconds, oldest first.

    NaN marks a bucket with no data (a Prometheus gap); the forecaster regularizes them.
    """

    timestamps_s: FloatArray
    arrival_rate_rps: FloatArray

    def __post_init__(self) -> None:
        if self.timestamps_s.shape != self.arrival_rate_rps.shape:
            raise ValueError(
                f"history has {len(self.timestamps_s)} timestamps but {len(self.arrival_rate_rps)} values"
            )

    @classmethod
    def empty(cls) -> LoadHistory:
        return cls(np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64))

    def last(self, seconds: float, step_s: float) -> LoadHistory:
        """The most recent `seconds` of history."""
        keep = max(int(seconds // step_s), 1)
        return LoadHistory(self.timestamps_s[-keep:], self.arrival_rate_rps[-keep:])


@dataclass(frozen=True)
class TickResult:
    """What one tick concluded: the planner's decision and the forecast it was given."""

    decision: Decision
    forecast: LoadForecast | None
    forecast_problem: str | None  # why there is no forecast, for status and Events; None when there is
    lead_time_seconds: float
    surge: SurgeHeadroom | None = None  # the headroom for unforeseen rises the planner was given


def make_forecaster(
    spec: DisaggregatedModelSpec,
    step_s: float = FORECAST_STEP_SECONDS,
    fit_timeout_s: float = OPERATOR_FIT_TIMEOUT_SECONDS,
    background_refits: bool = False,
    refit_every_s: float = REFIT_EVERY_SECONDS,
) -> SeriesForecaster | None:
    """The forecaster a spec asks for; None for `forecast.model: none` (size for the observed load).

    The operator asks for background refits (its ticks never wait for a fit, see `SeriesForecaster`);
    the simulator does not (its results must not depend on thread timing)."""
    if spec.forecast.model == ForecastModelName.NONE:
        return None
    season = spec.forecast.season_seconds
    return SeriesForecaster(
        model=str(spec.forecast.model),
        quantile=spec.forecast.quantile,
        step_s=step_s,
        season_steps=max(round(season / step_s), 2) if season else None,
        fit_timeout_s=fit_timeout_s,
        background_refits=background_refits,
        refit_every_s=refit_every_s,
    )


def forecast_load(
    spec: DisaggregatedModelSpec,
    history: LoadHistory,
    forecaster: Forecaster | None,
    horizon_s: float,
    now_s: float,
    step_s: float = FORECAST_STEP_SECONDS,
) -> tuple[LoadForecast | None, str | None]:
    """The arrival-rate forecast at `horizon_s` after now, or None and the reason there is none."""
    if forecaster is None:
        return None, "forecast.model is none: sizing for the observed load"
    recent = history.last(spec.forecast.history_seconds, step_s)
    if len(recent.arrival_rate_rps) == 0:
        return None, "no arrival-rate history yet"
    try:
        result = forecaster.forecast(recent.timestamps_s, recent.arrival_rate_rps, horizon_s, now_s=now_s)
    except ForecasterError as exc:
        return None, f"no forecast: {exc}"
    mean = float(result.mean)
    upper = float(result.upper)
    if not (math.isfinite(mean) and math.isfinite(upper)):
        return None, f"no forecast: {result.model} returned a non-finite value ({mean}, {upper})"
    # Above the highest rate the history has seen, only the point forecast provisions: the upper
    # quantile of a 10 s bucket widens with the jumps the model could not fit (the surge headroom is the
    # planner's allowance for those) and with the bucket's own noise (the capacity model queues for the
    # observed burstiness); a rise to a new high is the point forecast's and the trend guard's.
    peak = history_peak_rps(recent.arrival_rate_rps, step_s, spec.metrics.window_seconds)
    capped = upper if peak is None else max(min(upper, peak), mean)
    return (
        LoadForecast(
            model=str(result.model),
            horizon_seconds=float(result.horizon_s),
            quantile=float(result.quantile),
            arrival_rate_rps_mean=max(mean, 0.0),
            arrival_rate_rps_upper=max(capped, mean, 0.0),
            arrival_rate_rps_upper_uncapped=max(upper, mean, 0.0) if capped < upper else None,
        ),
        None,
    )


def surge_quantile(spec: DisaggregatedModelSpec) -> float:
    """The quantile of past rises to keep headroom for: the capacity model's provisioning quantile (the
    higher of the SLO percentile and the attainment target). A lead time whose rise the headroom does
    not cover is served by too few replicas, and nearly every request of it misses while the queue
    stands, so the share of such lead times bounds the attainment: to reach the target, at most
    1 - target of them may go uncovered. (A target of 1 takes the largest rise: `SURGE_QUANTILE_MAX`.)"""
    return min(max(spec.slo.percentile / 100.0, spec.slo.attainment_target), SURGE_QUANTILE_MAX)


def load_surge(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    history: LoadHistory,
    forecaster: Forecaster | None,
    lead_s: float,
    step_s: float = FORECAST_STEP_SECONDS,
) -> SurgeHeadroom | None:
    """The headroom for rises no predictor saw coming, from the history the forecaster is fitted on
    (`surge.py`), with the observed burstiness for the noise it discounts; None with
    `forecast.model: none`, which sizes for the observed load only."""
    if forecaster is None:
        return None
    recent = history.last(spec.forecast.history_seconds, step_s)
    return surge_headroom(
        recent.arrival_rate_rps,
        step_s,
        lead_s,
        surge_quantile(spec),
        spec.metrics.window_seconds,
        TREND_WINDOW_SECONDS,
        observation.arrival_scv if observation.arrival_scv is not None else 1.0,
    )


def run_tick(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    history: LoadHistory,
    forecaster: Forecaster | None,
    state: PlannerState,
    now: datetime,
    step_s: float = FORECAST_STEP_SECONDS,
) -> TickResult:
    """Forecast at the lead time and measure the surge headroom, then plan. Pure apart from the
    forecaster's own fitted state."""
    lead_s = lead_time_seconds(spec, observation)
    forecast, problem = forecast_load(spec, history, forecaster, lead_s, now.timestamp(), step_s)
    surge = load_surge(spec, observation, history, forecaster, lead_s, step_s)
    why = problem.removeprefix("no forecast: ") if problem is not None else None
    decision = plan(spec, observation, forecast, state, now, surge, no_forecast_why=why)
    return TickResult(
        decision=decision,
        forecast=forecast,
        forecast_problem=problem,
        lead_time_seconds=lead_s,
        surge=surge,
    )
