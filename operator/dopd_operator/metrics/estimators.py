"""Every estimate the planner's `Observation` carries, written once, for the operator and the simulator.

The operator feeds these with what Prometheus returns (per-bucket increases over the metrics window,
raw counter and gauge samples); the simulator (`dopd_sim.observe`) feeds them with its own counters
and histograms over the same window and the same bucket boundaries. So the planner sees in simulation
exactly what these functions can make of production metrics, and no more.

- `bucket_quantile`: PromQL `histogram_quantile` (Prometheus 2.x classic histograms): buckets sorted
  and coalesced by bound, counts made monotonic, linear interpolation inside the bucket holding the
  rank (the first bucket starts at 0), the second-highest bound when the rank falls in +Inf, NaN with
  no observations or no +Inf bucket.
- `bucket_share_at_or_below`: share of observations at or below a threshold (SLO attainment), linear
  inside the bucket holding the threshold; observations in the +Inf bucket count as above any finite
  threshold past the last finite bound (a lower bound on attainment).
- `tpot_attainment_with_waits`: the TPOT attainment where the inter-token histogram leaves out each
  request's wait for a decode slot (vLLM, SGLang): the gaps' share times the share of requests whose
  wait fits in the slack their gaps leave.
- `summarize_histogram` / `summarize_arrivals`: the Observation fields from a histogram (mean from the
  sum and count increases, a quantile, an attainment) and from arrivals per short interval (rate;
  burstiness as the index of dispersion variance/mean of the per-interval counts, 1 for Poisson, which
  the planner uses as the squared coefficient of variation of inter-arrival times; trend as the
  least-squares slope of the rate, what PromQL `deriv()` of a rate computes; after a step between two
  flat levels, `level_change`, all three from the step on). Each says why a value is unknown instead
  of guessing one; a series younger than `min_rate_coverage_seconds` has no rate yet.
- `load_fields`: the Observation fields of the arrivals' summary and the lengths' trends, named once
  for both callers.
- `Intervals`, `counter_increments`, `arrivals_until`: raw samples to arrivals per scrape interval
  (counter resets handled as Prometheus does: a drop means the counter restarted from zero), and the
  arrivals up to any time with each interval's count spread evenly over it, so that pods scraped at
  different moments add up without aligning their samples.

Pure: numpy only. Callers: `dopd_operator.metrics.readings`, `dopd_sim.observe`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Bucket = tuple[float, float]  # (upper bound `le`, cumulative count of observations <= le)

TREND_WINDOW_SECONDS = 120.0  # the arrival-rate trend is fitted over this much recent time
MIN_TREND_BINS = 4
MIN_DISPERSION_BINS = 10  # fewer counts than this say little about their variance
MIN_DISPERSION_ARRIVALS = 20.0
# A rate over a series' first scrape or two is noise (and, for engines whose arrivals are counted by
# conservation, mostly the queue filling): like HPA's initialization period, the rate stays unknown
# until the data covers this many scrape intervals and this share of the window (or all of it).
MIN_RATE_INTERVALS = 4
MIN_RATE_WINDOW_SHARE = 0.25


# --------------------------------------------------------------------------------------- histograms


def _prepared(buckets: Iterable[Bucket]) -> list[Bucket] | None:
    """Sorted by bound, equal bounds summed, counts made non-decreasing; None without a +Inf bucket."""
    ordered = sorted(buckets, key=lambda b: b[0])
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][0] < 0:
        return None
    merged: list[list[float]] = []
    for bound, count in ordered:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    running = -math.inf
    for entry in merged:  # increase() over a window can leave small dips; Prometheus evens them out
        if entry[1] > running:
            running = entry[1]
        elif entry[1] < running:
            entry[1] = running  # (a NaN count stays NaN, as in Prometheus)
    return [(b, c) for b, c in merged]


def bucket_quantile(q: float, buckets: Iterable[Bucket]) -> float:
    """The q-quantile (0 <= q <= 1) as PromQL's histogram_quantile computes it; NaN when undefined."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    prepared = _prepared(buckets)
    if prepared is None or len(prepared) < 2:
        return math.nan
    observations = prepared[-1][1]
    if not observations > 0:  # zero, or NaN
        return math.nan
    rank = q * observations
    index = next(i for i in range(len(prepared)) if i == len(prepared) - 1 or prepared[i][1] >= rank)
    if index == len(prepared) - 1:
        return prepared[-2][0]
    if index == 0 and prepared[0][0] <= 0:
        return prepared[0][0]
    start, below = (0.0, 0.0) if index == 0 else prepared[index - 1]
    end, count = prepared[index]
    if count == below:  # only when rank is 0 and the bucket is empty: Go's 0/0
        return math.nan
    return start + (end - start) * ((rank - below) / (count - below))


