"""The router's admission in the simulator: an overloaded fixed layout serves its capacity within the SLO
instead of collapsing, batch is shed before interactive, every request is accounted for, and the
planner still sees the whole demand."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sim_helpers import ScriptedPolicy

import dopd_sim.admission as sim_admission
import dopd_worker.admission as router_admission
from dopd_forecaster.traces import Trace
from dopd_sim.admission import SimAdmissionConfig
from dopd_sim.cluster import Simulator
from dopd_sim.config import SimConfig, default_spec
from dopd_sim.policies.base import Layout
from dopd_sim.synthetic import poisson
from dopd_worker.admission import AdmissionConfig, Priority, Reason

TTFT_SLO_S, TPOT_SLO_S = 1.5, 0.05  # default_spec()'s SLOs; profile llama3-8b-h100
SLOS = AdmissionConfig(TTFT_SLO_S, tpot_slo_seconds=TPOT_SLO_S)
OFFERED_RPS = 90.0  # one prefill replica serves about 32 Azure-length prompts a second: ~3x overload


@pytest.fixture(scope="module")
def trace() -> Trace:
    return poisson(OFFERED_RPS, 120.0, seed=3)


def _run(
    trace: Trace, admission: SimAdmissionConfig | None, seed: int = 3, deadline_share: float | None = None
) -> Simulator:
    """A fixed 1P/1D layout; without a dispatch deadline unless one is given (admission replaces it)."""
    config = SimConfig(
        spec=default_spec(),
        seed=seed,
        prefill_queue="length-aware",
        admission=admission,
        dispatch_deadline_share=deadline_share,
    )
    sim = Simulator(trace, ScriptedPolicy(Layout(prefill=1, decode=1)), config)
    sim.run()
    return sim


def _met(sim: Simulator) -> np.ndarray:
    ttft, tpot = np.asarray(sim.log.ttft_s), np.asarray(sim.log.tpot_s)
    with np.errstate(invalid="ignore"):
        return np.asarray((ttft <= TTFT_SLO_S) & (tpot <= TPOT_SLO_S))


def test_the_simulator_calls_the_routers_own_decision() -> None:
    assert sim_admission.decide is router_admission.decide


def test_overload_serves_capacity_within_the_slo_instead_of_collapsing(trace: Trace) -> None:
    without = _run(trace, None)
    admitting = _run(trace, SimAdmissionConfig(SLOS))
    admission = admitting.admission
    assert without.admission is None and admission is not None
    met_without, met_with = int(_met(without).sum()), int(_met(admitting).sum())
    shed = sum(admission.shed.values())
    admitted = len(trace) - shed
    # Without admission the queue grows for the whole run: only the first seconds meet the SLO.
    assert met_without / len(trace) < 0.1
    # With it, at least 99% of what was admitted meets the SLO (expired requests count as misses)...
    assert met_with / admitted >= 0.99
    # ...and the pool keeps serving near its capacity: >= 25 rps of the ~32 one replica sustains.
    assert met_with / trace.duration_s >= 25.0
    assert admission.shed[Reason.PREDICTED_TTFT] > 0
    # Every request is accounted for: served, shed at entry or expired in the queue (both in the log).
    assert admission.admitted == admitted
    assert admitting.log.completed + sum(admitting.log.rejected) == len(trace)
    assert sum(admitting.log.rejected) == shed + admission.expired


def test_without_admission_the_dispatch_deadline_serves_on_time_what_it_can_and_loses_nothing(
    trace: Trace,
) -> None:
    """The router's other answer to overload, for those who would rather serve late than refuse: prompts
    past the dispatch deadline go last. At the same 3x overload most of what the pool can serve meets
    the SLO (vs under 10% in arrival order), and every request is still served."""
    deadline = _run(trace, None, deadline_share=SimConfig().dispatch_deadline_share)
    assert deadline.prefill_queue.config.late_seconds == pytest.approx(TTFT_SLO_S * 2 / 3)
    met = int(_met(deadline).sum())
    assert met / trace.duration_s >= 25.0
    assert deadline.log.completed == len(trace) and not any(deadline.log.rejected)
    # With admission on, the queue deadline expires such prompts instead: no dispatch deadline then.
    assert _run(trace, SimAdmissionConfig(SLOS), deadline_share=0.5).prefill_queue.config.late_seconds is None


def test_batch_is_shed_first_and_interactive_last(trace: Trace) -> None:
    sim = _run(trace, SimAdmissionConfig(SLOS, priority_shares=(1 / 3, 1 / 3, 1 / 3)))
    admission = sim.admission
    assert admission is not None
    offered = Counter(admission.priority_of)
    shed_share = {p: admission.shed_by_priority[p] / offered[p] for p in Priority}
    assert shed_share[Priority.BATCH] > shed_share[Priority.STANDARD] > shed_share[Priority.INTERACTIVE]


def test_the_planner_sees_the_whole_demand_not_what_was_admitted(trace: Trace) -> None:
    """Shedding must not hide the load: the observation's arrival rate is the router's arrival counter,
    which counts a request before admission decides."""
    sim = _run(trace, SimAdmissionConfig(SLOS))
    assert sim.admission is not None
    observed = [p.arrival_rate_rps for p in sim.timeline if 60.0 <= p.time_s <= 120.0]
    admitted_rps = sim.admission.admitted / trace.duration_s
    assert admitted_rps < 0.7 * OFFERED_RPS  # over 30% of the demand is shed...
    assert min(observed) > 0.85 * OFFERED_RPS  # ...and the planner sees all of it (not 0.7 of it)


def test_the_planner_also_sees_what_the_router_turned_away(trace: Trace) -> None:
    """The shed rate (the router's rejected + expired counters over the window) tells the planner what
    load the engines were given, which is what their latencies answer to (`Observation.served_rate_rps`)."""
    sim = _run(trace, SimAdmissionConfig(SLOS))
    now_s = trace.duration_s
    obs = sim.observer.observe(now_s, sim)
    window_s = sim.config.window_seconds
    turned_away = sum(1 for t in sim.log.shed_times if now_s - window_s < t <= now_s)
    assert turned_away > 0.3 * OFFERED_RPS * window_s
    assert obs.shed_rate_rps == pytest.approx(turned_away / window_s)
    assert obs.served_rate_rps is not None
    # what the engines were given, not the 90 offered: in steady overload, as many first tokens per
    # second as the prefill pool turned out over the window (admission keeps the short prompts, so more
    # requests than the ~32 rps of Azure-length prompts one replica sustains)
    first_tokens = sum(1 for t in sim.log.first_token_times if now_s - window_s < t <= now_s)
    assert obs.served_rate_rps == pytest.approx(first_tokens / window_s, rel=0.1)
    assert obs.served_rate_rps < 0.7 * OFFERED_RPS


def test_runs_are_deterministic_and_colocated_runs_have_no_admission(trace: Trace) -> None:
    config = SimAdmissionConfig(SLOS)
    first, second = _run(trace, config), _run(trace, config)
    assert first.log.ttft_s[:2000] == second.log.ttft_s[:2000] or np.allclose(
        first.log.ttft_s, second.log.ttft_s, equal_nan=True
    )
    assert first.admission is not None and second.admission is not None
    assert first.admission.shed == second.admission.shed
    colocated = ScriptedPolicy(Layout(prefill=0, decode=0, mixed=2), architecture="aggregated")
    sim = Simulator(trace, colocated, SimConfig(spec=default_spec(), admission=config))
    assert sim.admission is None
