"""Builds the operator's `Observation` from the simulated cluster the way the operator builds it from
Prometheus: through `dopd_operator.metrics.estimators`, over the metrics window, from what the dopd
worker and router would expose, so that the planner never sees in simulation what it could not see in
production.

- Arrivals: the router's arrival counter as a 1 s scrape sees it (requests per 1 s bin): rate,
  burstiness (index of dispersion of the per-bin counts) and trend (least-squares slope over the
  last two minutes), with `summarize_arrivals`.
- Prompt lengths: the router's `dopd_prompt_tokens` histogram, observed at arrival (the demand);
  output lengths: the decode workers' `dopd_generation_tokens`, observed at the last token; mean from
  the sum, P90 from the buckets (the worker's bucket boundaries, `dopd_worker.metrics`).
- TTFT at the SLO percentile and its attainment: `dopd_time_to_first_token_seconds` over the first
  tokens of the window; TPOT: its mean from `dopd_inter_token_latency_seconds`, each gap observed when
  it leaves, as the worker and the emulator observe it: B gaps at each step of a batch of B (from the
  decode replicas' stretches of steps, `RequestLog.decode_steps`, and the stretches still running), a
  sequence's wait for its slot in its first gap, when it joins; its percentile, attainment and the
  mean over lives from `dopd_request_time_per_output_token_seconds`, one observation per finished
  request of two or more tokens (its mean gap, waits for a decode slot included).
- Shed rate: the router's `dopd_requests_rejected_total` + `dopd_requests_expired_total` over the
  window (requests turned away at entry or expired in its queue, and prompts no decode replica holds).
- Prefix-cache hit rate: the prefill workers' `dopd_prefix_cache_hits_total` over
  `dopd_prefix_cache_queries_total` in the window: the simulated cache's hits where the trace carries
  block hashes (`prefix_cache`), else 0 (every prompt looked up, none hit, as the worker counts them).
- Reuse distances of prompt blocks: the router's `dopd_prompt_reuse_distance_tokens` over the window,
  from the trace's block hashes at each arrival through the router's own sampler
  (`dopd_worker.prefix_reuse`), and where in their prompts the sampled blocks sit, and those reused
  (`dopd_prompt_reuse_*_position_ratio`: how the hits fall on prompts); unknown where the trace carries
  none (nothing to hash) or the spec's engine preset does not read it (vLLM, SGLang).
- Queue depth, KV usage and running sequences: gauges read at the tick.
Nothing here looks past `now` except the warm start, which shows every policy the first window of
load (arrivals, their lengths and the router's reuse distances) so all of them start from a sized
cluster.

Callers: `cluster.Simulator` at each controller tick.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_operator.metrics.estimators import (
    TREND_WINDOW_SECONDS,
    ArrivalSummary,
    HistogramSummary,
    Intervals,
    LengthTrend,
    histogram_from_values,
    hit_mix_from_positions,
    length_trend,
    load_fields,
    reuse_share_within,
    summarize_arrivals,
    summarize_histogram,
)
from dopd_operator.metrics.presets import PRESETS
from dopd_operator.planner_types import Observation, RoleObservation
from dopd_sim.config import SimConfig
from dopd_sim.metrics import FloatArray, RequestLog, TimelinePoint
from dopd_sim.policies.base import Layout
from dopd_sim.prefix_cache import PrefixTrace
from dopd_worker.metrics import ITL_BUCKETS_SECONDS, LATENCY_BUCKETS_SECONDS, LENGTH_BUCKETS_TOKENS
from dopd_worker.prefix_reuse import REUSE_BUCKETS_TOKENS, REUSE_POSITION_BUCKETS, ReuseSampler

if TYPE_CHECKING:
    from dopd_sim.cluster import Simulator

ARRIVAL_BIN_SECONDS = 1.0  # the arrival counter as a 1 s scrape interval resolves it


def _inter_token_gaps(
    log: RequestLog, running: list[tuple[float, float, int, int]], start_s: float
) -> tuple[HistogramSummary, float | None]:
    """`dopd_inter_token_latency_seconds` from `start_s` to now as the decode worker observes it, and the
    decode step's mean as the operator's dopd preset reads it. Each step yields B gaps when it ends
    (weight B, its duration); a stretch of steps that straddles the window's start counts its share in
    it; the stretches still running (`running`) count the steps they have run. A sequence's wait for
    its slot is part of its first gap (the sum), observed when it joins; the step mean is the sum less
    those waits (`dopd_decode_slot_wait_seconds` over the same window), over the count."""
    first = bisect.bisect_left(log.steps_end_s, start_s)
    stretches = np.asarray(
        list(
            zip(
                log.steps_start_s[first:],
                log.steps_end_s[first:],
                log.steps_batch[first:],
                log.steps_count[first:],
                strict=True,
            )
        )
        + running,
        dtype=np.float64,
    ).reshape(-1, 4)
    begin, end, batch, steps = stretches.T
    seconds = end - begin
    inside_s = end - np.maximum(begin, start_s)
    share = np.divide(inside_s, seconds, out=np.ones_like(seconds), where=seconds > 0)
    joined = bisect.bisect_left(log.join_times, start_s)
    waited_s = float(np.sum(log.join_waits[joined:]))
    steps_s = float(np.sum(batch * inside_s))
    summary = summarize_histogram(
        "dopd_inter_token_latency_seconds",
        histogram_from_values(
            np.divide(seconds, steps, out=np.zeros_like(seconds), where=steps > 0),
            ITL_BUCKETS_SECONDS,
            weights=batch * steps * share,
        ),
        steps_s + waited_s,
    )
    step_mean = steps_s / summary.observations if summary.mean is not None and summary.observations else None
    return summary, step_mean


def _lengths(
    name: str, values: FloatArray, before: FloatArray | None, window_s: float
) -> tuple[HistogramSummary, LengthTrend]:
    """The window's length histogram, and the lengths' trend from `before` (the same lengths over the
    window before, None: unknown) as the operator reads it (`estimators.length_trend`)."""
    buckets = histogram_from_values(values, LENGTH_BUCKETS_TOKENS)
    total = float(np.sum(values))
    summary = summarize_histogram(name, buckets, total, q=0.9)
    if before is None:
        return summary, LengthTrend(None, None)
    return summary, length_trend(buckets, total, float(len(before)), float(np.sum(before)), window_s)


class ReuseLog:
    """The router's reuse-distance and position histograms of a trace's prompt blocks, fed arrival by
    arrival."""

    def __init__(self, trace: PrefixTrace) -> None:
        self.trace = trace
        self.sampler = ReuseSampler(block_tokens=trace.block_tokens)
        self._fed = 0
        self._times_s: list[float] = []
        self._distances: list[float] = []
        self._positions: list[float] = []
        self._expected = [0.0]  # the expected-samples counter after each arrival fed

    def _window(self, start_s: float, end_s: float) -> tuple[int, int]:
        """The sampled blocks of prompts arriving in [start, end), as a slice of the log."""
        arrivals = self.trace.arrival_s
        while self._fed < len(arrivals) and arrivals[self._fed] < end_s:
            # full blocks only, as the router hashes them (a partial last block is not cacheable)
            full = int(self.trace.input_tokens[self._fed]) // self.trace.block_tokens
            found = self.sampler.observe_positions(self.trace.prefix_blocks[self._fed][:full])
            self._times_s.extend([float(arrivals[self._fed])] * len(found))
            self._positions.extend(position for position, _ in found)
            self._distances.extend(distance for _, distance in found)
            self._expected.append(self.sampler.expected_samples)
            self._fed += 1
        return bisect.bisect_left(self._times_s, start_s), bisect.bisect_left(self._times_s, end_s)

    def share_within(self, start_s: float, end_s: float) -> tuple[tuple[float, float], ...] | None:
        """(cache tokens, share reused within) over the sampled blocks of prompts arriving in [start, end)."""
        lo, hi = self._window(start_s, end_s)
        if hi <= lo:
            return None
        first, last = np.searchsorted(self.trace.arrival_s[: self._fed], (start_s, end_s), side="left")
        values = np.asarray(self._distances[lo:hi], dtype=np.float64)
        expected = self._expected[last] - self._expected[first]
        return reuse_share_within(histogram_from_values(values, REUSE_BUCKETS_TOKENS), expected)

    def hit_mix(self, start_s: float, end_s: float) -> tuple[tuple[float, float], ...] | None:
        """How the hits fall on prompts, from the positions of the same samples and of those reused."""
        lo, hi = self._window(start_s, end_s)
        positions = np.asarray(self._positions[lo:hi], dtype=np.float64)
        reused = np.isfinite(np.asarray(self._distances[lo:hi], dtype=np.float64))
        return hit_mix_from_positions(
            histogram_from_values(positions, REUSE_POSITION_BUCKETS),
            histogram_from_values(positions[reused], REUSE_POSITION_BUCKETS),
        )


class ObservationBuilder:
    """Windowed metrics over one run."""

    def __init__(self, trace: Trace, config: SimConfig, log: RequestLog) -> None:
        self.trace = trace
        self.config = config
        self.log = log
        self.window_s = config.window_seconds
        self.step_s = config.forecast_step_seconds
        slo = config.spec.slo
        self.ttft_slo_s = slo.ttft_seconds
        self.tpot_slo_s = slo.tpot_seconds
        self.percentile = slo.percentile
        buckets = math.floor(trace.duration_s / self.step_s) + 1 if len(trace) else 1
        index = np.minimum((trace.arrival_s // self.step_s).astype(np.int64), buckets - 1)
        self._bucket_rps = np.bincount(index, minlength=buckets).astype(np.float64) / self.step_s
        seconds = (trace.arrival_s // ARRIVAL_BIN_SECONDS).astype(np.int64)
        self._arrivals_per_bin = np.bincount(seconds, minlength=1).astype(np.float64)
        self._output_f = trace.output_tokens.astype(np.float64)
        self._input_f = trace.input_tokens.astype(np.float64)
        self._gaps_f = np.maximum(self._output_f - 1.0, 0.0)  # inter-token gaps of each request
        # only where the spec's engine preset reads the router's curve (dopd's): behind vLLM's or
        # SGLang's own routers the operator has none, so neither does the policy here
        reads_reuse = PRESETS[config.spec.engine].prefix_reuse is not None
        self._reuse = ReuseLog(trace) if isinstance(trace, PrefixTrace) and reads_reuse else None

    def arrival_history(self, now_s: float) -> tuple[FloatArray, FloatArray]:
        """Complete forecast-step buckets before `now_s`: start times and arrival rates."""
        complete = min(int(now_s // self.step_s), len(self._bucket_rps))
        stamps = np.arange(complete, dtype=np.float64) * self.step_s
        return stamps, self._bucket_rps[:complete].copy()

    def _arrivals(self, now_s: float, warm_start: bool) -> ArrivalSummary:
        if warm_start:  # the first window, seen from its end
            end = max(int(self.window_s // ARRIVAL_BIN_SECONDS), 1)
            first = 0
        else:
            end = int(now_s // ARRIVAL_BIN_SECONDS)  # bins before it are complete
            first = max(end - round(max(self.window_s, TREND_WINDOW_SECONDS) / ARRIVAL_BIN_SECONDS), 0)
        counts = self._arrivals_per_bin[first:end]
        counts = np.concatenate([counts, np.zeros(end - first - len(counts))])  # after the last arrival
        bins = Intervals.bins(counts, first * ARRIVAL_BIN_SECONDS, ARRIVAL_BIN_SECONDS)
        summary = summarize_arrivals([bins], self.window_s)
        if warm_start:  # no trend from the future
            return ArrivalSummary(summary.rate_rps, summary.scv, None, summary.problems)
        return summary

    def observe(self, now_s: float, sim: Simulator, warm_start: bool = False) -> Observation:
        start = 0.0 if warm_start else max(now_s - self.window_s, 0.0)
        arrivals = self._arrivals(now_s, warm_start)
        problems = list(arrivals.problems)
        q = self.percentile / 100.0
        step_mean: float | None = None  # the decode step's mean (below)
        request_tpot_mean: float | None = None  # the per-request TPOT's mean (below)
        if warm_start:
            lo = int(np.searchsorted(self.trace.arrival_s, 0.0, side="left"))
            hi = int(np.searchsorted(self.trace.arrival_s, self.window_s, side="left"))
            inputs, input_trend = _lengths("dopd_prompt_tokens", self._input_f[lo:hi], None, self.window_s)
            outputs, output_trend = _lengths(
                "dopd_generation_tokens", self._output_f[lo:hi], None, self.window_s
            )
            ttft = tpot = HistogramSummary(None, None, None, None, None)
        else:
            log = self.log
            first = bisect.bisect_left(log.first_token_times, start)
            # The router records each prompt's length when it arrives (dopd_worker.openai_api): the
            # demand's mix, shed requests included (admission sheds long prompts first, so what the
            # prefill workers serve is shorter than what is asked).
            lo, hi = np.searchsorted(self.trace.arrival_s, (start, now_s), side="left")
            # the lengths' trend needs a whole window before this one
            whole_before = start >= self.window_s
            before = int(np.searchsorted(self.trace.arrival_s, start - self.window_s, side="left"))
            inputs, input_trend = _lengths(
                "dopd_prompt_tokens",
                self._input_f[lo:hi],
                self._input_f[before:lo] if whole_before else None,
                self.window_s,
            )
            ttft = summarize_histogram(
                "dopd_time_to_first_token_seconds",
                histogram_from_values(np.asarray(log.first_token_ttft[first:]), LATENCY_BUCKETS_SECONDS),
                q=q,
                threshold=self.ttft_slo_s,
            )
            first = bisect.bisect_left(log.finish_times, start)
            finished = np.asarray(log.finish_output_index[first:], dtype=np.int64)
            earlier = bisect.bisect_left(log.finish_times, start - self.window_s)
            finished_before = np.asarray(log.finish_output_index[earlier:first], dtype=np.int64)
            outputs, output_trend = _lengths(
                "dopd_generation_tokens",
                self._output_f[finished],
                self._output_f[finished_before] if whole_before else None,
                self.window_s,
            )
            gap_s, gaps = np.asarray(log.finish_tpot[first:]), self._gaps_f[finished]
            gaps_summary, step_mean = _inter_token_gaps(log, sim.running_decode_steps(now_s), start)
            # the router's per-request TPOT: one observation per finished request of two or more tokens
            per_request = summarize_histogram(
                "dopd_request_time_per_output_token_seconds",
                histogram_from_values(gap_s[gaps > 0], ITL_BUCKETS_SECONDS),
                float(np.sum(gap_s[gaps > 0])),
                q=q,
                threshold=self.tpot_slo_s,
            )
            request_tpot_mean = per_request.mean
            tpot = HistogramSummary(
                gaps_summary.observations,
                gaps_summary.mean,
                per_request.quantile,
                per_request.share_at_or_below,
                gaps_summary.problem or per_request.problem,
            )
        # the router's shed counters (rejected at entry + expired in its queue) over the same window
        span_s = now_s - start
        shed = 0.0
        if not warm_start and span_s > 0:
            turned_away = len(self.log.shed_times) - bisect.bisect_right(self.log.shed_times, start)
            shed = turned_away / span_s
        problems.extend(s.problem for s in (inputs, outputs, ttft, tpot) if s.problem)
        prefill, decode = self._roles(sim.current_layout(), sim.ready_counts(), sim)
        hit_rate: float | None = None
        reuse: tuple[tuple[float, float], ...] | None = None
        hit_mix: tuple[tuple[float, float], ...] | None = None
        # the warm start sees the router's reuse distances over the first window (no engine has served a
        # prompt, so no hit rate is measured)
        end_s = self.window_s if warm_start else now_s
        if self._reuse is not None:
            reuse = self._reuse.share_within(start, end_s)
            hit_mix = None if reuse is None else self._reuse.hit_mix(start, end_s)
        if not warm_start:
            hit_rate = sim.prefix_cache_hit_rate(start, now_s) if sim.prefix_cache is not None else 0.0
        return Observation(
            **load_fields(arrivals, input_trend, output_trend),
            shed_rate_rps=shed,
            prefix_cache_hit_rate=hit_rate,
            prefix_reuse_share_within=reuse,
            prefix_hit_mix=hit_mix,
            input_tokens_mean=inputs.mean,
            input_tokens_p90=inputs.quantile,
            output_tokens_mean=outputs.mean,
            output_tokens_p90=outputs.quantile,
            prefill_queue_depth=sim.queue_depth(),
            decode_queue_depth=sim.decode_queue_depth(),
            decode_kv_usage=None if warm_start else sim.decode_kv_usage(),
            decode_running=sim.decode_running(),
            decode_generated_tokens_mean=None if warm_start else sim.decode_generated_tokens_mean(),
            latency_percentile=self.percentile,
            ttft_seconds=ttft.quantile,
            tpot_seconds=tpot.quantile,
            tpot_mean_seconds=tpot.mean,
            decode_step_mean_seconds=step_mean,
            request_tpot_mean_seconds=request_tpot_mean,
            ttft_attainment=ttft.share_at_or_below,
            tpot_attainment=tpot.share_at_or_below,
            prefill=prefill,
            decode=decode,
            problems=tuple(problems),
        )

    def _roles(
        self, layout: Layout, ready: dict[str, int], sim: Simulator
    ) -> tuple[RoleObservation, RoleObservation]:
        if sim.aggregated:
            mixed = RoleObservation(
                current=layout.mixed, ready=ready["mixed"], pending=layout.mixed - ready["mixed"]
            )
            return mixed, mixed
        prefill = RoleObservation(
            current=layout.prefill, ready=ready["prefill"], pending=max(layout.prefill - ready["prefill"], 0)
        )
        decode = RoleObservation(
            current=layout.decode, ready=ready["decode"], pending=max(layout.decode - ready["decode"], 0)
        )
        return prefill, decode

    def timeline_point(
        self, now_s: float, observation: Observation, target: Layout, sim: Simulator
    ) -> TimelinePoint:
        ready = sim.ready_counts()
        log = self.log
        first = bisect.bisect_left(log.finish_times, now_s - self.window_s)
        finished = log.finish_output_index[first:]
        attainment: float | None = None
        if finished:
            ttft = np.asarray([log.ttft_s[r] for r in finished])
            tpot = np.asarray(log.finish_tpot[first:])
            attainment = float(np.mean((ttft <= self.ttft_slo_s) & (tpot <= self.tpot_slo_s)))
        return TimelinePoint(
            time_s=now_s,
            arrival_rate_rps=observation.arrival_rate_rps or 0.0,
            target_prefill=target.prefill,
            target_decode=target.decode,
            target_mixed=target.mixed,
            ready_prefill=ready["prefill"],
            ready_decode=ready["decode"],
            ready_mixed=ready["mixed"],
            gpus=sim.gpus_in_use,
            window_attainment=attainment,
        )