def bucket_share_at_or_below(threshold: float, buckets: Iterable[Bucket]) -> float:
    """Share of observations <= threshold, interpolated linearly inside its bucket; NaN when undefined."""
    prepared = _prepared(buckets)
    if prepared is None or len(prepared) < 2 or math.isnan(threshold):
        return math.nan
    observations = prepared[-1][1]
    if not observations > 0:
        return math.nan
    lower, below = 0.0, 0.0
    for bound, count in prepared[:-1]:
        if threshold <= bound:
            if bound <= lower:  # a first bucket at or below zero: no width to interpolate in
                return (count if threshold >= bound else below) / observations
            fraction = max(threshold - lower, 0.0) / (bound - lower)
            return (below + (count - below) * fraction) / observations
        lower, below = bound, count
    return below / observations  # past the last finite bound: +Inf observations count as misses


# A uniform stream's sampled-block count varies by about sqrt(expected) (binomial at a rate far below 1);
# a difference from the expected count within this many of those is no sign of a hot block.
SAMPLE_NOISE_SIGMAS = 2.0


def reuse_share_within(
    buckets: Iterable[Bucket], expected_samples: float | None
) -> tuple[tuple[float, float], ...] | None:
    """A reuse-distance histogram (`dopd_prompt_reuse_distance_tokens`) as (cache tokens, share of
    prompt-block tokens reused within them), one pair per finite bound; None without observations (the
    curve is then unknown, and the hit rate is taken as the same at every pool size).

    `expected_samples` (the router's `dopd_prompt_reuse_expected_samples_total` over the same window):
    SHARDS-adj's correction, the difference between the samples a uniform stream would give and those
    taken counted as reuses at the smallest distance, where the few hottest blocks (whose sampling or not
    moves the whole curve) live; only the part of it beyond what sampling alone gives a uniform stream
    (SAMPLE_NOISE_SIGMAS x sqrt(expected)): a count off by chance is off over every distance alike, and
    the sampled blocks' own shares are then the better guide. Counted whole, chance's difference moved
    every share by as much: over 39 one-minute windows of the Mooncake prompts (seeds 0-2, 1 block in
    32) the curve read 0.024-0.031 low on average at 4-16 replicas' cache (0.045 where 85 samples too
    many, 2 sigma, were taken of 1,763 expected); now 0.002-0.010 (tests/sim/test_prefix_cache.py), and
    a Zipf stream's hottest blocks are still corrected (tests/worker/test_prefix_reuse.py). None: the
    shares of the sampled blocks as they are."""
    prepared = _prepared(buckets)
    if prepared is None or len(prepared) < 2 or not prepared[-1][1] > 0:
        return None
    sampled = prepared[-1][1]
    extra = 0.0
    if expected_samples is not None and expected_samples > 0:
        difference = expected_samples - sampled
        beyond_chance = abs(difference) - SAMPLE_NOISE_SIGMAS * math.sqrt(expected_samples)
        extra = math.copysign(max(beyond_chance, 0.0), difference)
    total = sampled + extra
    return tuple(
        (bound, min(max((count + extra) / total, 0.0), 1.0)) for bound, count in prepared[:-1] if bound > 0
    )


# Fewer sampled blocks than this in a window say too little about how the hits fall on prompts (about 20
# a position tenth, a share within about 0.1): the hit rate is then spread evenly over the prompts.
MIN_POSITION_SAMPLES = 200


