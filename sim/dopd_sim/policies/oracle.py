"""oracle: knows the future load; the lower bound on GPUs.

At each tick it reads the trace itself. Replicas it adds now serve from now + startup until the next
decision's replicas are ready (one interval later), so growth is sized for the busiest metrics-window
of [now + startup, now + startup + interval]; replicas it already has are kept only while the busiest
window of [now, now + startup + interval] needs them (a released replica cannot come back in time).
Sizes come from the operator's capacity model (`dopd_operator.capacity`) times per-role factors
`prefill_scale` / `decode_scale`: `search.calibrate_oracle` bisects those factors with the simulator
to the fewest replicas that still meet the attainment target, because the capacity model alone is
conservative (it sizes prefill as an M/G/c queue of single prompts, while replicas batch). No forecast
error, no stabilization, no step limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.planner import lead_time_seconds
from dopd_sim.metrics import percentile
from dopd_sim.policies.base import Architecture, Layout, TickInput


@dataclass
class OraclePolicy:
    trace: Trace
    prefill_scale: float = 1.0
    decode_scale: float = 1.0
    name: str = "oracle"
    architecture: Architecture = "disaggregated"

    def _workload(self, start_s: float, end_s: float, window_s: float) -> Workload | None:
        """Lengths over [start, end + window) and the busiest window's rate among windows starting in it."""
        arrivals = self.trace.arrival_s
        lo = int(np.searchsorted(arrivals, start_s, side="left"))
        hi = int(np.searchsorted(arrivals, end_s + window_s, side="left"))
        if hi <= lo:
            return None
        span = arrivals[lo:hi]
        starts = np.searchsorted(span, end_s, side="right")
        ends = np.searchsorted(span, span[:starts] + window_s, side="left")
        peak = int(np.max(ends - np.arange(starts))) if starts else len(span)
        inputs = self.trace.input_tokens[lo:hi].astype(np.float64)
        outputs = self.trace.output_tokens[lo:hi].astype(np.float64)
        return Workload(
            arrival_rate_rps=peak / window_s,
            input_tokens_mean=float(np.mean(inputs)),
            input_tokens_p90=percentile(inputs, 90),
            output_tokens_mean=float(np.mean(outputs)),
            output_tokens_p90=percentile(outputs, 90),
        )

    def _size(self, workload: Workload | None, tick: TickInput) -> Layout:
        spec = tick.config.spec
        if workload is None:
            return Layout(prefill=max(spec.prefill.min_replicas, 1), decode=max(spec.decode.min_replicas, 1))
        model = CapacityModel(tick.profile, spec.slo, workload)
        rate = workload.arrival_rate_rps
        prefill = math.ceil(model.prefill_replicas(rate) * self.prefill_scale - 1e-9)
        decode = math.ceil(model.decode_replicas(rate) * self.decode_scale - 1e-9)
        return Layout(
            prefill=min(max(prefill, spec.prefill.min_replicas, 1), spec.prefill.max_replicas),
            decode=min(max(decode, spec.decode.min_replicas, 1), spec.decode.max_replicas),
        )

    def decide(self, tick: TickInput) -> Layout:
        spec, config, now = tick.config.spec, tick.config, tick.now_s
        lead = lead_time_seconds(spec)
        startup = lead - spec.scaling.interval_seconds
        end = now + lead
        window = config.window_seconds
        grow = self._size(self._workload(now + startup, end, window), tick)
        keep = self._size(self._workload(now, end, window), tick)
        current = tick.current
        return Layout(
            prefill=max(grow.prefill, min(current.prefill, keep.prefill)),
            decode=max(grow.decode, min(current.decode, keep.decode)),
        )

    def initial_layout(self, tick: TickInput) -> Layout:
        spec, config = tick.config.spec, tick.config
        return self._size(self._workload(0.0, lead_time_seconds(spec), config.window_seconds), tick)
