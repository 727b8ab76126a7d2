"""The control tick is written once: the operator's loop and the simulator's dopd policy call the same
`run_tick`, so from the same inputs they reach the same decision."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from dopd_builders import make_obs, make_spec
from dopd_operator.planner_load import lead_time_seconds
from dopd_operator.planner_types import PlannerState, RoleObservation
from dopd_operator.tick import FORECAST_STEP_SECONDS, LoadHistory, make_forecaster, run_tick
from dopd_sim.config import SimConfig
from dopd_sim.policies.base import Layout, TickInput
from dopd_sim.policies.dopd import EPOCH, DopdPolicy


def _ramp(now_s: float) -> tuple[np.ndarray, np.ndarray]:
    stamps = np.arange(0.0, now_s, FORECAST_STEP_SECONDS)
    return stamps, 30.0 + stamps / 10.0  # +6 rps a minute


def test_the_simulator_and_the_operator_decide_the_same_from_the_same_inputs() -> None:
    spec = make_spec(forecast={"model": "ewma"}, scaling={"scaleDown": {"stabilizationSeconds": 120}})
    config = SimConfig(spec=spec)
    policy = DopdPolicy()
    operator_forecaster = make_forecaster(spec, FORECAST_STEP_SECONDS, fit_timeout_s=120.0)
    operator_state = PlannerState()
    layout = Layout(prefill=1, decode=1)
    for now_s in (600.0, 630.0, 660.0, 690.0):
        stamps, rates = _ramp(now_s)
        obs = make_obs(
            rate=float(rates[-1]),
            prefill_obs=RoleObservation(current=layout.prefill, ready=layout.prefill),
            decode_obs=RoleObservation(current=layout.decode, ready=layout.decode),
        )
        simulated = policy.decide(
            TickInput(now_s, obs, stamps, rates, layout, config, config.resolved_profile())
        )
        # the operator: the same history as a Prometheus range query returns it (POSIX seconds)
        history = LoadHistory(stamps + EPOCH.timestamp(), rates)
        now = EPOCH + timedelta(seconds=now_s)
        result = run_tick(spec, obs, history, operator_forecaster, operator_state, now)
        operator_state = result.decision.state
        assert (simulated.prefill, simulated.decode) == (result.decision.prefill, result.decision.decode)
        assert policy.last_result is not None
        assert policy.last_result.forecast == result.forecast
        assert policy.state == operator_state
        layout = simulated
    assert result.forecast is not None and result.forecast.model == "ewma"
    assert layout.prefill > 1  # the ramp was provisioned for, not ignored


def test_the_forecast_horizon_is_the_lead_time_and_learned_startup_replaces_the_prior() -> None:
    spec = make_spec(
        prefill={"startupSeconds": 120}, decode={"startupSeconds": 200}, scaling={"intervalSeconds": 30}
    )
    assert lead_time_seconds(spec) == 230.0  # the slower role's startup plus one interval
    learned = make_obs(
        prefill_obs=RoleObservation(current=1, ready=1, startup_seconds=40.0),
        decode_obs=RoleObservation(current=1, ready=1, startup_seconds=50.0),
    )
    assert lead_time_seconds(spec, learned) == 80.0
    stamps, rates = _ramp(900.0)
    result = run_tick(
        spec,
        learned,
        LoadHistory(stamps, rates),
        make_forecaster(
            spec.model_copy(update={"forecast": spec.forecast.model_copy(update={"model": "naive"})})
        ),
        PlannerState(),
        EPOCH + timedelta(seconds=900.0),
    )
    assert result.lead_time_seconds == 80.0
    assert result.forecast is not None and result.forecast.horizon_seconds >= 80.0


def test_no_forecast_says_why_and_the_planner_sizes_for_the_observed_load() -> None:
    spec = make_spec(forecast={"model": "none"})
    result = run_tick(spec, make_obs(rate=20), LoadHistory.empty(), None, PlannerState(), EPOCH)
    assert result.forecast is None
    assert result.forecast_problem == "forecast.model is none: sizing for the observed load"
    short = run_tick(
        make_spec(),
        make_obs(rate=20),
        LoadHistory(np.array([EPOCH.timestamp()]), np.array([20.0])),
        make_forecaster(make_spec()),
        PlannerState(),
        EPOCH,
    )
    assert short.forecast is None and short.forecast_problem is not None
    assert short.forecast_problem.startswith("no forecast: ")
    # the decision says why it had no forecast, not only that it had none
    assert "; no forecast (history too short: 1 usable points" in short.decision.reasons[0]
    assert (
        "; no forecast (forecast.model is none: sizing for the observed load)" in result.decision.reasons[0]
    )