def hit_mix_from_positions(
    sampled: Iterable[Bucket], reused: Iterable[Bucket]
) -> tuple[tuple[float, float], ...] | None:
    """How the prefix-cache hits fall on prompts (`capacity.Workload.prefix_hit_mix`: pairs of the share
    of a prompt served from the cache and the share of the prompt tokens in prompts served so), from
    where in their prompts the router's sampled blocks sit (`dopd_prompt_reuse_sampled_position_ratio`)
    and those of them used before (`dopd_prompt_reuse_reused_position_ratio`).

    A cache serves a prompt a prefix, so among the blocks at position u the share reused is the share of
    prompt tokens in prompts that find more than u of themselves cached, S(u), non-increasing (made so).
    Between two position buckets' middles S falls by the share cached that deep, counted at the bound
    between them; the top bucket's share at halfway between its middle and 1; prompts cached no deeper
    than the first middle count as hitting nothing. None with fewer than MIN_POSITION_SAMPLES sampled
    blocks, or a position bucket without one."""
    every, hits = _prepared(sampled), _prepared(reused)
    if every is None or hits is None or every[-1][1] < MIN_POSITION_SAMPLES:
        return None
    reused_by_bound = dict(hits)
    previous_bound, previous_count, previous_reused = 0.0, 0.0, 0.0
    buckets: list[tuple[float, float, float]] = []  # (middle, upper bound, share reused)
    for bound, count in every:
        if not math.isfinite(bound):
            break
        reused_count = reused_by_bound.get(bound, math.nan)
        samples, reuses = count - previous_count, reused_count - previous_reused
        if not samples > 0 or math.isnan(reuses):
            return None
        buckets.append(((previous_bound + bound) / 2, bound, min(max(reuses / samples, 0.0), 1.0)))
        previous_bound, previous_count, previous_reused = bound, count, reused_count
    if not buckets:
        return None
    levels = [bound for _, bound, _ in buckets[:-1]] + [(buckets[-1][0] + buckets[-1][1]) / 2]
    shares = np.minimum.accumulate([share for _, _, share in buckets])
    deeper = np.append(shares[1:], 0.0)
    mix = [(level, float(s - d)) for level, s, d in zip(levels, shares, deeper, strict=True) if s > d]
    return tuple(sorted(mix, reverse=True))


def histogram_from_values(
    values: FloatArray, upper_bounds: Sequence[float], weights: FloatArray | None = None
) -> list[Bucket]:
    """Cumulative buckets (`le` semantics, +Inf appended) of `values`, each counted `weights` times."""
    bounds = np.asarray(upper_bounds, dtype=np.float64)
    index = np.searchsorted(bounds, values, side="left")  # first bound >= value: the `le` bucket
    counts = np.bincount(index, weights=weights, minlength=len(bounds) + 1).astype(np.float64)
    cumulative = np.cumsum(counts)
    return [(float(b), float(c)) for b, c in zip([*bounds.tolist(), math.inf], cumulative, strict=True)]


@dataclass(frozen=True)
class HistogramSummary:
    """What one histogram over the window says; None fields are unknown, `problem` says why."""

    observations: float | None
    mean: float | None
    quantile: float | None
    share_at_or_below: float | None
    problem: str | None


def summarize_histogram(
    name: str,
    buckets: Sequence[Bucket] | None,
    sum_increase: float | None = None,
    q: float | None = None,
    threshold: float | None = None,
) -> HistogramSummary:
    """Mean (from the sum and the +Inf count), the q-quantile and the share <= threshold of `name`."""
    if not buckets:
        return HistogramSummary(None, None, None, None, f"{name}: no series")
    prepared = _prepared(buckets)
    if prepared is None:
        return HistogramSummary(None, None, None, None, f"{name}: no +Inf bucket")
    count = prepared[-1][1]
    if not math.isfinite(count) or any(not math.isfinite(c) for _, c in prepared):
        return HistogramSummary(None, None, None, None, f"{name}: bucket counts are NaN or infinite")
    if count <= 0:
        return HistogramSummary(count, None, None, None, f"{name}: no observations in the window")
    problem = None
    mean = None
    if sum_increase is not None:
        if math.isfinite(sum_increase):
            mean = sum_increase / count
        else:
            problem = f"{name}: the sum of observations is {sum_increase}"
    quantile = bucket_quantile(q, prepared) if q is not None else None
    share = bucket_share_at_or_below(threshold, prepared) if threshold is not None else None
    return HistogramSummary(
        observations=count,
        mean=mean,
        quantile=quantile if quantile is not None and math.isfinite(quantile) else None,
        share_at_or_below=share if share is not None and math.isfinite(share) else None,
        problem=problem,
    )


def bucket_variance(buckets: Sequence[Bucket], mean: float) -> float | None:
    """The observations' variance read from cumulative buckets: each bucket's count at its midpoint,
    plus the spread within it (a uniform one's width^2/12); the +Inf bucket's at its lower bound (an
    underestimate only where the histogram's last bound is too low for the lengths). None: no +Inf
    bucket or no observations."""
    prepared = _prepared(buckets)
    if prepared is None or prepared[-1][1] <= 0:
        return None
    total, second_moment, lower, below = prepared[-1][1], 0.0, 0.0, 0.0
    for bound, cumulative in prepared:
        count = cumulative - below
        if count > 0:
            upper = bound if math.isfinite(bound) else lower
            middle = (lower + upper) / 2
            second_moment += count * ((middle - mean) ** 2 + (upper - lower) ** 2 / 12)
        lower, below = bound if math.isfinite(bound) else lower, cumulative
    return second_moment / total


