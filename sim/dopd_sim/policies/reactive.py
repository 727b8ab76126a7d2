"""reactive: HPA/KEDA-style thresholds per role, the autoscaling most users configure today.

Prefill scales on queue depth per replica (KEDA's Prometheus scaler on `num_requests_waiting`, target
`prefill_queue_per_replica`) and on busy share (a GPU-utilization gauge, target
`prefill_utilization_target`), decode on mean KV usage (target `decode_kv_target`) and on running
sequences per replica against the profile's batch limit, each through HPA's tolerance, scale-up
limits and 300 s scale-down stabilization; the per-pod metrics are read from the Ready pods, with the
pods still starting counted as HPA counts them (`hpa.pods_metric_replicas`). Metrics that are unknown
hold the current replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dopd_sim.policies.base import Architecture, Layout, TickInput
from dopd_sim.policies.hpa import HpaBehavior, pods_metric_replicas, ratio_replicas


@dataclass
class ReactivePolicy:
    min_replicas: int = 1
    max_replicas: int = 256
    prefill_queue_per_replica: float = 4.0
    prefill_utilization_target: float = 0.7
    decode_kv_target: float = 0.7
    name: str = "reactive"
    architecture: Architecture = "disaggregated"
    _prefill: HpaBehavior = field(init=False)
    _decode: HpaBehavior = field(init=False)

    def __post_init__(self) -> None:
        self._prefill = HpaBehavior(self.min_replicas, self.max_replicas)
        self._decode = HpaBehavior(self.min_replicas, self.max_replicas)

    def decide(self, tick: TickInput) -> Layout:
        obs, current = tick.observation, tick.current
        prefill = current.prefill
        if obs.prefill_queue_depth is not None:
            per_replica = obs.prefill_queue_depth / max(current.prefill, 1)
            prefill = ratio_replicas(current.prefill, per_replica / self.prefill_queue_per_replica)
        if tick.prefill_utilization is not None:
            busy = tick.prefill_utilization / self.prefill_utilization_target
            prefill = max(prefill, pods_metric_replicas(current.prefill, obs.prefill.ready, busy))
        decode, ready = current.decode, obs.decode.ready
        if obs.decode_kv_usage is not None:
            decode = pods_metric_replicas(current.decode, ready, obs.decode_kv_usage / self.decode_kv_target)
        if obs.decode_running is not None and ready > 0:
            batch_target = tick.profile.max_batch_size * self.decode_kv_target
            running = obs.decode_running / ready
            decode = max(decode, pods_metric_replicas(current.decode, ready, running / batch_target))
        interval = tick.config.interval_seconds
        return Layout(
            prefill=self._prefill.normalize(tick.now_s, current.prefill, prefill, interval),
            decode=self._decode.normalize(tick.now_s, current.decode, decode, interval),
        )
