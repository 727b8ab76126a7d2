"""The status and Events a tick produces: what `kubectl get dm` / `kubectl describe dm` show."""

from __future__ import annotations

from datetime import timedelta

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.controller.status import Health, TickOutcome, build_status, invalid_status
from dopd_operator.planner_types import Observation, PlannerState
from dopd_operator.tick import LoadHistory, run_tick

OK = Health(True, "MetricsAvailable", "every input the planner needs is known")


def _outcome(
    spec: DisaggregatedModelSpec,
    obs: Observation,
    acted: bool = True,
    health: Health = OK,
    conflict: str | None = None,
) -> TickOutcome:
    result = run_tick(spec, obs, LoadHistory.empty(), None, PlannerState(), T0)
    return TickOutcome(
        spec=spec, generation=3, observation=obs, result=result, health=health, acted=acted, conflict=conflict
    )


def _cond(status, type_):  # type: ignore[no-untyped-def]
    return next(c for c in status.conditions if c.type == type_)


def test_a_scale_up_says_why_in_an_event_and_shows_in_the_columns() -> None:
    spec = make_spec(scaling={"mode": "Active"})
    obs = make_obs(rate=200, prefill=1, decode=1, shed_rate_rps=120.0)
    status, events = build_status(None, _outcome(spec, obs), T0)
    d = status.last_decision
    assert d is not None and d.prefill > 1 and d.decode > 1
    assert status.prefill.summary == f"1/{d.prefill}" and status.decode.summary == f"1/{d.decode}"
    assert status.ratio == f"{d.prefill}:{d.decode} ({d.prefill / d.decode:.2f} P/D)"
    # the demand, and how much of it the router turned away while the pools were too small
    assert status.load is not None and status.load.arrival_rate_rps == 200.0
    assert status.load.shed_rate_rps == 120.0
    assert status.model_dump(by_alias=True)["load"]["shedRateRps"] == 120.0
    scaled = [e for e in events if e.reason == "ScaledUp"]
    assert {e.message.split(":")[0] for e in scaled} == {
        f"prefill 1 -> {d.prefill}",
        f"decode 1 -> {d.decode}",
    }
    decode_event = next(e for e in scaled if e.message.startswith("decode"))
    assert "load 200.00 rps observed" in decode_event.message
    assert "within TPOT 50 ms" in decode_event.message and "at batch" in decode_event.message
    assert _cond(status, "Ready").status == "False"  # the new replicas are not ready yet
    assert _cond(status, "ScalingActive").status == "True"
    assert _cond(status, "MetricsHealthy").status == "True"
    assert status.observed_generation == 3
    assert len(status.history) == 1


def test_advisory_mode_recommends_without_scaled_events() -> None:
    spec = make_spec(scaling={"mode": "Advisory"})
    status, events = build_status(None, _outcome(spec, make_obs(rate=40), acted=False), T0)
    assert {e.reason for e in events} == {"Recommended"}
    assert all(e.message.startswith("would scale ") for e in events)
    active = _cond(status, "ScalingActive")
    assert (active.status, active.reason) == ("False", "AdvisoryMode")
    # Ready compares ready pods with what the pools have, not with advice nobody applied
    assert _cond(status, "Ready").status == "True"


def test_metrics_going_unknown_warns_once_and_recovery_is_announced() -> None:
    spec = make_spec()
    down = Health(False, "PrometheusUnavailable", "Prometheus unavailable: connection refused")
    unknown = Observation(problems=("Prometheus unavailable: connection refused",))
    first, events1 = build_status(None, _outcome(spec, unknown, acted=False, health=down), T0)
    second, events2 = build_status(
        first, _outcome(spec, unknown, acted=False, health=down), T0 + timedelta(seconds=30)
    )
    assert [e.reason for e in events1] == ["MetricsUnavailable"]
    assert events2 == []  # no Event storm while the outage lasts
    cond = _cond(second, "MetricsHealthy")
    assert (cond.status, cond.reason) == ("False", "PrometheusUnavailable")
    assert cond.last_transition_time == T0  # unchanged status keeps its transition time
    assert _cond(second, "ScalingActive").reason == "MetricsUnknown"
    third, events3 = build_status(
        second, _outcome(spec, make_obs(rate=1), acted=False), T0 + timedelta(seconds=60)
    )
    assert "MetricsRecovered" in [e.reason for e in events3]
    assert _cond(third, "MetricsHealthy").last_transition_time == T0 + timedelta(seconds=60)


