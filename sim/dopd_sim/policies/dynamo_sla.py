"""dynamo-sla: NVIDIA Dynamo's SLA planner (throughput-based scaling), with its documented formulas and
the inputs it really has.

Every `adjustment_interval_s` (Dynamo's default: 180 s) Dynamo queries Prometheus for *averages over
the interval* from the frontend's histograms and counters: mean TTFT, mean ITL, the request count, mean
ISL and OSL (`TickInput.averages`; not the P90 the operator's Observation carries). Then, per its
planner design doc ("Scaling Algorithm", steps 2-5):
- correction factors: prefill = observed TTFT / expected TTFT (the profiled TTFT of one prompt of the
  observed mean ISL); decode = observed ITL / expected ITL (the profiled step time at the interval's
  per-worker concurrency, Little's law over the averages: requests x mean request duration / interval,
  over the decode workers serving, which a replica still starting is not; and at the mean context);
- the next interval's request count, ISL and OSL from its load predictor: `constant` (the last
  interval's value) or `arima` (fitted to the history of interval values; here dopd's own ARIMA from
  `dopd_forecaster`, as Dynamo uses pmdarima's);
- prefill: `load = next_requests * next_isl / interval * min(1, prefill_correction)`,
  `N_P = ceil(load / profiled_prefill_throughput_per_gpu(isl) / gpus_per_engine)`, where the profiled
  throughput is isl / TTFT(isl) for one prompt;
- decode: `corrected_itl = target_itl / decode_correction`, `throughput_per_gpu =
  best_throughput_per_gpu(itl=corrected_itl, context=isl + osl/2)` (the largest B/T_d(B) whose step time
  meets the ITL and whose KV fits), `N_D = ceil(next_requests * next_osl / interval / throughput_per_gpu
  / gpus_per_engine)`.
Between adjustments it holds. Dynamo applies its decision directly, without stabilization; min 1 replica
per role. The benchmark runs both intervals and both predictors and reports the best configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dopd_forecaster.errors import ForecastError
from dopd_forecaster.forecaster import SeriesForecaster
from dopd_operator.profile import PerformanceProfile
from dopd_sim.metrics import IntervalAverages
from dopd_sim.policies.base import Architecture, Layout, TickInput

Predictor = Literal["constant", "arima"]
DYNAMO_DEFAULT_INTERVAL_SECONDS = 180.0
# A fit limit far above any real fit: a wall-clock limit hit on a busy machine would make runs differ.
_FIT_TIMEOUT_S = 120.0


def best_decode_throughput_per_gpu(
    profile: PerformanceProfile, itl_s: float, context_tokens: float, gpus: int
) -> float:
    """Output tokens per second per GPU at the largest batch meeting `itl_s` whose KV fits."""
    best = 0.0
    kv_batch = int(profile.kv_capacity_tokens // max(context_tokens, 1.0))
    for batch in range(1, max(min(profile.max_batch_size, kv_batch), 1) + 1):
        step = profile.decode_step_seconds(batch, context_tokens)
        if step > itl_s:
            break
        best = max(best, batch / step)
    if best == 0.0:  # even a batch of one misses the ITL: Dynamo still runs at batch 1
        best = 1.0 / profile.decode_step_seconds(1, context_tokens)
    return best / gpus


@dataclass
class _Series:
    """One predicted quantity: its per-interval history and, for `arima`, a forecaster."""

    interval_s: float
    predictor: Predictor
    history: list[float] = field(default_factory=list)
    forecaster: SeriesForecaster | None = None

    def next(self, value: float) -> float:
        self.history.append(value)
        if self.predictor == "constant" or len(self.history) < 4:
            return value
        if self.forecaster is None:
            self.forecaster = SeriesForecaster(
                model="arima", quantile=0.5, step_s=self.interval_s, fit_timeout_s=_FIT_TIMEOUT_S
            )
        stamps = np.arange(len(self.history), dtype=np.float64) * self.interval_s
        try:
            forecast = self.forecaster.forecast(stamps, np.asarray(self.history), self.interval_s)
        except ForecastError:
            return value
        return max(float(forecast.mean), 0.0)


@dataclass
class DynamoSlaPolicy:
    min_replicas: int = 1
    max_replicas: int = 256
    adjustment_interval_s: float = DYNAMO_DEFAULT_INTERVAL_SECONDS
    predictor: Predictor = "constant"
    name: str = "dynamo-sla"
    architecture: Architecture = "disaggregated"
    prefill_correction: float = 1.0
    decode_correction: float = 1.0
    _last_adjustment_s: float | None = None
    _series: dict[str, _Series] = field(default_factory=dict)

    def _predict(self, key: str, value: float) -> float:
        series = self._series.setdefault(key, _Series(self.adjustment_interval_s, self.predictor))
        return series.next(value)

    def decide(self, tick: TickInput) -> Layout:
        if tick.averages is None:
            raise ValueError("dynamo-sla needs interval averages (TickInput.averages)")
        due = self._last_adjustment_s is None or tick.now_s - self._last_adjustment_s >= (
            self.adjustment_interval_s - 1e-9
        )
        if not due:
            return tick.current
        interval = min(self.adjustment_interval_s, tick.now_s)
        averages = tick.averages(interval)
        if averages.isl_mean is None or averages.osl_mean is None:
            return tick.current  # nothing observed yet: Dynamo keeps the replicas
        self._last_adjustment_s = tick.now_s
        self._correct(averages, tick)
        requests = self._predict("requests", averages.requests)
        isl = max(self._predict("isl", averages.isl_mean), 1.0)
        osl = max(self._predict("osl", averages.osl_mean), 1.0)
        return self._replicas(requests / interval, isl, osl, tick)

    def _correct(self, averages: IntervalAverages, tick: TickInput) -> None:
        profile = tick.profile
        assert averages.isl_mean is not None and averages.osl_mean is not None
        expected_ttft = profile.prefill_seconds(averages.isl_mean)
        if averages.ttft_mean_s is not None and expected_ttft > 0:
            self.prefill_correction = averages.ttft_mean_s / expected_ttft
        context = averages.isl_mean + averages.osl_mean / 2
        workers = tick.observation.decode.ready
        duration = averages.request_duration_mean_s
        if averages.itl_mean_s is not None and duration is not None and workers > 0:
            concurrency = max(averages.requests * duration / averages.seconds / workers, 1.0)
            expected_itl = profile.decode_step_seconds(concurrency, context)
            if expected_itl > 0 and averages.itl_mean_s > 0:
                self.decode_correction = averages.itl_mean_s / expected_itl

    def _replicas(self, rate: float, isl: float, osl: float, tick: TickInput) -> Layout:
        profile, spec = tick.profile, tick.config.spec
        prefill_tokens_per_s = rate * isl * min(1.0, self.prefill_correction)
        prefill_throughput = isl / max(profile.prefill_seconds(isl), 1e-9) / spec.prefill.gpus_per_replica
        prefill = math.ceil(prefill_tokens_per_s / prefill_throughput / spec.prefill.gpus_per_replica - 1e-9)
        corrected_itl = spec.slo.tpot_seconds / max(self.decode_correction, 1e-9)
        decode_throughput = best_decode_throughput_per_gpu(
            profile, corrected_itl, isl + osl / 2, spec.decode.gpus_per_replica
        )
        decode = math.ceil(rate * osl / decode_throughput / spec.decode.gpus_per_replica - 1e-9)
        return Layout(
            prefill=min(max(prefill, self.min_replicas), self.max_replicas),
            decode=min(max(decode, self.min_replicas), self.max_replicas),
        )
