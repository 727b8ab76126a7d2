"""Errors the forecaster raises to its callers (the operator's Kopf timer and the simulator).

    ForecastError                 the planner must decide without a forecast (hold, with this reason)
     ├── ForecastTimeoutError     `forecast_async` ran past its time limit (also a TimeoutError)
     └── ForecastPendingError     background refits: the first fit is requested and not done yet

Everything else that can go wrong inside a fit (a non-converging optimizer, a statsmodels exception, a
fit past its time limit) is handled inside the forecaster: the model is dropped or replaced by the naive
forecast and the reason is carried in `Forecast.reason`, never raised.
"""

from __future__ import annotations


class ForecastError(Exception):
    """No forecast can be made; the message says why (for a short history: how many points it has and
    needs)."""


class ForecastTimeoutError(ForecastError, TimeoutError):
    """The forecast did not finish within its time limit."""


class ForecastPendingError(ForecastError):
    """Background refits only: nothing is fitted yet; the first fit was requested
    (`SeriesForecaster.run_requested_refit`) and the next call forecasts from it."""