@dataclass(frozen=True)
class LengthTrend:
    """How fast a length's mean moves (this window's mean less the one before, over the window) and the
    standard error two windows of the same mix differ by; None fields are unknown."""

    tokens_per_s: float | None
    noise_tokens_per_s: float | None


def length_trend(
    buckets: Sequence[Bucket] | None,
    sum_tokens: float | None,
    previous_count: float | None,
    previous_sum_tokens: float | None,
    window_seconds: float,
) -> LengthTrend:
    """The mean length's slope between the window before and this one (`buckets` and `sum_tokens`:
    this window's histogram; the `previous_` ones the same counters' increases over the window before),
    and its noise: the spread this window's buckets show, over the requests each window holds. Unknown
    where either window has no requests or a sum is missing."""
    unknown = LengthTrend(None, None)
    prepared = _prepared(buckets) if buckets else None
    if (
        prepared is None
        or sum_tokens is None
        or previous_count is None
        or previous_sum_tokens is None
        or not all(math.isfinite(x) for x in (sum_tokens, previous_count, previous_sum_tokens))
    ):
        return unknown
    count = prepared[-1][1]
    if count <= 0 or previous_count <= 0 or window_seconds <= 0:
        return unknown
    mean = sum_tokens / count
    variance = bucket_variance(prepared, mean)
    if variance is None:
        return unknown
    slope = (mean - previous_sum_tokens / previous_count) / window_seconds
    noise = math.sqrt(variance * (1 / count + 1 / previous_count)) / window_seconds
    return LengthTrend(slope, noise)


def tpot_attainment_with_waits(
    gaps: HistogramSummary,
    waits_name: str,
    waits: Sequence[Bucket] | None,
    tpot_slo_seconds: float,
    output_tokens_mean: float | None,
) -> tuple[float | None, str | None]:
    """The share of requests within the TPOT SLO as users see it, where the TPOT histogram `gaps` times
    only the gaps between a running sequence's tokens and `waits` (cumulative buckets) each request's
    wait before its first decode step (vLLM's and SGLang's decode queue time): the gaps' share times the
    share of requests whose wait fits in the slack their gaps leave, (SLO - mean gap) x (mean output
    tokens - 1), since a request meets TPOT when its wait and its gaps together average within the SLO.
    Taken as independent, the product is not a per-request count (marginal histograms cannot give one),
    but it falls when sequences wait for a slot, which the gaps' share alone never does. (The slack at
    each output length instead of the mean, over the length histogram, read 58% where 73% of the
    requests met the SLO in the emulator, the mean's 75%: tests/emulator/test_emulation.py.) Returns
    (share, None), or (None, why) where the waits or the slack cannot be read."""
    if gaps.share_at_or_below is None:
        return None, None  # the gaps' own problem says why
    if gaps.mean is None or output_tokens_mean is None:
        return None, (
            "TPOT attainment: unknown: the slack a wait for a decode slot may take needs the mean "
            f"inter-token latency and the mean output length (one is unknown), and {waits_name} is read "
            "against it"
        )
    slack_s = max(tpot_slo_seconds - gaps.mean, 0.0) * max(output_tokens_mean - 1.0, 1.0)
    within = summarize_histogram(waits_name, waits, threshold=slack_s)
    if within.share_at_or_below is None:
        why = within.problem or f"{waits_name}: no share at or below {slack_s:.3g} s"
        return None, (
            f"TPOT attainment: unknown: {why} (the decode pods' wait for their KV and a free slot, which "
            "the inter-token histogram leaves out)"
        )
    return gaps.share_at_or_below * within.share_at_or_below, None


# ----------------------------------------------------------------------------------------- arrivals


@dataclass(frozen=True)
class Intervals:
    """One source's arrivals between consecutive samples (one pod's counter, or the simulator's 1 s
    bins): how many arrived in each interval (start, end], oldest first."""

    starts_s: FloatArray
    ends_s: FloatArray
    amounts: FloatArray

    @classmethod
    def bins(cls, counts: FloatArray, first_start_s: float, bin_seconds: float) -> Intervals:
        starts = first_start_s + np.arange(len(counts), dtype=np.float64) * bin_seconds
        return cls(starts, starts + bin_seconds, np.asarray(counts, dtype=np.float64))


def counter_increments(values: FloatArray) -> FloatArray:
    """Increase between consecutive samples of one counter; a drop is a restart from zero (Prometheus)."""
    step = np.diff(values)
    restarted = step < 0
    step[restarted] = values[1:][restarted]
    return step


