"""dopd: the operator's own control tick (`dopd_operator.tick.run_tick`), driven in simulated time.

Each controller tick hands the tick what the Kopf loop hands it: the Observation, the arrival-rate
history (here bucketed from the simulated counters, there a Prometheus range query), the per-model
forecaster and the planner state carried from the last tick. The Decision's replicas are applied and its
state is kept for the next tick. dopd also brings its length-aware prefill queue (the DOPD paper's
scheduling), which `dopd-fifo` leaves out so the two contributions can be told apart. With `cold_start`
the run starts from the spec's minReplicas instead of the warm start every policy shares (the cluster a
new DisaggregatedModel gets before its first decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dopd_forecaster.forecaster import SeriesForecaster
from dopd_operator.planner_types import Decision, PlannerState
from dopd_operator.tick import LoadHistory, TickResult, make_forecaster, run_tick
from dopd_sim.config import QueuePolicy
from dopd_sim.policies.base import Architecture, Layout, TickInput

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
# A generous fit limit: a wall-clock limit hit on a busy machine would make runs non-deterministic.
SIM_FIT_TIMEOUT_S = 120.0


@dataclass
class DopdPolicy:
    name: str = "dopd"
    architecture: Architecture = "disaggregated"
    prefill_queue: QueuePolicy = "length-aware"
    cold_start: bool = False
    state: PlannerState = field(default_factory=PlannerState)
    forecasts: int = 0
    forecast_failures: int = 0
    last_decision: Decision | None = None
    last_result: TickResult | None = None
    _forecaster: SeriesForecaster | None = None
    _forecaster_made: bool = False

    def initial_layout(self, tick: TickInput) -> Layout | None:
        """minReplicas with `cold_start`; else None, the warm start every policy shares."""
        if not self.cold_start:
            return None
        spec = tick.config.spec
        return Layout(prefill=spec.prefill.min_replicas, decode=spec.decode.min_replicas)

    def decide(self, tick: TickInput) -> Layout:
        spec = tick.config.spec
        if not self._forecaster_made:
            self._forecaster = make_forecaster(spec, tick.config.forecast_step_seconds, SIM_FIT_TIMEOUT_S)
            self._forecaster_made = True
        offset_s = EPOCH.timestamp()
        history = LoadHistory(tick.history_timestamps_s + offset_s, tick.history_arrival_rps)
        now = EPOCH + timedelta(seconds=tick.now_s)
        result = run_tick(
            spec,
            tick.observation,
            history,
            self._forecaster,
            self.state,
            now,
            step_s=tick.config.forecast_step_seconds,
        )
        if result.forecast is not None:
            self.forecasts += 1
        elif self._forecaster is not None and len(history.arrival_rate_rps):
            self.forecast_failures += 1
        self.state = result.decision.state
        self.last_decision = result.decision
        self.last_result = result
        return Layout(prefill=result.decision.prefill, decode=result.decision.decode)
