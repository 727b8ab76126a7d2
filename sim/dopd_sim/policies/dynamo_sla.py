"""dynamo-sla: NVIDIA Dynamo's SLA planner (throughput-based scaling), with its documented formulas.

From Dynamo's planner design doc ("Scaling Algorithm", steps 2-5):
- correction factors: prefill = observed TTFT / expected TTFT (the profiled TTFT of one prompt of the
  observed mean ISL); decode = observed ITL / expected ITL (the profiled step time at the observed
  per-replica concurrency and context);
- prefill: `load = next_requests * next_isl / interval * min(1, prefill_correction)`,
  `N_P = ceil(load / profiled_prefill_throughput_per_gpu(isl) / gpus_per_engine)`, where the profiled
  throughput is isl / TTFT(isl) for one prompt;
- decode: `corrected_itl = target_itl / decode_correction`, `throughput_per_gpu =
  best_throughput_per_gpu(itl=corrected_itl, context=isl + osl/2)` (the largest B/T_d(B) whose step time
  meets the ITL and whose KV fits), `N_D = ceil(next_requests * next_osl / interval / throughput_per_gpu
  / gpus_per_engine)`.
The next interval's load is predicted with Dynamo's `constant` predictor (the last interval's value).
Dynamo applies its decision directly, without stabilization; min 1 replica per role.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd_operator.profile import PerformanceProfile
from dopd_sim.policies.base import Architecture, Layout, TickInput


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
class DynamoSlaPolicy:
    min_replicas: int = 1
    max_replicas: int = 256
    name: str = "dynamo-sla"
    architecture: Architecture = "disaggregated"
    prefill_correction: float = 1.0
    decode_correction: float = 1.0

    def decide(self, tick: TickInput) -> Layout:
        obs, profile, spec = tick.observation, tick.profile, tick.config.spec
        if not obs.load_known:
            return tick.current
        assert obs.arrival_rate_rps is not None and obs.input_tokens_mean is not None
        assert obs.output_tokens_mean is not None
        isl, osl, rate = obs.input_tokens_mean, max(obs.output_tokens_mean, 1.0), obs.arrival_rate_rps
        expected_ttft = profile.prefill_seconds(isl)
        if obs.ttft_seconds is not None and expected_ttft > 0:
            self.prefill_correction = obs.ttft_seconds / expected_ttft
        context = isl + osl / 2
        if obs.tpot_seconds is not None and obs.decode_running is not None and tick.current.decode > 0:
            concurrency = max(obs.decode_running / tick.current.decode, 1.0)
            expected_itl = profile.decode_step_seconds(concurrency, context)
            if expected_itl > 0 and obs.tpot_seconds > 0:
                self.decode_correction = obs.tpot_seconds / expected_itl
        prefill_tokens_per_s = rate * isl * min(1.0, self.prefill_correction)
        prefill_throughput = isl / max(expected_ttft, 1e-9) / spec.prefill.gpus_per_replica
        prefill = math.ceil(prefill_tokens_per_s / prefill_throughput / spec.prefill.gpus_per_replica - 1e-9)
        corrected_itl = spec.slo.tpot_seconds / max(self.decode_correction, 1e-9)
        decode_throughput = best_decode_throughput_per_gpu(
            profile, corrected_itl, context, spec.decode.gpus_per_replica
        )
        decode = math.ceil(rate * osl / decode_throughput / spec.decode.gpus_per_replica - 1e-9)
        return Layout(
            prefill=min(max(prefill, self.min_replicas), self.max_replicas),
            decode=min(max(decode, self.min_replicas), self.max_replicas),
        )