def arrivals_until(sources: Sequence[Intervals], times_s: FloatArray) -> FloatArray:
    """Arrivals up to each time, each interval's amount spread evenly over the interval."""
    total = np.zeros(len(times_s), dtype=np.float64)
    for source in sources:
        length = np.maximum(source.ends_s - source.starts_s, 1e-9)
        share = np.clip((times_s[:, None] - source.starts_s[None, :]) / length[None, :], 0.0, 1.0)
        total += share @ source.amounts
    return total


def least_squares_slope(times_s: FloatArray, values: FloatArray) -> float:
    """Slope of the least-squares line through (time, value), per second (PromQL `deriv`)."""
    if len(values) < 2:
        return math.nan
    centred = times_s - np.mean(times_s)
    spread = float(np.dot(centred, centred))
    return float(np.dot(centred, values - np.mean(values))) / spread if spread > 0 else math.nan


def slope_noise_rps_per_s(
    rates_rps: FloatArray, scv: float, bin_seconds: float, spread_s2: float
) -> FloatArray:
    """Standard error of the least-squares slope of a rate read in bins of `bin_seconds`, for arrivals
    at each of `rates_rps` with dispersion `scv` (1 for Poisson) and no trend: a bin's rate has variance
    scv * rate / bin, so the slope has scv * rate / (bin * spread), `spread` the sum of the squared
    centred bin times. The trend guard extrapolates only the rise beyond it (`planner_load.provisioned_rate`,
    and `surge.surge_headroom` for every past moment)."""
    if bin_seconds <= 0 or spread_s2 <= 0:
        return np.zeros_like(rates_rps)
    out: FloatArray = np.sqrt(max(scv, 0.0) * np.maximum(rates_rps, 0.0) / (bin_seconds * spread_s2))
    return out


def centred_times(bins: int, bin_seconds: float) -> FloatArray:
    """Bin times (s) centred on the window's middle: the least-squares slope's abscissae."""
    out: FloatArray = (np.arange(bins, dtype=np.float64) - (bins - 1) / 2.0) * bin_seconds
    return out


def window_slopes(rates_rps: FloatArray, bins: int, bin_seconds: float) -> FloatArray:
    """Least-squares slope (per second) over each bin's last `bins` rates, oldest first (NaN where fewer
    than `bins` precede it, or any of them is unknown)."""
    n = len(rates_rps)
    out: FloatArray = np.full(n, np.nan)
    if bins < 2 or n < bins:
        return out
    x = centred_times(bins, bin_seconds)
    weights = x / float(np.sum(x * x))
    # slope_i = sum_j weights[j] * rates[i - bins + 1 + j]
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(rates_rps, dtype=np.float64), bins)
    out[bins - 1 :] = windows @ weights
    return out


def guarded_slopes(
    rates_rps: FloatArray, bins: int, bin_seconds: float, level_rps: FloatArray, scv: float
) -> FloatArray:
    """The trend the planner extrapolates, at each bin: the least-squares slope over the last `bins`
    rates, at most the slope of their recent half plus that half's noise at `level_rps` (a rise that
    has stopped is over, while the slope across the whole window still climbs; a rise under way shows
    the same slope in both halves). `summarize_arrivals` reads it for now, `surge.surge_headroom` for
    every past moment: one rule for both."""
    slope = window_slopes(rates_rps, bins, bin_seconds)
    recent = bins // 2
    if recent < 2:
        return slope
    x = centred_times(recent, bin_seconds)
    noise = slope_noise_rps_per_s(level_rps, scv, bin_seconds, float(np.sum(x * x)))
    out: FloatArray = np.minimum(slope, window_slopes(rates_rps, recent, bin_seconds) + noise)
    return out


# A level change (the load stepping from one flat level to another) is told from noise and from a ramp
# by how much of the bins' spread it explains beyond each, in units of the residual's variance per bin:
# an F statistic. For Poisson counts with no change, the largest over every split point of two minutes of
# 1 s bins stays under about 15; a 2x step at 100 rps scores in the thousands, a 10% one about 28 against
# one level and less against a line (it is left to the rate and the trend).
LEVEL_CHANGE_SCORE = 25.0
MIN_LEVEL_BINS = 3  # each level needs this many bins to be read as flat


@dataclass(frozen=True)
class LevelChange:
    """The rate stepped at bin `index` (the first bin of the new level) from `before_rps` to `after_rps`."""

    index: int
    before_rps: float
    after_rps: float


