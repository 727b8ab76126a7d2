"""The estimators the operator and the simulator share, with hand-computed answers.

Quantiles follow Prometheus' histogram_quantile (e2e/test_metrics_presets.py compares them with a
real Prometheus on live data); the rest is checked against arithmetic done by hand in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_operator.metrics.estimators import (
    Intervals,
    LengthTrend,
    arrivals_until,
    bucket_quantile,
    bucket_share_at_or_below,
    counter_increments,
    histogram_from_values,
    least_squares_slope,
    length_trend,
    min_rate_coverage_seconds,
    slope_noise_rps_per_s,
    summarize_arrivals,
    summarize_histogram,
)
from dopd_worker.metrics import LENGTH_BUCKETS_TOKENS

INF = math.inf
# 10 observations <= 0.1, 20 in (0.1, 0.5], 10 in (0.5, 1.0], 10 above 1.0
BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 50.0)]


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        pytest.param(0.5, BUCKETS, 0.1 + 0.4 * (15 / 20), id="rank-25-inside-the-second-bucket"),
        pytest.param(0.2, BUCKETS, 0.1, id="rank-on-a-bound-ends-the-first-bucket"),
        pytest.param(0.1, BUCKETS, 0.05, id="first-bucket-starts-at-zero"),
        pytest.param(0.7, BUCKETS, 0.5 + 0.5 * (5 / 10), id="third-bucket"),
        pytest.param(0.9, BUCKETS, 1.0, id="rank-in-+Inf-gives-the-highest-finite-bound"),
        pytest.param(1.0, BUCKETS, 1.0, id="q-one"),
        pytest.param(-0.1, BUCKETS, -INF, id="q-below-zero"),
        pytest.param(1.1, BUCKETS, INF, id="q-above-one"),
        pytest.param(
            0.5, [(INF, 50.0), (1.0, 40.0), (0.1, 10.0), (0.5, 30.0)], 0.1 + 0.4 * (15 / 20), id="unsorted"
        ),
        pytest.param(
            0.5,
            [(0.1, 4.0), (0.1, 6.0), (0.5, 30.0), (INF, 30.0)],
            0.1 + 0.4 * (5 / 20),
            id="equal-bounds-add",
        ),
        # increase() can leave a bucket below its predecessor: evened out to 30, so rank 25 is in (0.1, 0.5]
        pytest.param(
            0.5,
            [(0.1, 10.0), (0.5, 30.0), (1.0, 29.0), (INF, 50.0)],
            0.1 + 0.4 * (15 / 20),
            id="made-monotonic",
        ),
    ],
)
def test_bucket_quantile(q: float, buckets: list[tuple[float, float]], expected: float) -> None:
    assert bucket_quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize(
    "buckets",
    [
        pytest.param([(0.1, 10.0), (1.0, 20.0)], id="no-+Inf-bucket"),
        pytest.param([(0.1, 0.0), (INF, 0.0)], id="no-observations"),
        pytest.param([(INF, 5.0)], id="only-+Inf"),
        pytest.param([], id="empty"),
    ],
)
def test_bucket_quantile_is_nan_where_prometheus_gives_nan(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(bucket_quantile(0.9, buckets))


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        pytest.param(0.3, (10 + 20 * 0.5) / 50, id="half-way-through-the-second-bucket"),
        pytest.param(0.5, 30 / 50, id="on-a-bound-is-exact"),
        pytest.param(0.05, 5 / 50, id="first-bucket-from-zero"),
        pytest.param(2.0, 40 / 50, id="past-the-last-bound-+Inf-counts-as-misses"),
        pytest.param(0.0, 0.0, id="zero"),
    ],
)
def test_share_at_or_below(threshold: float, expected: float) -> None:
    assert bucket_share_at_or_below(threshold, BUCKETS) == pytest.approx(expected)


def test_histogram_from_values_uses_le_semantics_and_weights() -> None:
    values = np.asarray([0.1, 0.1, 0.2, 5.0])
    assert histogram_from_values(values, (0.1, 1.0)) == [(0.1, 2.0), (1.0, 3.0), (INF, 4.0)]  # 0.1 <= 0.1
    weights = np.asarray([1.0, 2.0, 0.0, 3.0])
    assert histogram_from_values(values, (0.1, 1.0), weights) == [(0.1, 3.0), (1.0, 3.0), (INF, 6.0)]


@pytest.mark.parametrize(
    ("buckets", "total", "problem"),
    [
        pytest.param(None, None, "x: no series", id="absent"),
        pytest.param([(1.0, 0.0), (INF, 0.0)], 0.0, "x: no observations in the window", id="idle"),
        pytest.param(
            [(1.0, 2.0), (INF, math.nan)], 1.0, "x: bucket counts are NaN or infinite", id="nan-count"
        ),
        pytest.param([(1.0, 2.0)], 1.0, "x: no +Inf bucket", id="no-inf"),
    ],
)
def test_summarize_histogram_says_why_it_knows_nothing(
    buckets: list[tuple[float, float]] | None, total: float | None, problem: str
) -> None:
    summary = summarize_histogram("x", buckets, total, q=0.9, threshold=1.0)
    assert (summary.mean, summary.quantile, summary.share_at_or_below) == (None, None, None)
    assert summary.problem == problem


def test_summarize_histogram_mean_comes_from_the_sum_not_the_buckets() -> None:
    summary = summarize_histogram("x", BUCKETS, 42.0, q=0.5, threshold=0.5)
    assert summary.mean == pytest.approx(42.0 / 50)  # midpoints would give 0.05*10+0.3*20+0.75*10+1*10 / 50
    assert summary.quantile == pytest.approx(0.4)
    assert summary.share_at_or_below == pytest.approx(0.6)
    nan_sum = summarize_histogram("x", BUCKETS, math.nan, q=0.5)
    assert nan_sum.mean is None and nan_sum.quantile == pytest.approx(0.4)
    assert nan_sum.problem == "x: the sum of observations is nan"


def test_counter_increments_treat_a_drop_as_a_restart() -> None:
    # 5 -> 8 (+3), restart, 2 (+2 since the restart), 4 (+2)
    assert counter_increments(np.asarray([5.0, 8.0, 2.0, 4.0])).tolist() == [3.0, 2.0, 2.0]


def test_arrivals_until_spreads_each_interval_evenly() -> None:
    # 10 arrivals in (0, 10], 4 in (10, 12]
    source = Intervals(np.asarray([0.0, 10.0]), np.asarray([10.0, 12.0]), np.asarray([10.0, 4.0]))
    assert arrivals_until([source], np.asarray([0.0, 5.0, 10.0, 11.0, 20.0])).tolist() == [0, 5, 10, 12, 14]
    other = Intervals.bins(np.asarray([1.0, 1.0]), 10.0, 1.0)  # one each in (10, 11] and (11, 12]
    assert arrivals_until([source, other], np.asarray([12.0])).tolist() == [16.0]


def test_dispersion_and_slope_by_hand() -> None:
    # ten 1 s counts 2, 4, 2, 4, ...: mean 3, sample variance 10 * 1 / 9, dispersion (10/9) / 3
    summary = summarize_arrivals([Intervals.bins(np.asarray([2.0, 4.0] * 5), 0.0, 1.0)], window_seconds=10.0)
    assert summary.scv == pytest.approx((10 / 9) / 3)
    assert least_squares_slope(np.asarray([0.0, 1.0, 2.0, 3.0]), np.asarray([1.0, 3.0, 5.0, 7.0])) == 2.0
    assert math.isnan(least_squares_slope(np.asarray([1.0]), np.asarray([1.0])))


def test_poisson_arrivals_have_dispersion_near_one() -> None:
    counts = np.random.default_rng(7).poisson(20.0, size=20_000).astype(np.float64)
    summary = summarize_arrivals([Intervals.bins(counts, 0.0, 1.0)], window_seconds=20_000.0)
    assert summary.scv == pytest.approx(1.0, abs=0.03)  # a steady count would give 0
    assert summary.rate_rps == pytest.approx(20.0, rel=0.01)


def test_summarize_arrivals_rate_burstiness_and_trend() -> None:
    # 150 one-second bins: the rate climbs 10 -> 10 + 149*0.5 per second, counts exactly on the line
    counts = 10.0 + 0.5 * np.arange(150, dtype=np.float64)
    summary = summarize_arrivals([Intervals.bins(counts, 1000.0, 1.0)], window_seconds=30.0)
    assert summary.rate_rps == pytest.approx(float(np.mean(counts[-30:])))  # the last 30 s only
    assert summary.trend_rps_per_s == pytest.approx(0.5)
    assert summary.trend_span_seconds is None  # a full trend window: over the whole lead time
    # the ramp itself is the only variance over the window: var of 0.5*k over 30 bins / mean
    assert summary.scv == pytest.approx(float(np.var(counts[-30:], ddof=1) / np.mean(counts[-30:])))
    assert summary.problems == ()


def test_a_young_series_reads_the_rise_it_is_on() -> None:
    """A model that just started on a rising load (the `make demo` ramp: 15 -> 75 rps in 100 s): its
    first ticks read the rise over the data there is, not only once the 120 s trend window has filled,
    so the first scale-ups are sized for where the load is going (issue 12, item 3)."""
    rng = np.random.default_rng(5)
    rates = 15.0 + 0.6 * np.arange(30, dtype=np.float64)  # 30 s of data, rising 0.6 rps per second
    counts = rng.poisson(rates).astype(np.float64)
    summary = summarize_arrivals([Intervals.bins(counts, 0.0, 1.0)], window_seconds=15.0)
    assert summary.trend_rps_per_s is not None and summary.trend_noise_rps_per_s is not None
    assert summary.trend_rps_per_s == pytest.approx(0.6, abs=0.25)
    # the fit over 30 bins is noisier than the full window's, and says so: the planner extrapolates
    # only the rise beyond this noise
    assert summary.trend_noise_rps_per_s > math.sqrt(summary.rate_rps * 12 / (120**3 - 120))
    assert summary.trend_rps_per_s > 2 * summary.trend_noise_rps_per_s
    assert not any(p.startswith("arrival trend") for p in summary.problems), summary.problems
    assert summary.trend_span_seconds == 30.0  # the planner extrapolates this line no further ahead


def test_a_young_flat_series_rarely_reads_a_rise_beyond_its_noise() -> None:
    """The other side of reading young series: a model that just started at a flat load. Its short
    fit's slope is noise, and the rise beyond one standard error is extrapolated about one time in six
    and by little (what made the first version of this estimator wait for the whole window)."""
    rng = np.random.default_rng(17)
    beyond = []
    for _ in range(400):
        counts = rng.poisson(60.0, size=30).astype(np.float64)
        summary = summarize_arrivals([Intervals.bins(counts, 0.0, 1.0)], window_seconds=15.0)
        assert summary.trend_rps_per_s is not None and summary.trend_noise_rps_per_s is not None
        beyond.append(max(summary.trend_rps_per_s - summary.trend_noise_rps_per_s, 0.0))
    assert 0.05 < float(np.mean(np.asarray(beyond) > 0)) < 0.25
    # over a 15 s lead time the extrapolation adds under 2% of the rate on average
    assert float(np.mean(beyond)) * 15.0 < 0.02 * 60.0


def test_the_trend_noise_is_the_spread_of_slopes_a_flat_load_shows() -> None:
    """Flat Poisson arrivals at 180 rps in 1 s bins, read over the 120 s trend window many times: the
    reported noise is the standard deviation of the window's slopes (what the trend guard discounts),
    and it scales with the burstiness (a dispersion of 4 doubles it)."""
    rng = np.random.default_rng(11)
    slopes, noises = [], []
    for _ in range(400):
        counts = rng.poisson(180.0, size=180).astype(np.float64)
        summary = summarize_arrivals([Intervals.bins(counts, 0.0, 1.0)], window_seconds=60.0)
        assert summary.trend_rps_per_s is not None and summary.trend_noise_rps_per_s is not None
        whole = least_squares_slope(np.arange(120, dtype=np.float64), counts[-120:])
        assert summary.trend_rps_per_s <= whole + 1e-12  # the recent half only ever lowers it
        slopes.append(whole)
        noises.append(summary.trend_noise_rps_per_s)
    assert float(np.std(slopes)) == pytest.approx(float(np.mean(noises)), rel=0.12)
    assert float(np.mean(noises)) == pytest.approx(math.sqrt(180.0 * 12 / (120**3 - 120)), rel=0.05)
    spread = float(np.sum((np.arange(120) - 59.5) ** 2))
    doubled = slope_noise_rps_per_s(np.array([180.0]), 4.0, 1.0, spread)
    assert float(doubled[0]) == pytest.approx(2 * math.sqrt(180.0 / spread))


@pytest.mark.parametrize(
    ("counts", "window_s", "problem"),
    [
        pytest.param(
            [5.0] * 8, 10.0, "arrival burstiness: 8 intervals in the 8 s window", id="too-few-intervals"
        ),
        pytest.param(
            [1.0] * 15, 60.0, "arrival burstiness: 15 arrivals in the window", id="too-few-arrivals"
        ),
        # 60 s scrapes: the 120 s trend window holds two intervals, too few for a slope
        pytest.param(
            [300.0] * 6,
            300.0,
            "arrival trend: 2 intervals of 60 s in the 120 s trend window, 4 needed",
            id="scrapes-too-sparse-for-a-trend",
        ),
    ],
)
def test_summarize_arrivals_refuses_to_guess(counts: list[float], window_s: float, problem: str) -> None:
    width_s = 60.0 if window_s == 300.0 else 1.0
    source = Intervals.bins(np.asarray(counts), 0.0, width_s)
    summary = summarize_arrivals([source], window_s)
    assert summary.rate_rps == pytest.approx(counts[0] / width_s)  # the rate is still known
    assert any(p.startswith(problem) for p in summary.problems), summary.problems


@pytest.mark.parametrize(
    ("window_s", "interval_s", "needed_s"),
    [
        pytest.param(60.0, 1.0, 15.0, id="a-quarter-of-the-window"),
        pytest.param(60.0, 5.0, 20.0, id="four-scrapes"),
        pytest.param(60.0, 30.0, 60.0, id="never-more-than-the-window"),
    ],
)
def test_a_series_that_just_started_has_no_rate_yet(
    window_s: float, interval_s: float, needed_s: float
) -> None:
    """What a new model's first ticks read (a CI run saw 93 rps of the 50 sent on a 2 s span): unknown,
    with the reason, until the data covers enough of the window; then the rate over what there is."""
    assert min_rate_coverage_seconds(window_s, interval_s) == needed_s
    scrapes = round(needed_s / interval_s)
    young = summarize_arrivals(
        [Intervals.bins(np.full(scrapes - 1, 9.0 * interval_s), 0.0, interval_s)], window_s
    )
    assert (young.rate_rps, young.scv, young.trend_rps_per_s) == (None, None, None)
    assert young.problems == (
        f"arrival rate: {needed_s - interval_s:.0f} s of data, {needed_s:.0f} s needed before a rate is read "
        f"(4 scrapes and 25% of the {window_s:g} s window): the series just started",
    )
    ready = summarize_arrivals(
        [Intervals.bins(np.full(scrapes, 9.0 * interval_s), 0.0, interval_s)], window_s
    )
    assert ready.rate_rps == pytest.approx(9.0)


@given(
    window_s=st.floats(10.0, 3600.0),
    interval_s=st.floats(0.5, 120.0),
    age_scrapes=st.integers(1, 400),
)
def test_the_rate_is_known_exactly_once_the_data_covers_enough(
    window_s: float, interval_s: float, age_scrapes: int
) -> None:
    source = Intervals.bins(np.full(age_scrapes, 3.0 * interval_s), 100.0, interval_s)
    summary = summarize_arrivals([source], window_s)
    known = age_scrapes * interval_s >= min_rate_coverage_seconds(window_s, interval_s) - 1e-6 * interval_s
    assert (summary.rate_rps is not None) == known
    if known:
        assert summary.rate_rps == pytest.approx(3.0)
    else:
        assert summary.problems[0].startswith("arrival rate: ")


def test_summarize_arrivals_of_pods_scraped_at_different_moments() -> None:
    # two pods, 2 arrivals per second each, scraped every second half a second apart
    a = Intervals.bins(np.full(130, 2.0), 0.0, 1.0)
    b = Intervals.bins(np.full(130, 2.0), 0.5, 1.0)
    summary = summarize_arrivals([a, b], window_seconds=20.0)
    # over (110, 130], where both have reported: 3.95 if the window ended at b's newer sample (130.5)
    assert summary.rate_rps == pytest.approx(4.0)
    assert summary.scv == 0.0  # steady pods: no dispersion (binning across pods would invent some)
    assert summary.trend_rps_per_s == pytest.approx(0.0, abs=1e-9)
    assert summarize_arrivals([], 20.0).rate_rps is None
    # a pod that stopped 10 s ago does not hold the end back: the window ends at a's newest sample, 10 s
    # after the sum stepped from 4 to 2 per second, and the rate is read since that step (held back at
    # the stopped pod's last sample it would read 4)
    stopped = Intervals.bins(np.full(10, 2.0), 110.0, 1.0)
    after_stop = summarize_arrivals([a, stopped], window_seconds=20.0)
    assert after_stop.rate_rps == pytest.approx(2.0)
    assert after_stop.level_age_seconds == pytest.approx(10.0)


def test_a_rise_that_has_stopped_is_not_read_as_a_trend() -> None:
    """A step from 120 to 240 rps 80 s ago, flat since: the 120 s least-squares slope still reads a steep
    rise (about 1.6 rps/s), which the trend guard would extrapolate over a 150 s lead time to a load near
    480 rps. The recent half of the window, flat, says the rise is over: the trend is at most that half's
    slope plus its noise. A rise still under way (the ramp above) keeps its whole slope."""
    rng = np.random.default_rng(3)
    counts = np.concatenate([np.full(100, 120.0), np.full(80, 240.0)])
    noisy = rng.poisson(counts).astype(np.float64)
    whole = least_squares_slope(np.arange(120, dtype=np.float64), noisy[-120:])
    summary = summarize_arrivals([Intervals.bins(noisy, 0.0, 1.0)], window_seconds=60.0)
    assert summary.trend_rps_per_s is not None and summary.trend_noise_rps_per_s is not None
    assert whole > 1.0
    assert summary.trend_rps_per_s < 0.5
    assert summary.rate_rps == pytest.approx(240.0, rel=0.05)


# Derandomized: each example's share of pairs past one error is a binomial estimate over 200 pairs
# (standard deviation 0.026 about 0.16), so a bound three deviations out fails one example in a few
# hundred; drawn anew at every run the 25 examples failed about one run in twenty (seed 10049: 0.075).
@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), median=st.floats(100.0, 2000.0), sigma=st.floats(0.3, 1.0))
def test_the_length_trends_noise_is_what_two_windows_of_one_mix_differ_by(
    seed: int, median: float, sigma: float
) -> None:
    """Two windows of 2,000 requests drawn from one log-normal mix: the slope between them, over its
    noise read from the window's buckets (`bucket_variance`), is a standard normal. So a rise past
    three times the noise is rare (at most 3% of pairs, 0.13% for a normal; the buckets' midpoints
    read the spread a little off), and about a sixth of pairs pass one times it. (Where the buckets are
    coarse for the spread, as outputs of a few dozen tokens in buckets 16 wide, they read the noise
    high: the trend then errs towards sizing for the window's lengths.)"""
    rng = np.random.default_rng(seed)
    bounds = LENGTH_BUCKETS_TOKENS
    scores = []
    for _ in range(200):
        now, before = (rng.lognormal(math.log(median), sigma, 2_000) for _ in range(2))
        trend = length_trend(
            histogram_from_values(now, bounds), float(now.sum()), 2_000.0, float(before.sum()), 60.0
        )
        assert trend.tokens_per_s is not None and trend.noise_tokens_per_s is not None
        scores.append(trend.tokens_per_s / trend.noise_tokens_per_s)
    z = np.asarray(scores)
    assert np.mean(z > 3.0) <= 0.03
    assert 0.08 <= np.mean(z > 1.0) <= 0.26


def test_a_length_trend_needs_both_windows() -> None:
    buckets = [(100.0, 5.0), (math.inf, 5.0)]
    assert length_trend(buckets, 400.0, None, 300.0, 60.0) == LengthTrend(None, None)
    assert length_trend(buckets, 400.0, 0.0, 0.0, 60.0) == LengthTrend(None, None)
    assert length_trend(buckets, None, 5.0, 300.0, 60.0) == LengthTrend(None, None)
    assert length_trend(buckets, 400.0, 5.0, 300.0, 60.0).tokens_per_s == pytest.approx(20.0 / 60.0)
