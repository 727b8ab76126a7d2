"""Replay a series through a `SeriesForecaster` tick by tick, as the operator would call it, and score it.

Used by `dopd forecast --backtest` and the benchmark. At every origin the forecaster sees only the
newest `history_points` values (a Prometheus range query's worth), forecasts `horizon_s` ahead, and the
forecast is compared with what came. All models on a series share one MASE scale (the whole series'
h-step naive error), so their MASEs compare directly and naive's sits near 1. CPU time per call is
measured with `time.thread_time` and filed as a refit or an update by the forecaster's own counters.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from dopd_forecaster.backtest import mase, min_history_points, naive_scale, smape
from dopd_forecaster.errors import ForecastError
from dopd_forecaster.forecaster import SeriesForecaster
from dopd_forecaster.models import FloatArray


@dataclass
class Evaluation:
    """One model on one series at one horizon."""

    model: str
    series: str
    horizon_s: float
    forecasts: int = 0
    mase: float = float("nan")
    smape: float = float("nan")
    coverage: float = float("nan")
    fit_ms: list[float] = field(default_factory=list)  # every refit, re-selections included
    reselect_ms: list[float] = field(default_factory=list)  # refits that re-ran the model choice
    update_ms: list[float] = field(default_factory=list)
    picks: Counter[str] = field(default_factory=Counter)
    warnings: int = 0
    fallbacks: int = 0

    @staticmethod
    def percentile(samples: list[float], q: float) -> float:
        return float(np.percentile(samples, q)) if samples else float("nan")

    def as_row(self) -> dict[str, object]:
        """The CLI's and the report's columns."""
        return {
            "model": self.model,
            "series": self.series,
            "horizon_s": self.horizon_s,
            "forecasts": self.forecasts,
            "mase": _rounded(self.mase),
            "smape": _rounded(self.smape),
            "coverage": _rounded(self.coverage),
            "fit_ms_p50": _rounded(self.percentile(self.fit_ms, 50)),
            "fit_ms_p95": _rounded(self.percentile(self.fit_ms, 95)),
            "reselect_ms_p95": _rounded(self.percentile(self.reselect_ms, 95)),
            "update_ms_p50": _rounded(self.percentile(self.update_ms, 50)),
            "update_ms_p95": _rounded(self.percentile(self.update_ms, 95)),
            "picks": dict(self.picks.most_common()),
            "warnings": self.warnings,
        }


def _rounded(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def evaluate(
    values: FloatArray,
    step_s: float,
    horizon_s: float,
    model: str,
    series: str = "series",
    quantile: float = 0.9,
    history_points: int = 360,
    warmup_points: int | None = None,
    refit_every_s: float = 600.0,
    season_steps: int | None = None,
    max_gap_steps: int = 3,
) -> Evaluation:
    """Score `model` over every origin from `warmup_points` (default: the minimum history) on."""
    forecaster = SeriesForecaster(
        model=model,
        quantile=quantile,
        step_s=step_s,
        season_steps=season_steps,
        refit_every_s=refit_every_s,
        history_max_points=history_points,
        max_gap_steps=max_gap_steps,
    )
    steps = forecaster.horizon_steps(horizon_s)
    start = max(warmup_points or 0, min_history_points(steps))
    timestamps = np.arange(len(values), dtype=np.float64) * step_s
    result = Evaluation(model=model, series=series, horizon_s=horizon_s)
    means, uppers, actuals = [], [], []
    for origin in range(start, len(values) - steps + 1):
        # Seen: values[:origin]; target: the value `steps` after the last seen one.
        lo = max(0, origin - history_points)
        refits_before, reselections_before = forecaster.stats.refits, forecaster.stats.reselections
        started = time.thread_time()
        try:
            forecast = forecaster.forecast(timestamps[lo:origin], values[lo:origin], horizon_s)
        except ForecastError:
            continue  # history cut short by a gap in a length series; the planner would hold
        elapsed_ms = (time.thread_time() - started) * 1e3
        (result.fit_ms if forecaster.stats.refits > refits_before else result.update_ms).append(elapsed_ms)
        if forecaster.stats.reselections > reselections_before:
            result.reselect_ms.append(elapsed_ms)
        actual = values[origin + steps - 1]
        if not np.isfinite(actual):
            continue
        means.append(forecast.mean)
        uppers.append(forecast.upper)
        actuals.append(actual)
        result.picks[forecast.model] += 1
    result.forecasts = len(actuals)
    result.warnings = sum(forecaster.stats.warnings.values())
    result.fallbacks = forecaster.stats.fallbacks
    if actuals:
        mean_array, upper_array, actual_array = np.array(means), np.array(uppers), np.array(actuals)
        finite = values[np.isfinite(values)]
        result.mase = mase(actual_array - mean_array, naive_scale(finite, steps))
        result.smape = smape(mean_array, actual_array)
        result.coverage = float(np.mean(actual_array <= upper_array))
    return result
