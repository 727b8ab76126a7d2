"""oracle: knows the future load; the lower bound on GPUs.

At each tick it reads the trace itself. Replicas it adds now serve from now + startup until the next
decision's replicas are ready (one interval later), so growth is sized for the busiest metrics-window
of [now + startup, now + startup + interval]; replicas it already has are kept only while the busiest
window of [now, now + startup + interval] needs them (a released replica cannot come back in time).
Sizes come from the operator's capacity model (`dopd_operator.capacity`) given that window's true load
(rate and burstiness, on a generated trace the law's rather than that one draw's, `sizing.busiest_window`;
the lengths themselves; and on a trace with block hashes the prefix-cache hit rate
those requests will see, from every block's exact reuse distance, and, where dopd's router would measure
it, how that rate moves with the prefill pool's size) times per-role factors
`prefill_scale` / `decode_scale`: `search.calibrate_oracle` searches those factors with the simulator,
over a range wide enough not to confine it to the model's sizes, for the fewest replicas that still
meet the attainment target. The factors it finds are the capacity model's calibration: 1.0 means the
model, told the load exactly, sizes exactly. No forecast error, no stabilization, no step limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dopd_forecaster.traces import Trace
from dopd_operator.api import RoleSpec
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.metrics.presets import PRESETS
from dopd_operator.planner_load import lead_time_seconds
from dopd_operator.prefix_curve import PrefixCacheCurve
from dopd_sim.metrics import percentile
from dopd_sim.policies.base import Architecture, Layout, TickInput
from dopd_sim.policies.sizing import busiest_window
from dopd_sim.prefix_cache import PrefixTrace, known_hit_curve, known_hit_mix


def known_workload(
    input_tokens: npt.ArrayLike,
    output_tokens: npt.ArrayLike,
    rate_rps: float,
    arrival_scv: float,
    prefix_cache_hit_rate: float = 0.0,
    prefix_cache_curve: PrefixCacheCurve | None = None,
    prefix_hit_mix: tuple[tuple[float, float], ...] | None = None,
) -> Workload:
    """A capacity-model workload that knows its requests' lengths themselves (perfect knowledge, not a
    fit to two of their statistics), at `rate_rps` with that burstiness. The oracle's and
    `dopd_sim.steady`'s."""
    inputs = np.asarray(input_tokens, dtype=np.float64)
    outputs = np.asarray(output_tokens, dtype=np.float64)
    return Workload(
        arrival_rate_rps=rate_rps,
        input_tokens_mean=float(np.mean(inputs)),
        input_tokens_p90=percentile(inputs, 90),
        output_tokens_mean=float(np.mean(outputs)),
        output_tokens_p90=percentile(outputs, 90),
        arrival_scv=arrival_scv,
        prefix_cache_hit_rate=prefix_cache_hit_rate,
        prefix_cache_curve=prefix_cache_curve,
        prefix_hit_mix=prefix_hit_mix,
        input_tokens_known=tuple(inputs.tolist()),
        output_tokens_known=tuple(outputs.tolist()),
    )


def _bounded(replicas: int, role: RoleSpec) -> int:
    """`replicas` within the role's minReplicas (at least 1) and maxReplicas."""
    return min(max(replicas, role.min_replicas, 1), role.max_replicas)


@dataclass
class OraclePolicy:
    trace: Trace
    prefill_scale: float = 1.0
    decode_scale: float = 1.0
    name: str = "oracle"
    architecture: Architecture = "disaggregated"
    # per role, whether its factor changed any size from the model's own (rounded up, clamped): a factor
    # that changed none is the model's sizes, whatever its value (a pool of 1 stays 1 at x0.25)
    resized: dict[str, bool] = field(default_factory=lambda: {"prefill": False, "decode": False})

    def _workload(self, start_s: float, end_s: float, window_s: float, tick: TickInput) -> Workload | None:
        """The busiest window's rate and burstiness among those overlapping [start, end + window)
        (`sizing.busiest_window`), with the lengths of the requests arriving there and, on a trace with
        block hashes, their prefix-cache hits (`_known_hits`)."""
        found = busiest_window(self.trace, start_s, end_s, window_s)
        if found is None:
            return None
        rate, scv, lo, hi = found
        hit_rate, curve, mix = self._known_hits(lo, hi, tick)
        return known_workload(
            self.trace.input_tokens[lo:hi], self.trace.output_tokens[lo:hi], rate, scv, hit_rate, curve, mix
        )

    def _known_hits(
        self, lo: int, hi: int, tick: TickInput
    ) -> tuple[float, PrefixCacheCurve | None, tuple[tuple[float, float], ...] | None]:
        """The hit rate requests `lo:hi` will see at the ready prefill pool's cache, how those hits fall
        on prompts (`known_hit_mix`: most hit their cached prefix or nothing), and, where the spec's
        engine preset reads the router's curve (dopd's; as `observe` gates what dopd sees), how the rate
        moves with the pool: known from every block's exact reuse distance, not sampled from the past
        (which cannot hold a reuse farther back than the traffic seen so far). Perfect knowledge of the
        load includes how much of it a cache serves, and where."""
        if not isinstance(self.trace, PrefixTrace):
            return 0.0, None, None
        kv = tick.profile.kv_capacity_tokens
        spec = tick.config.spec
        largest = spec.prefill.max_replicas * kv
        # Anchored at the largest pool: known, the curve needs no anchor (its scale is 1 at any), and at a
        # cold cache's first minute a small pool's few hits would read as too flat to scale from.
        curve = known_hit_curve(self.trace, lo, hi, largest)
        if curve is None:
            return 0.0, None, None
        with_curve = PRESETS[spec.engine].prefix_reuse is not None
        hit_rate = curve.hit_rate(max(tick.observation.prefill.ready, 1) * kv)
        return hit_rate, curve if with_curve else None, known_hit_mix(self.trace, lo, hi, largest)

    def _size(self, workload: Workload | None, tick: TickInput) -> Layout:
        spec = tick.config.spec
        if workload is None:
            return Layout(prefill=max(spec.prefill.min_replicas, 1), decode=max(spec.decode.min_replicas, 1))
        model = CapacityModel(tick.profile, spec.slo, workload, tick.config.prefill_token_budget)
        rate = workload.arrival_rate_rps
        layout: dict[str, int] = {}
        for role, size, scale, bounds in (
            ("prefill", model.prefill_replicas(rate), self.prefill_scale, spec.prefill),
            ("decode", model.decode_replicas(rate), self.decode_scale, spec.decode),
        ):
            layout[role] = _bounded(math.ceil(size * scale - 1e-9), bounds)
            self.resized[role] = self.resized[role] or layout[role] != _bounded(size, bounds)
        return Layout(prefill=layout["prefill"], decode=layout["decode"])

    def decide(self, tick: TickInput) -> Layout:
        spec, config, now = tick.config.spec, tick.config, tick.now_s
        lead = lead_time_seconds(spec)
        startup = lead - spec.scaling.interval_seconds
        end = now + lead
        window = config.window_seconds
        grow = self._size(self._workload(now + startup, end, window, tick), tick)
        keep = self._size(self._workload(now, end, window, tick), tick)
        current = tick.current
        return Layout(
            prefill=max(grow.prefill, min(current.prefill, keep.prefill)),
            decode=max(grow.decode, min(current.decode, keep.decode)),
        )

    def initial_layout(self, tick: TickInput) -> Layout:
        spec, config = tick.config.spec, tick.config
        return self._size(self._workload(0.0, lead_time_seconds(spec), config.window_seconds, tick), tick)
