"""Prometheus answers -> the planner's `Observation`, for one model and tick. Unknown is never zero.

Input: the two instant answers of a `presets.QuerySet` (the tagged aggregate vector and the raw
matrix), the evaluation time, and what the cluster says about each role's pods. Every field is either
estimated (`estimators`, the code the simulator uses too) or None with a line in
`Observation.problems` saying which series and why:
- no series (an empty vector: a family the engine does not expose, a selector that matches nothing);
- NaN or infinite values;
- stale: a gauge or arrival counter whose newest raw sample is older than `stale_after_seconds`
  (a target that stopped answering keeps its old samples in the range vector);
- too few pods: fewer pods report a gauge than the role has Ready (a sum over the others would
  undercount the queue);
- out of range (a KV usage above 1, a negative queue, a negative estimated arrival rate).
A name that Prometheus stores with both spellings of one series (colon and underscore) counts once.

Pure. Callers: `source.MetricsSource.observe`, the tests (with literal answers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dopd_operator.metrics.estimators import (
    ArrivalSummary,
    Bucket,
    FloatArray,
    HistogramSummary,
    Intervals,
    LengthTrend,
    counter_increments,
    hit_mix_from_positions,
    length_trend,
    load_fields,
    reuse_share_within,
    summarize_arrivals,
    summarize_histogram,
    tpot_attainment_with_waits,
)
from dopd_operator.metrics.presets import TAG_LABEL, GaugeRead, HistogramRead, LengthRead, QuerySet
from dopd_operator.metrics.promql import InstantSample, RangeSeries, canonical_names
from dopd_operator.planner_types import Observation, RoleObservation


@dataclass(frozen=True)
class _Series:
    family: str  # canonical name (colon spelling)
    role: str
    source: str  # the pod (or target) it comes from
    times_s: FloatArray
    values: FloatArray

    @property
    def last_time_s(self) -> float:
        return float(self.times_s[-1])

    @property
    def last_value(self) -> float:
        return float(self.values[-1])


@dataclass
class _Aggregates:
    buckets: dict[str, list[Bucket]]
    scalars: dict[str, float]


def _aggregates(samples: Sequence[InstantSample], problems: list[str]) -> _Aggregates:
    found = _Aggregates({}, {})
    for sample in samples:
        tag = sample.metric.get(TAG_LABEL)
        if tag is None:
            continue
        key, _, part = tag.partition("/")
        if part == "bucket":
            try:
                bound = float(sample.metric.get("le", ""))
            except ValueError:
                problems.append(f"{key}: a bucket without a numeric le label ({sample.metric})")
                continue
            found.buckets.setdefault(key, []).append((bound, sample.number))
        elif tag in found.scalars:  # `sum` returns one series; two mean the answer is not understood
            problems.append(f"{tag}: several series where one was expected")
            found.scalars[tag] = math.nan
        else:
            found.scalars[tag] = sample.number
    return found


def _raw(queries: QuerySet, matrix: Sequence[RangeSeries]) -> dict[tuple[str, str], list[_Series]]:
    spellings = canonical_names(queries.preset.raw_families())
    unique: dict[tuple[str, tuple[tuple[str, str], ...]], _Series] = {}
    for entry in matrix:
        family = spellings.get(entry.metric.get("__name__", ""))
        if family is None or not entry.values:
            continue
        labels = tuple(sorted((k, v) for k, v in entry.metric.items() if k != "__name__"))
        series = _Series(
            family=family,
            role=entry.metric.get(queries.role_label, ""),
            source=entry.metric.get("pod") or entry.metric.get("instance") or str(labels),
            times_s=np.asarray([t for t, _ in entry.values], dtype=np.float64),
            values=np.asarray([v for _, v in entry.values], dtype=np.float64),
        )
        key = (family, labels)
        known = unique.get(key)  # the same series under both spellings: keep the newer one
        if known is None or series.last_time_s > known.last_time_s:
            unique[key] = series
    grouped: dict[tuple[str, str], list[_Series]] = {}
    for series in unique.values():
        grouped.setdefault((series.family, series.role), []).append(series)
    return grouped


def _unknown(reason: str) -> ArrivalSummary:
    return ArrivalSummary(None, None, None, (reason,))


class _Reader:
    def __init__(
        self,
        queries: QuerySet,
        aggregates: _Aggregates,
        raw: dict[tuple[str, str], list[_Series]],
        evaluated_at_s: float,
        stale_after_seconds: float,
        ready: Mapping[str, int],
        problems: list[str],
    ) -> None:
        self.queries = queries
        self.aggregates = aggregates
        self.raw = raw
        self.now_s = evaluated_at_s
        self.stale_after_s = stale_after_seconds
        self.ready = ready
        self.problems = problems

    def _name(self, family: str, *roles: str) -> str:
        return f'{family}{{{self.queries.role_label}=~"{"|".join(roles)}"}}'

    def histogram(self, key: str, read: HistogramRead, with_sum: bool, **kwargs: float) -> HistogramSummary:
        family, tag = read.family, key
        if (
            not self.aggregates.buckets.get(tag)
            and read.fallback
            and self.aggregates.buckets.get(f"{key}.fallback")
        ):
            family, tag = read.fallback, f"{key}.fallback"
        name = self._name(family, read.role)
        total = self.aggregates.scalars.get(f"{tag}/sum") if with_sum else None
        summary = summarize_histogram(name, self.aggregates.buckets.get(tag), total, **kwargs)
        if summary.problem is None and with_sum and total is None and summary.observations:
            summary = HistogramSummary(
                summary.observations,
                None,
                summary.quantile,
                summary.share_at_or_below,
                f"{name}_sum: no series",
            )
        return summary

    def tpot_means(
        self, tpot: HistogramSummary, wait: HistogramRead, includes_wait: bool
    ) -> tuple[float | None, float | None]:
        """(The mean gap users see, the decode step's mean) over the TPOT histogram's count: its sum with
        the decode pods' waits before a first decode step added where the histogram leaves them out
        (vLLM, SGLang), or taken off where it times them in a first gap (dopd's router)
        (`EnginePreset.decode_wait`). The one the histogram does not time directly is unknown, with a
        problem line, where the waits are not exposed: without them a pool that makes sequences wait
        for slots reads as a fast one (the gap users see), or as a slow engine (the step)."""
        if tpot.mean is None or not tpot.observations:
            return tpot.mean, tpot.mean
        waited = self.aggregates.scalars.get("decode_wait/sum")
        if waited is None or not math.isfinite(waited):
            unknown = (
                "decode step mean: unknown, so the decode correction holds"
                if includes_wait
                else "TPOT mean as users see it: unknown"
            )
            self.problems.append(
                f"{unknown} ({self._name(wait.family, wait.role)}_sum has no series: the decode pods' wait "
                "for a free slot before a first decode step)"
            )
            return (tpot.mean, None) if includes_wait else (None, tpot.mean)
        if includes_wait:
            return tpot.mean, max(tpot.mean - waited / tpot.observations, 0.0)
        return tpot.mean + waited / tpot.observations, tpot.mean

    def tpot_attainment_with_waits(
        self, tpot: HistogramSummary, wait: HistogramRead, output_mean: float | None
    ) -> float | None:
        """The TPOT attainment: the gaps' share, scaled by the share of requests whose wait for a decode
        slot fits in their slack where the preset's histogram leaves the waits out
        (`EnginePreset.decode_wait`, `estimators.tpot_attainment_with_waits`); unknown, with a problem
        line, where the waits cannot be read (never the gaps' share alone, which reads a decode pool
        past its slots as meeting the SLO: docs/metrics.md)."""
        share, problem = tpot_attainment_with_waits(
            tpot,
            self._name(wait.family, wait.role),
            self.aggregates.buckets.get("decode_wait"),
            self.queries.tpot_slo_seconds,
            output_mean,
        )
        if problem is not None:
            self.problems.append(problem)
        return share

    def lengths(self, key: str, read: LengthRead) -> tuple[float | None, float | None]:
        summary = self.histogram(key, read.histogram, True, q=0.9)
        if summary.observations is None and read.totals is not None:
            tokens = self.aggregates.scalars.get(f"{key}.totals/tokens")
            requests = self.aggregates.scalars.get(f"{key}.totals/requests")
            if tokens is not None and requests is not None and math.isfinite(tokens) and requests > 0:
                self.problems.append(
                    f"{key} tokens P90: {read.histogram.family} is not exposed (SGLang: "
                    "--collect-tokens-histogram); the mean comes from the token and request counters"
                )
                return tokens / requests, None
        if summary.problem:
            self.problems.append(summary.problem)
        return summary.mean, summary.quantile

    def length_trend(self, key: str) -> LengthTrend:
        """The mean length's slope from the window before to this one and its noise
        (`estimators.length_trend`); unknown where the histogram or the window before has no answer
        (a series younger than two windows, SGLang without its token histograms)."""
        scalars = self.aggregates.scalars
        return length_trend(
            self.aggregates.buckets.get(key),
            scalars.get(f"{key}/sum"),
            scalars.get(f"{key}.previous/count"),
            scalars.get(f"{key}.previous/sum"),
            self.queries.window_seconds,
        )

    def gauge(self, field: str, read: GaugeRead, upper: float = math.inf) -> float | None:
        family = next((f for f in read.families if all(self.raw.get((f, r)) for r in read.roles)), None)
        if family is None:
            missing = [r for r in read.roles if not self.raw.get((read.families[0], r))]
            self.problems.append(f"{field}: no series of {self._name(read.families[0], *missing)}")
            return None
        values: list[float] = []
        for role in read.roles:
            series = self.raw[(family, role)]
            fresh = [s for s in series if self.now_s - s.last_time_s <= self.stale_after_s]
            name = self._name(family, role)
            if not fresh:
                age = self.now_s - max(s.last_time_s for s in series)
                self.problems.append(
                    f"{field}: {name} is stale: newest sample {age:.0f} s old (limit {self.stale_after_s:g} s)"
                )
                return None
            bad = next((s for s in fresh if not math.isfinite(s.last_value)), None)
            if bad is not None:
                self.problems.append(f"{field}: {name} is {bad.last_value} on {bad.source}")
                return None
            wrong = next((s for s in fresh if s.last_value < 0 or s.last_value > upper), None)
            if wrong is not None:
                self.problems.append(
                    f"{field}: {name} is {wrong.last_value:g} on {wrong.source}, outside [0, {upper:g}]"
                )
                return None
            sources = {s.source for s in fresh}
            ready = self.ready.get(role)
            if ready is not None and len(sources) < ready:
                self.problems.append(
                    f"{field}: {len(sources)} of {ready} ready {role} pods report a fresh {name}"
                )
                return None
            values.extend(s.last_value for s in fresh)
        return sum(values) if read.combine == "sum" else sum(values) / len(values)

    def _increase(self, field: str, tag: str, name: str, when_missing: str) -> float | None:
        """A counter's increase over the window (the aggregate part `tag`), or None with a problem line
        naming `field` and the series `name` when it has no series (`when_missing` says what follows)
        or a value no counter can have."""
        increase = self.aggregates.scalars.get(tag)
        if increase is None:
            self.problems.append(f"{field}: no series of {name}{when_missing}")
            return None
        if not math.isfinite(increase) or increase < 0:
            self.problems.append(f"{field}: the increase of {name} is {increase:g}")
            return None
        return increase

    def shed_rate(self) -> float | None:
        """Requests per second the router turned away over the window; 0 for presets whose arrivals
        are counted at the engines."""
        families = self.queries.preset.shed
        if not families:
            return 0.0
        total = 0.0
        for family in families:
            increase = self._increase(
                "shed rate",
                f"shed/{family}",
                self._name(family, "router"),
                " (the router exposes it at zero from its start): the prefill correction holds",
            )
            if increase is None:
                return None
            total += increase
        return total / self.queries.window_seconds

    def prefix_cache_hit_rate(self) -> float | None:
        """Prompt tokens served from the prefix cache over those looked up in the window; None (with a
        problem line) when a counter is missing or broken, None without one when nothing was looked up."""
        read = self.queries.preset.prefix_cache
        hits_name, queries_name = self._name(read.hits, read.role), self._name(read.queries, read.role)
        field, missing = "prefix-cache hit rate", ": prefill is sized as no hits"
        hits = self._increase(field, "prefix/hits", hits_name, missing)
        if hits is None:
            return None
        queries = self._increase(field, "prefix/queries", queries_name, missing)
        if queries is None:
            return None
        if queries == 0:
            return None  # no prompt looked up in the window: nothing to measure
        if hits > queries * (1 + 1e-9):
            self.problems.append(
                f"{field}: {hits_name} grew more ({hits:g}) than {queries_name} ({queries:g}): "
                "the counters disagree"
            )
            return None
        return min(hits / queries, 1.0)

    def prefix_reuse(self) -> tuple[tuple[tuple[float, float], ...] | None, str | None]:
        """The router's reuse distances as (cache tokens, share reused within), and why they are not
        used: (None, None) when the preset has none or no prompt block was sampled in the window (an idle
        window has nothing to measure); (None, why) when a series is missing or several routers sampled
        (with a problem line)."""
        read = self.queries.preset.prefix_reuse
        if read is None:
            return None, None
        field, missing = (
            "prefix-cache curve",
            ": the hit rate is taken as the same at every prefill pool size",
        )
        buckets = self.aggregates.buckets.get("reuse")
        if not buckets:
            self.problems.append(
                f"{field}: no series of {self._name(read.histogram, read.role)}_bucket{missing}"
            )
            return None, f"no series of {self._name(read.histogram, read.role)}_bucket"
        expected_name = self._name(read.expected, read.role)
        expected = self._increase(field, "reuse/expected", expected_name, missing)
        if expected is None:
            return None, f"no series of {expected_name}"
        routers = self.aggregates.scalars.get("reuse/routers", 0.0)
        if routers > 1:
            why = f"{routers:.0f} routers each sample only the prompts they admit"
            self.problems.append(
                f"{field}: {why} ({expected_name} grew on each), and a prefix reused across routers looks "
                f"new to each, so their distances are not the stream's{missing}; one router replica per "
                "model measures the whole stream"
            )
            return None, why
        return reuse_share_within(buckets, expected), None

    def prefix_hit_mix(self) -> tuple[tuple[float, float], ...] | None:
        """How the hits fall on prompts, from the router's sampled blocks' positions
        (`estimators.hit_mix_from_positions`); None when the preset reads none, a series is missing (with
        a problem line), or the window sampled too few blocks (the hits are then spread evenly)."""
        read = self.queries.preset.prefix_reuse
        if read is None:
            return None
        found: list[list[Bucket]] = []
        for key, family in (
            ("reuse_sampled", read.sampled_positions),
            ("reuse_reused", read.reused_positions),
        ):
            buckets = self.aggregates.buckets.get(key)
            if not buckets:
                self.problems.append(
                    f"prefix-hit mix: no series of {self._name(family, read.role)}_bucket: every prompt is "
                    "taken to hit the mean rate"
                )
                return None
            found.append(buckets)
        return hit_mix_from_positions(found[0], found[1])

    def arrivals(self) -> ArrivalSummary:
        read = self.queries.preset.arrival
        pieces: list[tuple[bool, list[_Series]]] = []
        for family in (*read.counters, *read.in_system):
            found = self.raw.get((family, read.role), [])
            if not found:
                return _unknown(f"arrival rate: no series of {self._name(family, read.role)}")
            pieces.append((family in read.counters, found))
        every = [s for _, group in pieces for s in group]
        # every family must be fresh on its own: a counter that stopped being exposed while the gauges
        # go on would read as arrivals stopping (zero load), the one thing unknown must never be
        for family, (_, group) in zip((*read.counters, *read.in_system), pieces, strict=True):
            age = self.now_s - max(s.last_time_s for s in group)
            if age > self.stale_after_s:
                return _unknown(
                    f"arrival rate: {self._name(family, read.role)} is stale: newest sample {age:.0f} s old"
                )
        broken = next((s for s in every if not np.all(np.isfinite(s.values))), None)
        if broken is not None:
            return _unknown(
                f"arrival rate: {self._name(broken.family, read.role)} has NaN or infinite samples on {broken.source}"
            )
        # per pod: the counters' increases plus the in-system gauges' changes between its scrapes (all of
        # a pod's series share its scrape timestamps)
        per_pod: dict[str, dict[float, list[float]]] = {}
        for is_counter, group in pieces:
            for series in group:
                if len(series.values) < 2:
                    continue
                amounts = counter_increments(series.values) if is_counter else np.diff(series.values)
                intervals = per_pod.setdefault(series.source, {})
                for begin, end, amount in zip(series.times_s[:-1], series.times_s[1:], amounts, strict=True):
                    entry = intervals.setdefault(round(float(end), 3), [float(begin), 0.0])
                    entry[0] = min(entry[0], float(begin))
                    entry[1] += float(amount)
        sources = []
        for intervals in per_pod.values():
            ends = sorted(intervals)
            sources.append(
                Intervals(
                    np.asarray([intervals[e][0] for e in ends], dtype=np.float64),
                    np.asarray(ends, dtype=np.float64),
                    np.asarray([intervals[e][1] for e in ends], dtype=np.float64),
                )
            )
        summary = summarize_arrivals(sources, self.queries.window_seconds)
        if summary.rate_rps is not None and summary.rate_rps < 0:
            return _unknown(
                f"arrival rate: the estimate by conservation is negative ({summary.rate_rps:.3g} rps): "
                "completions and queue gauges disagree"
            )
        return summary


def build_observation(
    queries: QuerySet,
    aggregate: Sequence[InstantSample],
    raw: Sequence[RangeSeries],
    evaluated_at_s: float,
    stale_after_seconds: float,
    prefill: RoleObservation,
    decode: RoleObservation,
) -> Observation:
    """The Observation these answers support; every unknown field None, with its reason in problems."""
    problems: list[str] = []
    reader = _Reader(
        queries,
        _aggregates(aggregate, problems),
        _raw(queries, raw),
        evaluated_at_s,
        stale_after_seconds,
        {"prefill": prefill.ready, "decode": decode.ready},
        problems,
    )
    preset = queries.preset
    arrivals = reader.arrivals()
    problems.extend(arrivals.problems)
    input_mean, input_p90 = reader.lengths("input", preset.input_tokens)
    output_mean, output_p90 = reader.lengths("output", preset.output_tokens)
    input_trend, output_trend = reader.length_trend("input"), reader.length_trend("output")
    q = queries.percentile / 100.0
    ttft = reader.histogram("ttft", preset.ttft, False, q=q, threshold=queries.ttft_slo_seconds)
    tpot = reader.histogram("tpot", preset.tpot, True, q=q, threshold=queries.tpot_slo_seconds)
    problems.extend(s.problem for s in (ttft, tpot) if s.problem)
    tpot_mean, step_mean = reader.tpot_means(tpot, preset.decode_wait, preset.tpot_includes_decode_wait)
    if preset.request_tpot is not None:  # per request, as the SLO is written: read, never estimated
        per_request = reader.histogram(
            "request_tpot", preset.request_tpot, True, q=q, threshold=queries.tpot_slo_seconds
        )
        if per_request.problem:
            problems.append(per_request.problem)
        tpot_p, tpot_attainment = per_request.quantile, per_request.share_at_or_below
        request_tpot_mean = per_request.mean
    else:
        request_tpot_mean = None
        tpot_p = tpot.quantile
        tpot_attainment = (
            tpot.share_at_or_below
            if preset.tpot_includes_decode_wait
            else reader.tpot_attainment_with_waits(tpot, preset.decode_wait, output_mean)
        )
    queue_depth = reader.gauge("prefill queue depth", preset.queue_depth)
    decode_queue_depth = reader.gauge("decode queue depth", preset.decode_queue_depth)
    kv_usage = reader.gauge("decode KV usage", preset.kv_usage, upper=1.0)
    running = reader.gauge("decode running", preset.running)
    generated_mean = None
    if preset.generated_tokens is not None:
        generated = reader.gauge("decode tokens generated", preset.generated_tokens)
        if generated is not None and running:  # none running: no resident to have generated any
            generated_mean = generated / running
    shed_rps = reader.shed_rate()
    hit_rate = reader.prefix_cache_hit_rate()
    reuse, reuse_unread = reader.prefix_reuse()
    # where the curve is not read (several routers) the positions are not the stream's either
    hit_mix = reader.prefix_hit_mix() if reuse is not None else None
    return Observation(
        **load_fields(arrivals, input_trend, output_trend),
        shed_rate_rps=shed_rps,
        prefix_cache_hit_rate=hit_rate,
        prefix_reuse_share_within=reuse,
        prefix_hit_mix=hit_mix,
        prefix_reuse_unread=reuse_unread,
        input_tokens_mean=input_mean,
        input_tokens_p90=input_p90,
        output_tokens_mean=output_mean,
        output_tokens_p90=output_p90,
        prefill_queue_depth=queue_depth,
        decode_queue_depth=decode_queue_depth,
        decode_kv_usage=kv_usage,
        decode_running=running,
        decode_generated_tokens_mean=generated_mean,
        latency_percentile=queries.percentile,
        ttft_seconds=ttft.quantile,
        ttft_includes_kv_transfer=preset.ttft_includes_kv_transfer,
        tpot_seconds=tpot_p,
        tpot_mean_seconds=tpot_mean,
        request_tpot_mean_seconds=request_tpot_mean,
        decode_step_mean_seconds=step_mean,
        ttft_attainment=ttft.share_at_or_below,
        tpot_attainment=tpot_attainment,
        prefill=prefill,
        decode=decode,
        problems=tuple(problems),
    )
