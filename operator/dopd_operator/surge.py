"""Surge headroom: how far the load has risen, within one lead time, above what could be seen coming.

A replica ordered now serves only a lead time later (startup + interval), so a jump in load that no
forecast announced is served by the replicas already there. The planner's simple predictors of the
load a lead time ahead are the observed rate and that rate extrapolated along its current rise (the
trend guard); the forecaster adds its own upper quantile. This module measures, on the arrival-rate
history the forecaster is fitted on, how wrong the simple predictors have been: for every past moment
`t` whose lead time has been seen in full,

    residual(t) = max over (t, t + lead] of rate
                  -  max(rate(t), rate(t) + max(slope(t) - noise(t), 0) * lead)

(rates as the planner observes them: means over the metrics window; slope the least-squares slope
over the trend window, at most the recent half's slope plus its noise, `estimators.guarded_slopes`,
as `estimators.summarize_arrivals` reads it; noise its standard error for a load with no trend at that
rate and the observed burstiness, `estimators.slope_noise_rps_per_s`: the trend guard extrapolates only the rise
beyond it). After a step between two flat levels within the trend window, the rate is read as the
observation reads it, from the step on (`estimators.level_change`), with no trend until the new level
spans half the trend window: a window mean would carry the old level for a window, and a surge that
starts soon after the last one ended would count as a smaller rise than the one the planner met.
The headroom is the upper quantile of those residuals, at the quantile the capacity model provisions
for (the higher of the SLO percentile and the attainment target, see `tick.surge_quantile`), less
what the rate's own noise explains, floored at zero: `predictor + headroom` covered the load of the
next lead time in that share of the past. It is additive (rps): a
surge is extra traffic arriving on top of the standing load, and a rise measured at one level is not
scaled up at a higher one. The planner adds it to the observed rate (`planner_load.provisioned_rate`).

On a smooth load (a diurnal cycle, a trend) the trend guard covers the rises and what is left is the
rate's noise, which is discounted, so the headroom stays near zero; a load that jumps leaves residuals
as large as its jumps, held for as long as the jumps stay in the history window
(`forecast.historySeconds`). Nothing here is tuned on a trace: the window, the trend window, the lead
time and the quantile are the planner's own.

Pure: numpy only. Caller: `dopd_operator.tick.run_tick`, which hands the result to `planner.plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from dopd_operator.metrics.estimators import (
    MIN_LEVEL_BINS,
    centred_times,
    guarded_slopes,
    level_change,
    read_trend,
    slope_noise_rps_per_s,
    trend_bins,
)

FloatArray = npt.NDArray[np.float64]

# A window mean needs at least this share of its buckets (Prometheus gaps are NaN).
MIN_WINDOW_COVERAGE = 0.5


@dataclass(frozen=True)
class SurgeHeadroom:
    """Extra arrival rate to provision for, over the observed (or trend-extrapolated) rate."""

    rps: float
    quantile: float
    samples: int  # past moments whose whole lead time was seen
    largest_rps: float  # the largest residual seen (for people)
    lead_seconds: float
    peak_rps: float  # the history's highest window-mean rate: observed + headroom stops there

    def above(self, observed_rps: float) -> float:
        """The headroom to add to `observed_rps`: at most up to the history's peak. Every rise in the
        history ended at or below that peak, so a load already near it has never been seen to surge
        past it by the headroom; a rise to a new high is the forecast's and the trend guard's."""
        return min(self.rps, max(self.peak_rps - observed_rps, 0.0))

    def describe(self) -> str:
        return (
            f"surge headroom {self.rps:.2f} rps: P{self.quantile * 100:g} of the rise above the observed "
            f"rate and its trend within {self.lead_seconds:g}s, over {self.samples} past moments "
            f"(largest {self.largest_rps:.2f} rps)"
        )


def _window_means(values: FloatArray, buckets: int) -> FloatArray:
    """Mean of each bucket's last `buckets` values (NaN where fewer than MIN_WINDOW_COVERAGE are known)."""
    known = np.isfinite(values)
    filled = np.where(known, values, 0.0)
    sums = np.convolve(filled, np.ones(buckets), mode="full")[: len(values)]
    counts = np.convolve(known.astype(np.float64), np.ones(buckets), mode="full")[: len(values)]
    full = np.arange(len(values)) >= buckets - 1
    enough = full & (counts >= MIN_WINDOW_COVERAGE * buckets)
    out: FloatArray = np.where(enough, sums / np.maximum(counts, 1.0), np.nan)
    return out


def history_peak_rps(rates_rps: FloatArray, step_s: float, window_s: float) -> float | None:
    """The highest rate of a history as the planner observes rates (means over the metrics window);
    None when no window of it is known well enough. The planner's bound on the forecaster's upper
    quantile (`tick.forecast_load`)."""
    values = np.asarray(rates_rps, dtype=np.float64)
    if len(values) == 0:
        return None
    return _peak(_window_means(values, max(round(window_s / step_s), 1)))


def _peak(level: FloatArray) -> float | None:
    """The highest known window mean; None when none is known."""
    known = level[np.isfinite(level)]
    return float(np.max(known)) if len(known) else None


