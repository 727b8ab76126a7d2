"""aggregated: colocated replicas doing both phases with chunked prefill (vLLM-like), scaled by HPA
on KV usage, running sequences and queued prompts per replica, with HPA's default behaviors and its
reading of pods still starting (see `hpa`).

The chunk size (`SimConfig.aggregated_token_budget`, tokens per iteration shared by decode and prefill)
is what trades TTFT against TPOT on a colocated replica; DistServe's argument for disaggregation is
that no single value serves both SLOs well under load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dopd_sim.policies.base import Architecture, Layout, TickInput
from dopd_sim.policies.hpa import HpaBehavior, pods_metric_replicas, ratio_replicas


@dataclass
class AggregatedPolicy:
    min_replicas: int = 2
    max_replicas: int = 512
    queue_per_replica: float = 4.0
    kv_target: float = 0.7
    name: str = "aggregated"
    architecture: Architecture = "aggregated"
    _behavior: HpaBehavior = field(init=False)

    def __post_init__(self) -> None:
        self._behavior = HpaBehavior(self.min_replicas, self.max_replicas)

    def decide(self, tick: TickInput) -> Layout:
        obs, current = tick.observation, tick.current.mixed
        ready = obs.decode.ready  # the colocated pool's (observe: both roles read it when aggregated)
        desired = current
        if obs.decode_kv_usage is not None:
            desired = pods_metric_replicas(current, ready, obs.decode_kv_usage / self.kv_target)
        if obs.prefill_queue_depth is not None:
            per_replica = obs.prefill_queue_depth / max(current, 1)
            desired = max(desired, ratio_replicas(current, per_replica / self.queue_per_replica))
        if obs.decode_running is not None and ready > 0:
            running = obs.decode_running / ready
            batch_target = tick.profile.max_batch_size * self.kv_target
            desired = max(desired, pods_metric_replicas(current, ready, running / batch_target))
        return Layout(
            mixed=self._behavior.normalize(tick.now_s, current, desired, tick.config.interval_seconds)
        )


@dataclass
class FixedAggregatedPolicy:
    """A fixed count of colocated replicas: the aggregated layout at a given GPU count (the vLLM-style
    deployment DistServe compares against at equal GPUs)."""

    mixed: int
    name: str = "aggregated-static"
    architecture: Architecture = "aggregated"

    def decide(self, tick: TickInput) -> Layout:
        return Layout(mixed=self.mixed)

    def initial_layout(self, tick: TickInput) -> Layout:
        return Layout(mixed=self.mixed)
