"""The one interface every scaling policy implements, and what it is given each controller tick.

A policy sees what the operator would see (an `Observation` built from the simulated cluster's metrics
over the metrics window, and the arrival-rate history a Prometheus range query would return) and answers
with a `Layout`: target replicas per role. Only `oracle` is handed the future, at construction.
Callers: `cluster.Simulator` (each tick), `policies.make_policy` (construction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.planner_types import Observation
from dopd_operator.profile import PerformanceProfile
from dopd_sim.config import SimConfig
from dopd_sim.metrics import IntervalAverages

Architecture = Literal["disaggregated", "aggregated"]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Layout:
    """Target replicas per role. Disaggregated policies set prefill/decode, aggregated ones mixed."""

    prefill: int = 0
    decode: int = 0
    mixed: int = 0

    def gpus(self, spec: DisaggregatedModelSpec) -> int:
        return (
            self.prefill * spec.prefill.gpus_per_replica
            + self.decode * spec.decode.gpus_per_replica
            + self.mixed * spec.prefill.gpus_per_replica
        )


@dataclass(frozen=True)
class TickInput:
    """One controller tick's inputs, in simulated seconds since the trace start."""

    now_s: float
    observation: Observation
    history_timestamps_s: FloatArray  # start of each forecast-step bucket up to now
    history_arrival_rps: FloatArray  # arrival rate in each bucket (what Prometheus range queries give)
    current: Layout  # replicas currently targeted (not draining)
    config: SimConfig
    profile: PerformanceProfile
    # Busy share of ready prefill replicas since the last tick (a DCGM-utilization-like gauge that the
    # operator's Observation does not carry; only the HPA-style baselines read it). None: unknown.
    prefill_utilization: float | None = None
    # Averages over the last `seconds` as Dynamo's planner queries them from the frontend's histograms
    # (mean TTFT and ITL, request count, mean ISL and OSL); only `dynamo-sla` reads them.
    averages: Callable[[float], IntervalAverages] | None = None


class Policy(Protocol):
    """A scaling policy: one small module each under dopd_sim/policies."""

    name: str
    architecture: Architecture

    def decide(self, tick: TickInput) -> Layout:
        """Target replicas for this tick."""
        ...