def level_change(
    rates_rps: FloatArray, min_bins: int = MIN_LEVEL_BINS, score: float = LEVEL_CHANGE_SCORE
) -> LevelChange | None:
    """The most likely single step in `rates_rps` (equal-width bins, oldest first), if two flat levels
    explain the bins better than one level and better than a straight line, each by at least `score`
    times the residual variance per bin; None otherwise (no change, or a ramp: the trend reads those).

    A step inside the metrics window is not burstiness (the counts' variance around one mean would be
    mostly the step's) and not a trend to extrapolate (the slope across it would carry the jump forward
    over a whole lead time): the load is flat at its new level, which is what `summarize_arrivals` reads."""
    rates = np.asarray(rates_rps, dtype=np.float64)
    n = len(rates)
    if n < 2 * min_bins or not np.all(np.isfinite(rates)):
        return None
    total = float(np.sum(rates))
    centred = rates - total / n
    one_level = float(np.dot(centred, centred))
    if one_level <= 0:
        return None
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    line = one_level - float(np.dot(x, centred)) ** 2 / float(np.dot(x, x))
    splits = np.arange(min_bins, n - min_bins + 1)
    before = np.cumsum(rates)[splits - 1]
    sum_squares = float(np.dot(rates, rates))
    two_levels = sum_squares - before**2 / splits - (total - before) ** 2 / (n - splits)
    best = int(np.argmin(two_levels))
    residual = max(float(two_levels[best]), 0.0)
    per_bin = residual / max(n - 3, 1)
    if per_bin <= 0:  # noiseless: any explained spread is a step
        per_bin = 1e-12 * one_level
    if (one_level - residual) / per_bin < score or (line - residual) / per_bin < score:
        return None
    index = int(splits[best])
    later = level_change(rates[index:], min_bins, score)  # the load may have stepped again since
    if later is not None:
        return LevelChange(index + later.index, later.before_rps, later.after_rps)
    return LevelChange(index, float(np.mean(rates[:index])), float(np.mean(rates[index:])))


@dataclass(frozen=True)
class ArrivalSummary:
    rate_rps: float | None
    scv: float | None
    trend_rps_per_s: float | None
    problems: tuple[str, ...]
    trend_noise_rps_per_s: float | None = None  # the trend's standard error under `scv`; None: unknown
    level_age_seconds: float | None = None  # since the rate stepped (`level_change`); None: no step
    # While the series is younger than the trend window: the seconds of data the trend was fitted over
    # (the planner extrapolates it no further ahead); None: the whole window (or a new level's bins).
    trend_span_seconds: float | None = None


class LoadFields(TypedDict):
    """The `planner_types.Observation` fields that the arrivals and the lengths' trends fill."""

    arrival_rate_rps: float | None
    arrival_scv: float | None
    arrival_rate_trend_rps_per_s: float | None
    arrival_rate_trend_noise_rps_per_s: float | None
    arrival_level_age_seconds: float | None
    arrival_rate_trend_span_seconds: float | None
    input_tokens_trend_per_s: float | None
    input_tokens_trend_noise_per_s: float | None
    output_tokens_trend_per_s: float | None
    output_tokens_trend_noise_per_s: float | None


def load_fields(arrivals: ArrivalSummary, input_trend: LengthTrend, output_trend: LengthTrend) -> LoadFields:
    """The Observation fields of a reading's arrivals and lengths' trends, the same for the operator's
    reading (`readings`) and the simulator's (`dopd_sim.observe`)."""
    return LoadFields(
        arrival_rate_rps=arrivals.rate_rps,
        arrival_scv=arrivals.scv,
        arrival_rate_trend_rps_per_s=arrivals.trend_rps_per_s,
        arrival_rate_trend_noise_rps_per_s=arrivals.trend_noise_rps_per_s,
        arrival_level_age_seconds=arrivals.level_age_seconds,
        arrival_rate_trend_span_seconds=arrivals.trend_span_seconds,
        input_tokens_trend_per_s=input_trend.tokens_per_s,
        input_tokens_trend_noise_per_s=input_trend.noise_tokens_per_s,
        output_tokens_trend_per_s=output_trend.tokens_per_s,
        output_tokens_trend_noise_per_s=output_trend.noise_tokens_per_s,
    )


