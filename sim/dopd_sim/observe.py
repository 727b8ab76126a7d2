"""Builds the operator's `Observation` from the simulated cluster, as the operator builds it from
Prometheus: rates and length statistics over the metrics window, queue depth and KV usage as gauges at
the tick, latency percentiles and SLO attainment over the requests that produced a first token (TTFT)
or finished (TPOT, output lengths) in the window. Nothing here looks past `now` except the warm start,
which shows every policy the first window of load so all of them start from a sized cluster.

Callers: `cluster.Simulator` at each controller tick.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_operator.planner_types import Observation, RoleObservation
from dopd_sim.config import SimConfig
from dopd_sim.metrics import FloatArray, RequestLog, TimelinePoint, percentile
from dopd_sim.policies.base import Layout

if TYPE_CHECKING:
    from dopd_sim.cluster import Simulator


def _mean_p90(values: FloatArray) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    return float(np.mean(values)), percentile(values, 90)


def _interarrival_scv(arrival_s: FloatArray) -> float | None:
    """Squared coefficient of variation of the gaps between arrivals (1 for Poisson), as the operator
    derives it from the request counter; None with too few arrivals to say."""
    if len(arrival_s) < 20:
        return None
    gaps = np.diff(arrival_s)
    mean = float(np.mean(gaps))
    return float(np.var(gaps) / (mean * mean)) if mean > 0 else None


TREND_WINDOW_S = 120.0


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
        self.quantile = slo.percentile
        buckets = math.floor(trace.duration_s / self.step_s) + 1 if len(trace) else 1
        index = np.minimum((trace.arrival_s // self.step_s).astype(np.int64), buckets - 1)
        self._bucket_rps = np.bincount(index, minlength=buckets).astype(np.float64) / self.step_s
        self._output_f = trace.output_tokens.astype(np.float64)
        self._input_f = trace.input_tokens.astype(np.float64)

    def _trend(self, now_s: float) -> float | None:
        """Least-squares slope of the bucketed arrival rate over the last TREND_WINDOW_S, as PromQL's
        `deriv()` gives it to the operator."""
        stamps, rates = self.arrival_history(now_s)
        keep = max(int(TREND_WINDOW_S // self.step_s), 4)
        if len(rates) < 4:
            return None
        slope = np.polyfit(stamps[-keep:], rates[-keep:], 1)[0]
        return float(slope)

    def arrival_history(self, now_s: float) -> tuple[FloatArray, FloatArray]:
        """Complete forecast-step buckets before `now_s`: start times and arrival rates."""
        complete = min(int(now_s // self.step_s), len(self._bucket_rps))
        stamps = np.arange(complete, dtype=np.float64) * self.step_s
        return stamps, self._bucket_rps[:complete].copy()

    def observe(self, now_s: float, sim: Simulator, warm_start: bool = False) -> Observation:
        start, end = (0.0, self.window_s) if warm_start else (max(now_s - self.window_s, 0.0), now_s)
        span = end - start if end > start else self.window_s
        arrivals = self.trace.arrival_s
        lo = int(np.searchsorted(arrivals, start, side="left"))
        hi = int(np.searchsorted(arrivals, end, side="right"))
        input_mean, input_p90 = _mean_p90(self._input_f[lo:hi])
        if warm_start:
            output_mean, output_p90 = _mean_p90(self._output_f[lo:hi])
        else:
            log = self.log
            first = bisect.bisect_left(log.finish_times, start)
            finished = np.asarray(log.finish_output_index[first:], dtype=np.int64)
            output_mean, output_p90 = _mean_p90(self._output_f[finished])
        ttft_p, tpot_p, ttft_ok, tpot_ok = self._latency(start, end, warm_start)
        layout = sim.current_layout()
        ready = sim.ready_counts()
        roles = self._roles(layout, ready, sim)
        return Observation(
            arrival_rate_rps=(hi - lo) / span,
            arrival_scv=_interarrival_scv(arrivals[lo:hi]),
            arrival_rate_trend_rps_per_s=None if warm_start else self._trend(now_s),
            input_tokens_mean=input_mean,
            input_tokens_p90=input_p90,
            output_tokens_mean=output_mean,
            output_tokens_p90=output_p90,
            prefill_queue_depth=sim.queue_depth(),
            decode_kv_usage=None if warm_start else sim.decode_kv_usage(),
            decode_running=sim.decode_running(),
            latency_percentile=self.quantile,
            ttft_seconds=ttft_p,
            tpot_seconds=tpot_p,
            ttft_attainment=ttft_ok,
            tpot_attainment=tpot_ok,
            prefill=roles[0],
            decode=roles[1],
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

    def _latency(
        self, start: float, end: float, warm_start: bool
    ) -> tuple[float | None, float | None, float | None, float | None]:
        if warm_start:
            return None, None, None, None
        log = self.log
        first = bisect.bisect_left(log.first_token_times, start)
        ttft = np.asarray(log.first_token_ttft[first:], dtype=np.float64)
        first = bisect.bisect_left(log.finish_times, start)
        tpot = np.asarray(log.finish_tpot[first:], dtype=np.float64)
        ttft_ok = float(np.mean(ttft <= self.ttft_slo_s)) if len(ttft) else None
        tpot_ok = float(np.mean(tpot <= self.tpot_slo_s)) if len(tpot) else None
        return percentile(ttft, self.quantile), percentile(tpot, self.quantile), ttft_ok, tpot_ok

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
