"""Holt-Winters and ARIMA on statsmodels, behind the `FittedModel` interface of `models`.

Both are fitted by statsmodels and then carried forward with fixed parameters between refits:

- Holt-Winters: statsmodels' `ExponentialSmoothing` (additive damped trend, additive season when there is
  one) estimates the smoothing parameters; updates and forecasts then run the same recursions here, in
  O(1) per point, so an update costs microseconds. With a season the initial states come from
  statsmodels' heuristic decomposition and the brute-force start search is off: that is what keeps a
  60-step season near 6 ms instead of ~115 ms. It has no prediction interval, so its upper quantile
  comes from its recent horizon errors.
- ARIMA: `SARIMAX` over a small order grid, best AIC. Updates use `extend` (Kalman filter over the new
  points only), and `walk_forward` turns one filter pass into every origin's h-step forecast with the
  state-space matrices, instead of one `get_forecast` per origin. Its upper quantile is the Gaussian
  prediction interval while that covers its recent errors at the nominal level. Seasonal orders are left out on purpose: a 60-step seasonal ARIMA costs seconds,
  and Holt-Winters and seasonal naive cover seasonality.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final

import numpy as np

# Imported here, not inside the fits: the first import costs about a second, which would otherwise be
# charged to the first fit and trip its time limit.
from statsmodels.tsa.holtwinters import ExponentialSmoothing
from statsmodels.tsa.statespace.sarimax import SARIMAX

from dopd_forecaster.models import (
    FitContext,
    FitFailed,
    FittedModel,
    FloatArray,
    ModelSpec,
    register,
    walk_forward_by_updates,
)

# A stationary ARMA around the mean, and two integrated forms for level shifts and drifts. The stationary
# one is fitted on the demeaned series rather than with a constant parameter: the constant's scale slows
# the optimizer about threefold (30 iterations against 10 on Azure's arrival rate) for the same fit.
ARIMA_ORDERS: Final[tuple[tuple[int, int, int], ...]] = ((1, 0, 1), (0, 1, 1), (1, 1, 1))
ARIMA_MAXITER: Final = 50


@dataclass
class HoltWintersModel:
    """Additive damped-trend Holt-Winters state and parameters (statsmodels' parametrisation)."""

    alpha: float
    beta: float
    gamma: float
    phi: float
    level: float
    trend: float
    season: FloatArray  # most recent `m` seasonal states, oldest first; [0.0] when non-seasonal
    detail: str = "holt-winters"

    def forecast(self, steps: int) -> float:
        damped_sum = float(np.sum(self.phi ** np.arange(1, steps + 1)))
        return self.level + damped_sum * self.trend + float(self.season[(steps - 1) % len(self.season)])

    def interval_upper_offset(self, steps: int, quantile: float) -> float | None:
        return None

    def update(self, values: FloatArray) -> None:
        level, trend, phi = self.level, self.trend, self.phi
        alpha, beta, gamma = self.alpha, self.beta, self.gamma
        season = list(self.season.tolist())
        for value in values.tolist():
            oldest = season[0]
            previous_level = level
            level = alpha * (value - oldest) + (1.0 - alpha) * (previous_level + phi * trend)
            new_season = gamma * (value - previous_level - phi * trend) + (1.0 - gamma) * oldest
            trend = beta * (level - previous_level) + (1.0 - beta) * phi * trend
            season = [*season[1:], new_season]
        self.level, self.trend = level, trend
        self.season = np.asarray(season, dtype=np.float64)

    def walk_forward(self, values: FloatArray, steps: int) -> FloatArray:
        return walk_forward_by_updates(self, values, steps)


def _hw_min_points(season_steps: int | None) -> int:
    return max(10, 2 * season_steps + 2) if season_steps else 10


def _fit_holt_winters(values: FloatArray, context: FitContext) -> FittedModel:
    season = context.season_steps if context.season_steps and context.season_steps >= 2 else None
    if len(values) < _hw_min_points(season):
        raise FitFailed(f"holt-winters needs {_hw_min_points(season)} points, has {len(values)}")
    if float(np.ptp(values)) == 0.0:
        # A constant series makes the optimizer's objective flat; its fit is known without one.
        return HoltWintersModel(0.5, 0.0, 0.0, 0.98, float(values[-1]), 0.0, np.zeros(season or 1))
    model = ExponentialSmoothing(
        values,
        trend="add",
        damped_trend=True,
        seasonal="add" if season else None,
        seasonal_periods=season,
        initialization_method="heuristic" if season else "estimated",
    )
    result = model.fit(use_brute=season is None, minimize_kwargs={"callback": context.check_deadline})
    retvals = getattr(result, "mle_retvals", None)
    if retvals is not None and not bool(getattr(retvals, "success", True)):
        raise FitFailed(f"holt-winters did not converge ({getattr(retvals, 'message', 'no message')})")
    params: dict[str, Any] = result.params
    fitted = HoltWintersModel(
        alpha=float(params["smoothing_level"]),
        beta=float(params["smoothing_trend"]),
        gamma=float(params["smoothing_seasonal"]) if season else 0.0,
        phi=float(params["damping_trend"]),
        level=float(params["initial_level"]),
        trend=float(params["initial_trend"]),
        season=np.asarray(params["initial_seasons"], dtype=np.float64) if season else np.zeros(1),
        detail=f"holt-winters(m={season})" if season else "holt-winters(damped, no season)",
    )
    # Replay the data through our own recursion so later updates continue exactly this state.
    fitted.update(values)
    if not np.isfinite([fitted.level, fitted.trend]).all() or not np.isfinite(fitted.season).all():
        raise FitFailed("holt-winters produced non-finite states")
    return fitted


register(ModelSpec("holt-winters", _fit_holt_winters, min_points=_hw_min_points))


def _system(results: Any) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """Design Z, transition T, state intercept c and observation intercept d of a time-invariant SARIMAX
    (a constant trend, were one used, shows up as a per-time state intercept equal at every time)."""
    filtered = results.filter_results
    design, transition = filtered.design, filtered.transition
    state_intercept, obs_intercept = filtered.state_intercept, filtered.obs_intercept
    if design.shape[-1] != 1 or transition.shape[-1] != 1 or obs_intercept.shape[-1] != 1:
        raise FitFailed("time-varying state space; cannot forecast from the state")
    intercept = state_intercept[:, :1]
    if not np.allclose(state_intercept, intercept):
        raise FitFailed("time-varying state intercept; cannot forecast from the state")
    return design[:, :, 0], transition[:, :, 0], intercept[:, 0], float(obs_intercept[0, 0])


def _state_forecasts(results: Any, predicted_states: FloatArray, steps: int) -> FloatArray:
    """`steps`-ahead forecasts from one-step predicted states (one column per origin):
    y = Z (T^(steps-1) a + sum_{i < steps-1} T^i c) + d. Microseconds, against ~1 ms for `forecast()`."""
    design, transition, intercept, obs_intercept = _system(results)
    power = np.eye(transition.shape[0])
    offset = np.zeros(transition.shape[0])
    for _ in range(steps - 1):
        offset = offset + power @ intercept
        power = transition @ power
    forecasts = (design @ (power @ predicted_states + offset[:, None]))[0] + obs_intercept
    result: FloatArray = np.asarray(forecasts, dtype=np.float64)
    return result


class ArimaModel:
    """A fitted SARIMAX results object, carried forward with `extend` (Kalman filter over new points)."""

    def __init__(self, results: Any, order: tuple[int, int, int], mean: float) -> None:
        self._results = results
        self.order = order
        self.mean = mean  # subtracted before the model sees a value, added back to its forecasts
        self.params: FloatArray = np.asarray(results.params, dtype=np.float64)
        p, d, q = order
        self.detail = f"ARIMA({p},{d},{q}){'+mean' if d == 0 else ''}"

    def forecast(self, steps: int) -> float:
        predicted = self._results.filter_results.predicted_state[:, -1:]
        return float(_state_forecasts(self._results, predicted, steps)[0]) + self.mean

    def interval_upper_offset(self, steps: int, quantile: float) -> float | None:
        prediction = self._results.get_forecast(steps)
        standard_error = float(np.asarray(prediction.se_mean)[-1])
        if not np.isfinite(standard_error):
            return None
        return NormalDist().inv_cdf(quantile) * standard_error

    def _extend(self, values: FloatArray) -> Any:
        # The new points continue a known state, so no likelihood burn-in: with statsmodels' inherited
        # burn of d points, a d-point extension divides 0 by 0 for its (unused) scale and warns.
        return self._results.extend(values - self.mean, loglikelihood_burn=0)

    def update(self, values: FloatArray) -> None:
        if len(values):
            self._results = self._extend(values)

    def walk_forward(self, values: FloatArray, steps: int) -> FloatArray:
        if len(values) == 0:
            return np.empty(0)
        extended = self._extend(values)
        n_origins = max(len(values) - steps + 1, 0)
        forecasts = _state_forecasts(extended, extended.filter_results.predicted_state[:, :n_origins], steps)
        self._results = extended
        return forecasts + self.mean


def _fit_arima(values: FloatArray, context: FitContext) -> FittedModel:
    if len(values) < 20:
        raise FitFailed(f"arima needs 20 points, has {len(values)}")
    if float(np.ptp(values)) == 0.0:
        raise FitFailed("arima cannot be fitted on a constant series")
    previous = context.previous
    if isinstance(previous, ArimaModel):
        # A scheduled refit between re-selections: keep the order, start from the last parameters
        # (a few optimizer iterations instead of a cold start over the whole grid).
        grid: tuple[tuple[int, int, int], ...] = (previous.order,)
        start_params: FloatArray | None = previous.params
    else:
        grid, start_params = ARIMA_ORDERS, None
    best: tuple[float, Any, tuple[int, int, int], float] | None = None
    failures: list[str] = []
    for order in grid:
        context.check_deadline()
        mean = float(np.mean(values)) if order[1] == 0 else 0.0
        # concentrate_scale: the innovation variance is solved for, one parameter fewer to search.
        result = SARIMAX(values - mean, order=order, trend="n", concentrate_scale=True).fit(
            start_params=start_params,
            disp=False,
            maxiter=ARIMA_MAXITER,
            cov_type="none",
            callback=context.check_deadline,
        )
        if not bool(result.mle_retvals.get("converged", True)):
            failures.append(f"ARIMA{order} did not converge")
            continue
        aic = float(result.aic)
        if np.isfinite(aic) and (best is None or aic < best[0]):
            best = (aic, result, order, mean)
    if best is None:
        raise FitFailed("; ".join(failures) or "no ARIMA order gave a finite AIC")
    fitted = ArimaModel(best[1], best[2], best[3])
    _system(best[1])  # refuse here, not at the first forecast, a form we cannot forecast from the state
    return fitted


register(ModelSpec("arima", _fit_arima, min_points=lambda season: 20))