def trend_bins(rates_rps: FloatArray, step: LevelChange | None) -> FloatArray | None:
    """The trend window's bins (oldest first) a trend is read over: all of them; after a level change
    (`step`, found in them), the new level's, once they span half the window; None before that: a
    fresh level has no trend to extrapolate (the trend is 0, its rate alone counts). One rule for the
    observation (`summarize_arrivals`) and the surge headroom's reading of every past moment."""
    if step is None:
        return rates_rps
    new = rates_rps[step.index :]
    return new if 2 * len(new) >= len(rates_rps) else None


def read_trend(
    rates_rps: FloatArray, bin_seconds: float, rate_rps: float, scv: float | None
) -> tuple[float, float | None] | None:
    """The trend (rps per second) over these equal bins, oldest first, and its noise: the least-squares
    slope, at most the recent half's slope plus its noise when the burstiness `scv` is known
    (`guarded_slopes`); the noise is the slope's standard error for a load with no trend at `rate_rps`
    (None with the burstiness unknown: then the whole slope counts). None with fewer than
    `MIN_TREND_BINS` bins or no finite slope."""
    bins = len(rates_rps)
    if bins < MIN_TREND_BINS:
        return None
    x = centred_times(bins, bin_seconds)
    slope = least_squares_slope(x, rates_rps)
    if not math.isfinite(slope):
        return None
    if scv is None:
        return slope, None
    at = np.array([rate_rps])
    noise = float(slope_noise_rps_per_s(at, scv, bin_seconds, float(np.sum(x * x)))[0])
    guarded = float(guarded_slopes(rates_rps, bins, bin_seconds, at, scv)[-1])
    return (guarded if math.isfinite(guarded) else slope), noise


def _dispersion(
    sources: Sequence[Intervals], since_s: float, until_s: float
) -> tuple[float, float, int, float]:
    """Summed variance and mean of per-interval counts over the sources, degrees of freedom, arrivals.

    Each source on its own intervals (no alignment across pods needed), only those of its usual
    length (a missed scrape makes one twice as long); for independent sources the dispersion of the
    sum is sum(variance) / sum(mean)."""
    variance = mean = arrivals = 0.0
    freedom = 0
    for source in sources:
        recent = (source.ends_s > since_s) & (source.ends_s <= until_s)
        length = (source.ends_s - source.starts_s)[recent]
        if len(length) < 2:
            continue
        usual = np.abs(length - np.median(length)) <= 0.1 * np.median(length)
        counts = source.amounts[recent][usual]
        if len(counts) < 2:
            continue
        variance += float(np.var(counts, ddof=1))
        mean += float(np.mean(counts))
        freedom += len(counts) - 1
        arrivals += float(np.sum(counts))
    return variance, mean, freedom, arrivals


def min_rate_coverage_seconds(window_seconds: float, interval_seconds: float) -> float:
    """How much data a rate needs: `MIN_RATE_INTERVALS` scrapes and `MIN_RATE_WINDOW_SHARE` of the
    window, capped at the whole window."""
    return min(
        window_seconds, max(MIN_RATE_INTERVALS * interval_seconds, MIN_RATE_WINDOW_SHARE * window_seconds)
    )


