"""The forecasting models behind one small interface, and the registry `SeriesForecaster` picks from.

A model is fitted once on a history (`ModelSpec.fit`), then kept up to date cheaply between refits
(`FittedModel.update`, parameters fixed). That split is what makes one forecaster per DisaggregatedModel
per interval affordable: a refit costs milliseconds to tens of milliseconds, an update microseconds to
about a millisecond. `walk_forward` is the backtest primitive: it advances the model through new values
and returns the forecast it would have made at each origin, so a backtest costs one fit, not one fit
per origin.

This module holds the interface and the baselines (naive, seasonal naive, EWMA); the statsmodels models
(Holt-Winters, ARIMA) live in `statsmodels_models` and register themselves into `MODELS` on import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

FloatArray = npt.NDArray[np.float64]


class FitFailed(Exception):
    """A model cannot be fitted on this history; `reason` is recorded in the forecast, never raised out."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FitTimeout(FitFailed):
    """The fit ran past its deadline (checked from the optimizer's callback, so a thread can stop it)."""


@dataclass
class FitContext:
    """What a fit may know besides the values: the season (if any) and a wall-clock deadline."""

    season_steps: int | None
    deadline_monotonic_s: float = float("inf")
    # The forecast horizon in steps: models that choose a parameter by error choose it at this horizon.
    steps: int = 1
    # The same model's previous fit, offered for a warm start on a scheduled refit; None to re-select.
    previous: FittedModel | None = None

    def check_deadline(self, *_: Any) -> None:
        """Raise `FitTimeout` when past the deadline; usable as a scipy optimizer callback."""
        if time.perf_counter() > self.deadline_monotonic_s:
            raise FitTimeout("fit ran past its time limit")


class FittedModel(Protocol):
    """A fitted model holding its state at the end of the data it has seen."""

    @property
    def detail(self) -> str:
        """The fitted form, for reasons and reports, e.g. "ARIMA(1,1,1)"."""
        ...

    def forecast(self, steps: int) -> float:
        """Point forecast `steps` ahead of the last value seen (steps >= 1)."""
        ...

    def interval_upper_offset(self, steps: int, quantile: float) -> float | None:
        """Upper `quantile` minus the point forecast, from the model's own prediction interval; None when
        the model has none (the forecaster then uses its recent horizon errors)."""
        ...

    def update(self, values: FloatArray) -> None:
        """Absorb new values with the fitted parameters fixed."""
        ...

    def walk_forward(self, values: FloatArray, steps: int) -> FloatArray:
        """Absorb `values`; return the `steps`-ahead forecast made at each origin i (having seen
        values[:i]) for values[i + steps - 1], i = 0 .. len(values) - steps."""
        ...


def walk_forward_by_updates(model: FittedModel, values: FloatArray, steps: int) -> FloatArray:
    """`walk_forward` for models whose update is cheap: forecast, absorb one value, repeat."""
    n = len(values)
    forecasts = np.empty(max(n - steps + 1, 0))
    for i in range(n + 1):
        if i <= n - steps:
            forecasts[i] = model.forecast(steps)
        if i < n:
            model.update(values[i : i + 1])
    return forecasts


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to fit it and the shortest history it can be fitted on."""

    name: str
    fit: Callable[[FloatArray, FitContext], FittedModel]
    min_points: Callable[[int | None], int]
    needs_season: bool = False


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry where it is defined."""
    MODELS[spec.name] = spec
    return spec


# ---------------------------------------------------------------------------------------------------------
# Baselines. Cheap enough to run on every tick; naive is also the fallback when everything else fails.


@dataclass
class NaiveModel:
    """Tomorrow looks like now: the last value. Hard to beat on a random walk, which is why it stays."""

    last_value: float
    detail: str = "naive"

    def forecast(self, steps: int) -> float:
        return self.last_value

    def interval_upper_offset(self, steps: int, quantile: float) -> float | None:
        return None

    def update(self, values: FloatArray) -> None:
        if len(values):
            self.last_value = float(values[-1])

    def walk_forward(self, values: FloatArray, steps: int) -> FloatArray:
        n = len(values)
        if n < steps:
            self.update(values)
            return np.empty(0)
        # Origin 0 has seen nothing new; origin i has seen values[i - 1].
        forecasts = np.concatenate(([self.last_value], values[: n - steps]))
        self.update(values)
        return forecasts


