"""The planner end to end on one tick: what a user sees in status for common situations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.planner import plan
from dopd_operator.planner_types import LoadForecast, Observation, PlannerState, RoleObservation


def test_steady_load_gets_a_balanced_layout_with_reasons() -> None:
    d = plan(make_spec(), make_obs(rate=40, prefill=1, decode=1), None, PlannerState(), T0)
    assert d.metrics_healthy
    assert d.prefill >= 2 and d.decode >= 1
    assert d.capacity is not None
    assert d.capacity.sustainable_rps >= 40  # the layout serves the load it was sized for
    text = " ".join(d.reasons)
    assert "40.00 rps" in text and "prefill:" in text and "decode: B*=" in text


def test_unknown_metrics_hold_replicas_and_say_so() -> None:
    d = plan(make_spec(), make_obs(rate=None, prefill=3, decode=5), None, PlannerState(), T0)
    assert (d.prefill, d.decode) == (3, 5)  # not scaled to zero: unknown is not zero
    assert not d.metrics_healthy
    assert "metrics unknown" in d.reasons[0] and "arrival rate" in d.reasons[0]
    assert d.clamps[0].stage == "MetricsUnknown"


def test_unknown_metrics_with_fallback_policy_moves_to_fallback() -> None:
    spec = make_spec(
        scaling={"onMetricsUnknown": "Fallback", "fallbackReplicas": {"prefill": 2, "decode": 4}}
    )
    obs = make_obs(rate=None, prefill=1, decode=1, problems=("prometheus: connection refused",))
    d = plan(spec, obs, None, PlannerState(), T0)
    assert (d.prefill, d.decode) == (2, 4)
    assert "connection refused" in d.reasons[0]


def test_paused_changes_nothing() -> None:
    d = plan(
        make_spec(scaling={"mode": "Paused"}),
        make_obs(rate=500, prefill=1, decode=1),
        None,
        PlannerState(),
        T0,
    )
    assert (d.prefill, d.decode) == (1, 1)
    assert "Paused" in d.reasons[0]


def test_forecast_above_current_load_scales_ahead() -> None:
    spec, obs = make_spec(), make_obs(rate=10, prefill=1, decode=1)
    now_only = plan(spec, obs, None, PlannerState(), T0)
    forecast = LoadForecast(
        model="holt-winters",
        horizon_seconds=150,
        quantile=0.9,
        arrival_rate_rps_mean=50,
        arrival_rate_rps_upper=60,
    )
    ahead = plan(spec, obs, forecast, PlannerState(), T0)
    assert ahead.prefill + ahead.decode > now_only.prefill + now_only.decode
    assert "forecast P90 at +150s by holt-winters" in ahead.reasons[0]


def test_forecast_below_current_load_is_ignored() -> None:
    spec, obs = make_spec(), make_obs(rate=40)
    low = LoadForecast(
        model="arima", horizon_seconds=60, quantile=0.9, arrival_rate_rps_mean=5, arrival_rate_rps_upper=6
    )
    assert (
        plan(spec, obs, low, PlannerState(), T0).prefill == plan(spec, obs, None, PlannerState(), T0).prefill
    )


def test_budget_binds_and_is_reported() -> None:
    spec = make_spec(scaling={"gpuBudget": 8})
    d = plan(spec, make_obs(rate=400, prefill=1, decode=1), None, PlannerState(), T0)
    assert d.gpus == 8
    assert d.scaling_limited
    assert any(c.stage == "GpuBudget" for c in d.clamps)


def test_prefill_queue_adds_prefill_capacity() -> None:
    spec = make_spec()
    calm = plan(spec, make_obs(rate=20), None, PlannerState(), T0)
    queued = plan(spec, make_obs(rate=20, prefill_queue_depth=600), None, PlannerState(), T0)
    assert queued.prefill > calm.prefill
    assert queued.decode == calm.decode


def test_slow_observed_ttft_raises_the_prefill_correction() -> None:
    spec = make_spec()
    obs = make_obs(rate=20, prefill=2, decode=2, ttft_seconds=5.0)
    d = plan(spec, obs, None, PlannerState(), T0)
    assert d.state.prefill_correction > 1.0
    uncorrected = plan(spec, make_obs(rate=20, prefill=2, decode=2), None, PlannerState(), T0)
    assert d.prefill >= uncorrected.prefill
    assert any("corrected by observed latency" in r for r in d.reasons)


def test_a_profile_that_matches_the_engine_keeps_its_corrections_at_one() -> None:
    """The engine behaves exactly as the profile says: at 20 rps on 3 ready prefill replicas (prompts mean
    1000 / P90 2000 tokens) the profile predicts a P90 TTFT of 0.0724 s, and 2 decode replicas holding 80
    sequences give a P90 inter-token latency of 9.75 ms. Observing those very numbers at P90 must leave
    both factors at 1. Comparing the observed P90 with the predicted P99 TTFT (0.227 s), as the planner
    once did, reads the profile as 3x too slow and drives the prefill factor to its 0.8 floor; comparing
    the P90 inter-token latency with the step time at the mean batch (9.24 ms) drifts decode to 1.055."""
    spec = make_spec()
    obs = make_obs(rate=20, prefill=3, decode=2, ttft_seconds=0.0724, tpot_seconds=0.00975, decode_running=80)
    state = PlannerState()
    for _ in range(10):
        state = plan(spec, obs, None, state, T0).state
    assert state.prefill_correction == pytest.approx(1.0, abs=0.01)
    assert state.decode_correction == pytest.approx(1.0, abs=0.01)


def test_latencies_without_their_percentile_are_rejected() -> None:
    with pytest.raises(ValueError, match="latency_percentile is required"):
        Observation(arrival_rate_rps=1.0, ttft_seconds=0.5)


def test_correction_is_bounded() -> None:
    state = PlannerState()
    for _ in range(20):
        d = plan(make_spec(), make_obs(rate=20, prefill=2, decode=2, ttft_seconds=500.0), None, state, T0)
        state = d.state
    assert state.prefill_correction <= 2.0


def test_state_round_trips_through_status_and_keeps_scale_down_window() -> None:
    spec = make_spec(scaling={"scaleDown": {"stabilizationSeconds": 300}})
    high = plan(spec, make_obs(rate=200, prefill=1, decode=1), None, PlannerState(), T0)
    # the state goes through the CR status as JSON and back (an operator restart)
    restored = PlannerState.model_validate(high.state.to_k8s())
    later = make_obs(rate=1, prefill=high.prefill, decode=high.decode)
    within = plan(spec, later, None, restored, T0 + timedelta(seconds=120))
    assert (within.prefill, within.decode) == (high.prefill, high.decode)
    after = plan(spec, later, None, within.state, T0 + timedelta(seconds=420))
    assert after.prefill < high.prefill


def test_unschedulable_decode_pods_block_decode_scale_up() -> None:
    obs = make_obs(
        rate=200, prefill=1, decode_obs=RoleObservation(current=2, ready=1, pending=1, unschedulable=1)
    )
    d = plan(make_spec(), obs, None, PlannerState(), T0)
    assert d.decode == 2
    assert d.capacity_blocked


def test_bursty_arrivals_get_more_prefill_than_poisson() -> None:
    spec = make_spec(slo={"ttftSeconds": 0.3})
    poisson = plan(spec, make_obs(rate=150, arrival_scv=1.0), None, PlannerState(), T0)
    bursty = plan(spec, make_obs(rate=150, arrival_scv=8.0), None, PlannerState(), T0)
    # without the burstiness term both would get the same pool and the bursty one would queue
    assert bursty.prefill > poisson.prefill
    assert bursty.decode == poisson.decode


def test_attainment_target_above_the_percentile_sizes_for_the_target() -> None:
    loose = make_spec(slo={"percentile": 90, "attainmentTarget": 0.9, "ttftSeconds": 0.3})
    strict = make_spec(slo={"percentile": 90, "attainmentTarget": 0.99, "ttftSeconds": 0.3})
    obs = make_obs(rate=150)
    assert (
        plan(strict, obs, None, PlannerState(), T0).prefill
        > plan(loose, obs, None, PlannerState(), T0).prefill
    )