def summarize_arrivals(
    sources: Sequence[Intervals], window_seconds: float, trend_seconds: float = TREND_WINDOW_SECONDS
) -> ArrivalSummary:
    """Rate and burstiness over the last `window_seconds` of data, trend over the last `trend_seconds`.

    The data ends where every live source has reported: pods are scraped at different moments, so the
    newest sample of one is up to an interval ahead of the others (a source more than 1.5 usual
    intervals behind the newest has stopped and does not hold the end back); it starts where every
    source present from the beginning has (a pod started later adds what it saw). rate: arrivals in the
    window / its length (shorter while the data is younger); burstiness: index of dispersion of the
    per-interval counts; trend: least-squares slope of the rate in bins of the usual interval, with the
    burstiness known at most the slope of the window's recent half plus that half's noise (a rise that
    has stopped is over, while the slope across the whole window still climbs; a rise under way shows
    the same slope in both; with the burstiness unknown the noise is too, and the whole slope counts);
    while the series is younger than the trend window, over the `MIN_TREND_BINS` or more intervals it
    has (a shorter fit is noisier, and its noise says so; `trend_span_seconds` says how long it spans).
    After a step between two flat levels in the trend window (`level_change`), the rate is read from
    the step on, the burstiness within each level, and the trend over the new level's bins once they
    span half the trend window (0 before); `level_age_seconds` says how long ago it stepped. With less
    data than `min_rate_coverage_seconds`, nothing is known (a series that just started)."""
    sources = [s for s in sources if len(s.amounts)]
    if not sources:
        return ArrivalSummary(None, None, None, ("arrival rate: fewer than two samples per series yet",))
    width = float(np.median(np.concatenate([s.ends_s - s.starts_s for s in sources])))
    newest = max(float(s.ends_s[-1]) for s in sources)
    end_s = min(float(s.ends_s[-1]) for s in sources if float(s.ends_s[-1]) >= newest - 1.5 * width)
    oldest = min(float(s.starts_s[0]) for s in sources)  # likewise at the start: pods begin at their scrape
    covered_s = end_s - max(
        float(s.starts_s[0]) for s in sources if float(s.starts_s[0]) <= oldest + 1.5 * width
    )
    span = min(window_seconds, covered_s)
    if span <= 0:
        return ArrivalSummary(None, None, None, ("arrival rate: no interval ends in the window",))
    needed_s = min_rate_coverage_seconds(window_seconds, width)
    if covered_s < needed_s - 1e-6 * width:
        return ArrivalSummary(
            None,
            None,
            None,
            (
                f"arrival rate: {covered_s:.0f} s of data, {needed_s:.0f} s needed before a rate is read "
                f"({MIN_RATE_INTERVALS} scrapes and {MIN_RATE_WINDOW_SHARE:.0%} of the {window_seconds:g} s "
                "window): the series just started",
            ),
        )
    # The trend is read over the trend window, or over the whole intervals there are while the series is
    # younger than it (a model that just started on a rising load: item 3's first tick sizes for the
    # rise). A young fit has fewer bins and so a larger noise, and only the rise beyond its noise is
    # extrapolated (`planner_load.provisioned_rate`): a young series at a flat load reads no rise.
    bins = int(min(covered_s, trend_seconds) / width + 1e-9)
    problems: list[str] = []
    rates = np.zeros(0, dtype=np.float64)
    step: LevelChange | None = None
    if bins >= MIN_TREND_BINS:
        edges = end_s - width * np.arange(bins, -1, -1, dtype=np.float64)
        rates = np.diff(arrivals_until(sources, edges)) / width
        step = level_change(rates)
    elif trend_seconds / width < MIN_TREND_BINS - 1e-9:
        problems.append(
            f"arrival trend: {bins} intervals of {width:g} s in the {trend_seconds:g} s trend window, "
            f"{MIN_TREND_BINS} needed (shorten the scrape interval)"
        )
    else:
        problems.append(
            f"arrival trend: {bins} intervals of {width:g} s so far, {MIN_TREND_BINS} needed before a "
            "trend is read: the series just started"
        )
    # After a level change the load is read from the change on (within the window): its rate, and its
    # burstiness within each level; the trend only over the new level's bins, once they span half the
    # trend window (before that, a fresh level has no trend to extrapolate).
    change_s = end_s - width * (len(rates) - step.index) if step is not None else None
    since_s = end_s - span if change_s is None else max(end_s - span, change_s)
    at = arrivals_until(sources, np.asarray([since_s, end_s], dtype=np.float64))
    rate = float(at[1] - at[0]) / (end_s - since_s)
    parts = [(end_s - span, end_s)]
    if change_s is not None and change_s > end_s - span:
        parts = [(end_s - span, change_s), (change_s, end_s)]
    variance = mean = arrivals = 0.0
    freedom = 0
    for lo, hi in parts:
        v, m, f, a = _dispersion(sources, lo, hi)
        variance, mean, freedom, arrivals = variance + v * f, mean + m * f, freedom + f, arrivals + a
    scv: float | None = None
    if freedom < MIN_DISPERSION_BINS - 1:
        problems.append(
            f"arrival burstiness: {freedom + 1} intervals in the {span:g} s window, {MIN_DISPERSION_BINS} "
            "needed (shorten the scrape interval or lengthen the window)"
        )
    elif arrivals < MIN_DISPERSION_ARRIVALS:
        problems.append(
            f"arrival burstiness: {arrivals:g} arrivals in the window, {MIN_DISPERSION_ARRIVALS:g} needed"
        )
    elif mean > 0:
        scv = variance / mean
    trend: float | None = None
    noise: float | None = None
    young_s: float | None = None
    if len(rates):
        fitted = trend_bins(rates, step)
        read = read_trend(fitted, width, rate, scv) if fitted is not None else (0.0, None)
        if read is not None:
            trend, noise = read
        elif step is not None:
            trend = 0.0
        if fitted is not None and trend is not None and covered_s < trend_seconds - width:
            young_s = len(fitted) * width
    age = end_s - change_s if change_s is not None else None
    return ArrivalSummary(rate, scv, trend, tuple(problems), noise, age, young_s)