def _read_from_level_changes(
    level: FloatArray,
    predicted: FloatArray,
    values: FloatArray,
    window: int,
    trend_buckets: int,
    step_s: float,
    lead_s: float,
    arrival_scv: float,
) -> None:
    """Where the rate stepped within the trend window before a moment, read that moment as the
    observation then read it (`estimators.summarize_arrivals`), in place in `level` (the rate) and
    `predicted` (the rate and its trend over the lead time): the rate is the mean from the step on
    (within the metrics window), with no trend until the new level spans half the trend window (then
    the guarded slope over the new level's buckets: `estimators.trend_bins` and `read_trend`, the
    observation's own rule). Window means alone would still carry the old
    level: after a surge ends they read the load high for a window, and a surge that follows within a
    lead time would count as a smaller rise than the planner, which read the low level at once, met
    (on random 2x surges over 120 rps the headroom fell to 90 rps)."""
    if trend_buckets < 2 * MIN_LEVEL_BINS:
        return
    for i in range(trend_buckets - 1, len(values)):
        bins = values[i - trend_buckets + 1 : i + 1]
        step = level_change(bins)  # None also where a bucket is unknown
        if step is None:
            continue
        rate = float(np.mean(bins[max(step.index, trend_buckets - window) :]))
        fitted = trend_bins(bins, step)
        read = read_trend(fitted, step_s, rate, arrival_scv) if fitted is not None else None
        trend = 0.0
        if read is not None and read[1] is not None:
            trend = max(read[0] - read[1], 0.0)
        level[i] = rate
        predicted[i] = rate + trend * lead_s


def surge_headroom(
    rates_rps: FloatArray,
    step_s: float,
    lead_s: float,
    quantile: float,
    window_s: float,
    trend_s: float,
    arrival_scv: float = 1.0,
) -> SurgeHeadroom | None:
    """The upper `quantile` of the load's rises above the simple predictors within `lead_s`.

    `rates_rps` is the arrival rate per `step_s` bucket, oldest first (NaN: no data). None when no past
    moment has both its predictors and its whole lead time known.
    """
    if not (step_s > 0 and lead_s > 0 and 0 < quantile < 1):
        raise ValueError(f"bad surge parameters: step {step_s}, lead {lead_s}, quantile {quantile}")
    values = np.asarray(rates_rps, dtype=np.float64)
    window = max(round(window_s / step_s), 1)
    ahead = max(round(lead_s / step_s), 1)
    n = len(values)
    if n < window + ahead:
        return None
    trend_buckets = max(round(trend_s / step_s), 2)
    level = _window_means(values, window)
    slope = guarded_slopes(values, trend_buckets, step_s, level, arrival_scv)  # as the observation's trend
    x = centred_times(trend_buckets, step_s)
    spread = float(np.sum(x * x))
    # The trend guard's own rule: only the rise beyond the slope's noise at that level is extrapolated.
    slope_noise = slope_noise_rps_per_s(level, arrival_scv, step_s, spread)
    predicted = level + np.maximum(slope - slope_noise, 0.0) * lead_s  # NaN (skipped) where unknown
    observed = level.copy()  # the rate as the planner read it at each moment
    _read_from_level_changes(observed, predicted, values, window, trend_buckets, step_s, lead_s, arrival_scv)
    # The peak of the rates as observed over the next `ahead` buckets, for each moment that has them all.
    future = np.lib.stride_tricks.sliding_window_view(observed[1:], ahead)  # row i: [i+1 .. i+ahead]
    with np.errstate(invalid="ignore"):
        peak = np.max(future, axis=1)  # NaN where any window mean is unknown
    # What the rate's own fluctuation explains is not a surge: the capacity model already queues for
    # arrivals as bursty as observed. For a renewal process at rate r with inter-arrival SCV c2, a
    # bucket's rate has variance c2*r/step, a window mean c2*r/W, and the least-squares slope over n
    # buckets `slope_noise`^2 = c2*r/(step * sum(x^2)); a residual (a window mean ahead minus the mean
    # and the slope extrapolated over the lead time) so has variance about 2*c2*r/W + (lead *
    # slope_noise)^2. Its upper `quantile` under that noise alone is discounted from each rise.
    z = NormalDist().inv_cdf(quantile)
    seen = len(peak)
    means_variance = 2.0 * max(arrival_scv, 0.0) * np.maximum(level[:seen], 0.0) / (window * step_s)
    noise = z * np.sqrt(means_variance + (lead_s * slope_noise[:seen]) ** 2)
    residuals = peak - predicted[: len(peak)] - noise
    residuals = residuals[np.isfinite(residuals)]
    if len(residuals) == 0:
        return None
    # "higher": never interpolate below an observed rise (few samples make the quantile the maximum).
    upper = float(np.quantile(residuals, quantile, method="higher"))
    largest = float(np.max(residuals))
    history_peak = _peak(level)
    if not math.isfinite(upper) or history_peak is None:
        return None
    return SurgeHeadroom(
        rps=max(upper, 0.0),
        quantile=quantile,
        samples=len(residuals),
        largest_rps=max(largest, 0.0),
        lead_seconds=lead_s,
        peak_rps=history_peak,
    )