def _fit_naive(values: FloatArray, context: FitContext) -> FittedModel:
    return NaiveModel(float(values[-1]))


register(ModelSpec("naive", _fit_naive, min_points=lambda season: 1))


@dataclass
class SeasonalNaiveModel:
    """The value one season ago at the same phase: right for a clean repeating pattern, cheap always."""

    last_season: FloatArray  # the most recent `season_steps` values, oldest first
    detail: str = "seasonal-naive"

    def forecast(self, steps: int) -> float:
        return float(self.last_season[(steps - 1) % len(self.last_season)])

    def interval_upper_offset(self, steps: int, quantile: float) -> float | None:
        return None

    def update(self, values: FloatArray) -> None:
        season = len(self.last_season)
        self.last_season = np.concatenate((self.last_season, values))[-season:]

    def walk_forward(self, values: FloatArray, steps: int) -> FloatArray:
        season = len(self.last_season)
        history = np.concatenate((self.last_season, values))
        origins = np.arange(max(len(values) - steps + 1, 0))
        # Origin i has seen history[: season + i]; its season starts at index i.
        forecasts = history[origins + (steps - 1) % season]
        self.last_season = history[-season:]
        return forecasts


def _fit_seasonal_naive(values: FloatArray, context: FitContext) -> FittedModel:
    season = context.season_steps
    if season is None or season < 2:
        raise FitFailed("seasonal-naive needs a season; none configured or detected")
    if len(values) < season:
        raise FitFailed(f"seasonal-naive needs one season ({season} points), has {len(values)}")
    return SeasonalNaiveModel(values[-season:].copy(), detail=f"seasonal-naive(m={season})")


register(
    ModelSpec(
        "seasonal-naive",
        _fit_seasonal_naive,
        min_points=lambda season: 2 * season if season else 2,
        needs_season=True,
    )
)


EWMA_ALPHAS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)


@dataclass
class EwmaModel:
    """Exponentially weighted mean: a flat forecast that averages noise away, alpha picked by in-sample
    error at the horizon from a short grid (no optimizer, so it never fails to converge). Choosing at the
    horizon rather than one step ahead favours a larger alpha on a drifting series, where a small one lags."""

    alpha: float
    level: float
    detail: str = "ewma"

    def forecast(self, steps: int) -> float:
        return self.level

    def interval_upper_offset(self, steps: int, quantile: float) -> float | None:
        return None

    def update(self, values: FloatArray) -> None:
        for value in values.tolist():
            self.level += self.alpha * (value - self.level)

    def walk_forward(self, values: FloatArray, steps: int) -> FloatArray:
        if len(values) == 0:
            return np.empty(0)
        levels = _ewma_levels(values, self.alpha, self.level)
        # Origin i has seen values[:i]: level before any new value, then after each.
        forecasts = np.concatenate(([self.level], levels[: len(values) - steps]))
        self.level = float(levels[-1])
        return forecasts[: max(len(values) - steps + 1, 0)]


def _ewma_levels(values: FloatArray, alpha: float, initial_level: float) -> FloatArray:
    """Levels after each value; lfilter runs the recursion in C (a 360-point fit grid costs ~0.1 ms)."""
    levels, _ = lfilter([alpha], [1.0, alpha - 1.0], values, zi=[(1.0 - alpha) * initial_level])
    result: FloatArray = np.asarray(levels, dtype=np.float64)
    return result


def _fit_ewma(values: FloatArray, context: FitContext) -> FittedModel:
    steps = max(1, min(context.steps, len(values) - 1))
    best_alpha, best_sse = EWMA_ALPHAS[0], float("inf")
    for alpha in EWMA_ALPHAS:
        levels = _ewma_levels(values, alpha, float(values[0]))
        sse = float(np.sum((values[steps:] - levels[:-steps]) ** 2))
        if sse < best_sse:
            best_alpha, best_sse = alpha, sse
    level = float(_ewma_levels(values, best_alpha, float(values[0]))[-1])
    return EwmaModel(best_alpha, level, detail=f"ewma(alpha={best_alpha})")


register(ModelSpec("ewma", _fit_ewma, min_points=lambda season: 3))


@dataclass
class FitRecord:
    """What happened when one model was fitted, for reasons, counters and the benchmark."""

    model: str
    ok: bool
    reason: str = ""
    fit_ms: float = 0.0
    warnings: dict[str, int] = field(default_factory=dict)
