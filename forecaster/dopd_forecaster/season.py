"""Season detection: the period Holt-Winters and seasonal naive use when none is configured.

A period is accepted only when the detrended series' autocorrelation has a clear peak at it: high
(>= `min_peak`) and well above the trough before it (>= `min_prominence`). The prominence test is what
keeps a random walk, whose autocorrelation decays slowly with small wiggles, from being read as seasonal;
white noise and bursty arrivals fail the height test. One FFT, so it costs well under a millisecond.
"""

from __future__ import annotations

import numpy as np

from dopd_forecaster.models import FloatArray


def autocorrelation(values: FloatArray) -> FloatArray:
    """Sample autocorrelation at lags 0..n-1 (biased estimator, as statsmodels' acf), via FFT."""
    centered = values - values.mean()
    n = len(centered)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centered, size)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n]
    if acov[0] <= 0:
        return np.zeros(n)
    result: FloatArray = acov / acov[0]
    return result


def detect_season(
    values: FloatArray,
    min_lag: int = 4,
    max_lag: int = 240,
    min_cycles: int = 3,
    min_peak: float = 0.3,
    min_prominence: float = 0.5,
) -> int | None:
    """The dominant seasonal period in steps, or None when there is no clear one.

    Only lags with at least `min_cycles` full cycles in the history are considered, since fewer cycles
    cannot tell a season from a trend.
    """
    clean = values[np.isfinite(values)]
    n = len(clean)
    upper = min(max_lag, n // min_cycles)
    if upper <= min_lag:
        return None
    steps = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(steps, clean, 1)
    acf = autocorrelation(clean - (slope * steps + intercept))
    best_lag, best_value = None, min_peak
    for lag in range(min_lag, upper + 1):
        value = float(acf[lag])
        is_peak = value > acf[lag - 1] and value >= acf[lag + 1] if lag + 1 < n else False
        if not is_peak or value < best_value:
            continue
        if value - float(acf[1:lag].min()) >= min_prominence:
            best_lag, best_value = lag, value
    return best_lag