def test_a_conflict_is_a_condition_and_one_warning() -> None:
    why = "HorizontalPodAutoscaler h scales Deployment m-decode (decode); dopd does not fight it"
    status, events = build_status(
        None, _outcome(make_spec(), make_obs(rate=40), acted=False, conflict=why), T0
    )
    conflict = _cond(status, "ScalingConflict")
    assert (conflict.status, conflict.message) == ("True", why)
    assert _cond(status, "ScalingActive").reason == "ScalingConflict"
    assert [e.reason for e in events if e.type == "Warning"] == ["ScalingConflict"]
    assert not [e for e in events if e.reason in ("ScaledUp", "ScaledDown")]


def test_slo_attainment_summary_is_the_worse_of_ttft_and_tpot() -> None:
    obs = make_obs(rate=5, prefill=1, decode=1, ttft_attainment=0.995, tpot_attainment=0.97)
    status, _ = build_status(None, _outcome(make_spec(), obs), T0)
    assert status.slo_attainment is not None
    assert status.slo_attainment.summary == "97.0%"
    unknown, _ = build_status(None, _outcome(make_spec(), make_obs(rate=5)), T0)
    assert unknown.slo_attainment is not None and unknown.slo_attainment.summary == "-"


def test_an_invalid_spec_is_flagged_once_and_nothing_else_changes() -> None:
    good, _ = build_status(None, _outcome(make_spec(), make_obs(rate=40)), T0)
    bad, events = invalid_status(good, "spec.profile.preset: unknown profile preset 'x'", 4, T0)
    assert _cond(bad, "SpecValid").status == "False"
    assert _cond(bad, "ScalingActive").reason == "InvalidSpec"
    assert bad.last_decision == good.last_decision and bad.planner == good.planner
    assert [e.reason for e in events] == ["InvalidSpec"]
    _, events2 = invalid_status(bad, "spec.profile.preset: unknown profile preset 'x'", 4, T0)
    assert events2 == []


def test_unschedulable_pods_report_the_gpu_deficit_once() -> None:
    from dopd_operator.planner_types import RoleObservation

    spec = make_spec(decode={"gpusPerReplica": 2})
    obs = make_obs(
        rate=40, prefill=2, decode_obs=RoleObservation(current=5, ready=2, pending=3, unschedulable=3)
    )
    status, events = build_status(None, _outcome(spec, obs), T0)
    blocked = _cond(status, "CapacityBlocked")
    assert blocked.status == "True"
    # 3 decode pods x 2 GPUs each
    assert blocked.message.startswith(
        "3 decode pod(s) cannot be scheduled: the cluster is 6 nvidia.com/gpu short"
    )
    assert [e.reason for e in events if e.type == "Warning"] == ["CapacityBlocked"]
    assert status.decode.unschedulable == 3
    again, events2 = build_status(status, _outcome(spec, obs), T0 + timedelta(seconds=30))
    assert not [e for e in events2 if e.reason == "CapacityBlocked"]
    assert _cond(again, "CapacityBlocked").last_transition_time == T0


def test_a_new_model_waiting_for_its_first_metrics_is_not_a_warning_until_its_grace_ends() -> None:
    from dataclasses import replace

    spec = make_spec(metrics={"windowSeconds": 60}, scaling={"intervalSeconds": 30})
    unknown = Health(False, "MetricsUnknown", "arrival rate: no samples yet")
    young = replace(_outcome(spec, make_obs(rate=None), acted=False, health=unknown), created=T0)
    # grace: two 60 s windows and two 30 s ticks = 180 s
    first, events = build_status(None, young, T0 + timedelta(seconds=20))
    assert _cond(first, "MetricsHealthy").reason == "WaitingForMetrics" and events == []
    late, events = build_status(first, young, T0 + timedelta(seconds=181))
    assert _cond(late, "MetricsHealthy").reason == "MetricsUnknown"
    assert [e.reason for e in events] == ["MetricsUnavailable"]  # a misconfigured selector is reported


def test_a_binding_gpu_budget_says_what_is_served_and_what_it_would_take() -> None:
    spec = make_spec(scaling={"gpuBudget": 4})
    status, events = build_status(None, _outcome(spec, make_obs(rate=400, prefill=2, decode=2)), T0)
    budget = _cond(status, "BudgetLimited")
    assert (budget.status, budget.reason) == ("True", "BudgetBinds")
    assert budget.message.startswith("the budget binds: serving ")
    assert " more GPUs would serve all of it" in budget.message
    assert [e.reason for e in events if e.type == "Warning"] == ["BudgetLimited"]
    calm, _ = build_status(None, _outcome(make_spec(scaling={"gpuBudget": 40}), make_obs(rate=5)), T0)
    assert _cond(calm, "BudgetLimited").status == "False"
