"""The planner end to end on one tick: what a user sees in status for common situations."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from dopd_builders import RISING_REUSE, T0, make_obs, make_spec, settled_state
from dopd_operator.api import Recommendation, SloSpec
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.planner import plan
from dopd_operator.planner_corrections import CORRECTION_BOUNDS
from dopd_operator.planner_types import LoadForecast, Observation, PlannerState, RoleObservation
from dopd_operator.profile import resolve_profile
from dopd_operator.profile_presets import PRESETS


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


def test_a_prefill_backlog_is_drained_over_the_lead_time_by_both_pools() -> None:
    # 60 rps needs 2P/2D. 9000 queued prompts, drained over the 150 s lead time (new replicas start
    # working only then), add 60 rps to both pools, what leaves prefill arriving at decode: 4P/3D, as
    # for 120 rps. Drained within one 30 s interval it would be 300 rps more (12P), for a queue those
    # replicas cannot reach before it has grown further; ignoring it at decode leaves decode at 2.
    spec = make_spec()
    calm = plan(spec, make_obs(rate=60), None, PlannerState(), T0)
    queued = plan(spec, make_obs(rate=60, prefill_queue_depth=9000), None, PlannerState(), T0)
    assert (calm.prefill, calm.decode) == (2, 2)
    assert (queued.prefill, queued.decode) == (4, 3)


def test_while_the_router_sheds_the_arrivals_beyond_the_pool_are_not_a_growing_queue() -> None:
    """A binding budget at twice the load it sustains, the router shedding the rest: the queue it keeps
    is drained, but the arrivals beyond what the ready prefill replicas compute are turned away, not
    queued. Counted as queue growth they read the budget layout's sustainable rate as a fraction of
    what it serves (the overload benchmark's status said "serving 16.8 of 194.7 rps" while the router
    served 148 rps within the SLO)."""
    spec = make_spec(scaling={"gpuBudget": 6})
    common = {"rate": 200, "prefill": 3, "decode": 3, "prefill_queue_depth": 50}
    no_queue = plan(spec, make_obs(rate=200, prefill=3, decode=3), None, PlannerState(), T0)
    shedding = plan(spec, make_obs(**common, shed_rate_rps=60.0), None, PlannerState(), T0)
    unknown = plan(spec, make_obs(**common, shed_rate_rps=None), None, PlannerState(), T0)
    assert no_queue.capacity is not None and shedding.capacity is not None and unknown.capacity is not None
    # only the 50 queued prompts (over the lead time) are on top of the load
    assert shedding.capacity.sustainable_rps == pytest.approx(no_queue.capacity.sustainable_rps, rel=0.05)
    # without knowing that the router sheds, the excess is taken as queued, and the budget serves less
    assert unknown.capacity.sustainable_rps < 0.5 * no_queue.capacity.sustainable_rps


def test_a_ttft_that_ends_with_the_prefill_is_compared_with_a_prediction_that_does_too() -> None:
    """vLLM's and SGLang's prefill pods time queue + prefill; the first token users see comes after the
    KV transfer too. An engine exactly as the profile says, observed at a prefill pod, keeps its factor
    at 1; the same reading taken as end to end (transfer included) reads the engine as fast."""
    model = CapacityModel(PRESETS["llama3-8b-h100"], SloSpec(), Workload(20.0, 1000, 2000, 200, 400))
    at_prefill_pod = model.ttft_quantile_seconds(3, 20.0, 0.9, include_transfer=False)
    assert at_prefill_pod < model.ttft_quantile_seconds(3, 20.0, 0.9)
    spec = make_spec()

    def settled(includes_transfer: bool) -> float:
        obs = make_obs(
            rate=20,
            prefill=3,
            decode=2,
            ttft_seconds=at_prefill_pod,
            ttft_includes_kv_transfer=includes_transfer,
        )
        state = settled_state(obs)
        for _ in range(10):
            state = plan(spec, obs, None, state, T0).state
        return state.prefill_correction

    assert settled(False) == pytest.approx(1.0, abs=0.01)
    assert settled(True) < 0.9


def test_slow_observed_ttft_raises_the_prefill_correction() -> None:
    # 2 replicas at 20 rps: the profile predicts a P90 TTFT of 0.085 s, an engine 1.4x slower 0.133 s
    # (prefill and its KV transfer, which the slowdown does not scale). Observing 0.133 s, the factor
    # moves halfway from 1 to 1.4 (smoothing 0.5).
    spec = make_spec()
    obs = make_obs(rate=20, prefill=2, decode=2, ttft_seconds=0.133)
    d = plan(spec, obs, None, settled_state(obs), T0)
    assert d.state.prefill_correction == pytest.approx(1.2, abs=0.005)
    uncorrected = plan(spec, make_obs(rate=20, prefill=2, decode=2), None, PlannerState(), T0)
    assert d.prefill >= uncorrected.prefill
    assert any("corrected by observed latency" in r for r in d.reasons)


def test_a_profile_that_matches_the_engine_keeps_its_corrections_at_one() -> None:
    """The engine behaves exactly as the profile says: at 20 rps on 3 ready prefill replicas (prompts mean
    1000 / P90 2000 tokens) the profile predicts a P90 TTFT of 0.0734 s, and 2 decode replicas holding 80
    sequences give a P90 inter-token latency of 9.89 ms. Observing those very numbers at P90 must leave
    both factors at 1, their mean inter-token latency (9.42 ms, the step of a 41-sequence batch: a token
    is more likely to come from a fuller step) likewise. Comparing the observed P90 with the predicted
    P99 TTFT (0.158 s), as the planner once did, reads the profile as 3x too slow and drives the prefill
    factor to its floor; comparing the P90 inter-token latency with the step time at the mean batch
    (9.35 ms) drifts decode to 1.06."""
    spec = make_spec()
    obs = make_obs(
        rate=20,
        prefill=3,
        decode=2,
        ttft_seconds=0.0734,
        tpot_seconds=0.00989,
        tpot_mean_seconds=0.00942,
        decode_running=80,
    )
    state = settled_state(obs)
    for _ in range(10):
        state = plan(spec, obs, None, state, T0).state
    assert state.prefill_correction == pytest.approx(1.0, abs=0.01)
    assert state.decode_correction == pytest.approx(1.0, abs=0.01)


def test_a_ttft_percentile_no_pool_reaches_teaches_the_prefill_correction_nothing() -> None:
    """Prompts mean 15k / P90 45k tokens, as on the Mooncake trace: the P90 prompt alone takes longer than
    the 1.5 s TTFT SLO, so the observed P90 TTFT is the longest prompts' own prefill time (shortened by a
    prefix cache that favours them), not the pool's. Fitted to it, the factor sinks to its floor and the
    pool is sized too small for the prompts that can meet the SLO; it holds instead. The same observation
    with a P90 some pool reaches still teaches it."""
    spec = make_spec()
    model = CapacityModel(
        resolve_profile(spec.profile), spec.slo, Workload(8.0, 15_000.0, 45_000.0, 200.0, 400.0)
    )
    assert model.prefill_feasible_share < 0.9  # the P90 prompt cannot meet the SLO on any pool
    # what an engine 0.6x the profile's prefill time shows at P90 on 40 replicas: explained by a factor
    observed = model.ttft_quantile_seconds(40, 8.0, 0.9, slowdown=0.6)
    assert model.prefill_slowdown(40, 8.0, 0.9, observed, CORRECTION_BOUNDS) == pytest.approx(0.6, rel=0.01)
    far = make_obs(rate=8, isl=15_000, isl_p90=45_000, prefill=40, decode=5, ttft_seconds=observed)
    assert plan(spec, far, None, settled_state(far), T0).state.prefill_correction == 1.0
    near = make_obs(rate=20, prefill=2, decode=2, ttft_seconds=0.133)
    assert plan(spec, near, None, settled_state(near), T0).state.prefill_correction > 1.1


def test_the_decision_says_whether_the_prefix_cache_hit_rate_is_known() -> None:
    spec = make_spec()
    unknown = " ".join(plan(spec, make_obs(rate=20), None, PlannerState(), T0).reasons)
    assert "prefix-cache hit rate unknown: sized as no hits" in unknown
    hits = plan(spec, make_obs(rate=20, prefix_cache_hit_rate=0.4), None, PlannerState(), T0)
    assert "(40% prefix-cache hits)" in " ".join(hits.reasons)
    none = " ".join(
        plan(spec, make_obs(rate=20, prefix_cache_hit_rate=0.0), None, PlannerState(), T0).reasons
    )
    assert "prefix-cache" not in none
    assert (
        hits.prefill
        <= plan(spec, make_obs(rate=20, prefix_cache_hit_rate=0.0), None, PlannerState(), T0).prefill
    )


def test_an_unreachable_ttft_names_the_cache_it_was_judged_at() -> None:
    """Prompts too long to prefill within the SLO alone: the decision says how many, and where a prefix
    cache serves part of each prompt, that the limit holds at the hit rate seen (a larger pool holds more
    cache), so a user does not read the share as fixed."""
    spec = make_spec()
    long_prompts = {"rate": 4, "isl": 20_000, "isl_p90": 60_000, "prefill": 4, "decode": 2}
    cached = " ".join(
        plan(spec, make_obs(**long_prompts, prefix_cache_hit_rate=0.5), None, PlannerState(), T0).reasons
    )
    assert "TTFT SLO unreachable by scaling for" in cached
    assert "at the observed 50% prefix-cache hits; a larger prefill pool holds more cache" in cached
    uncached = " ".join(
        plan(spec, make_obs(**long_prompts, prefix_cache_hit_rate=0.0), None, PlannerState(), T0).reasons
    )
    assert "TTFT SLO unreachable by scaling for" in uncached
    assert "holds more cache" not in uncached


def test_where_the_hits_fall_on_whole_prompts_the_decision_counts_and_names_both_limits() -> None:
    """The same long prompts, half their tokens cached, but as the router measures them: every other
    prompt found 97% cached, the rest nothing. A cached long prompt computes a few hundred tokens and is
    feasible: fewer prompts are out of reach than an even spread says, and the reason gives the cached
    prompts' own limit."""
    spec = make_spec()
    long_prompts = {"rate": 4, "isl": 20_000, "isl_p90": 60_000, "prefill": 4, "decode": 2}
    even = plan(spec, make_obs(**long_prompts, prefix_cache_hit_rate=0.5), None, PlannerState(), T0)
    mixed = plan(
        spec,
        make_obs(**long_prompts, prefix_cache_hit_rate=0.5, prefix_hit_mix=((0.97, 0.52),)),
        None,
        PlannerState(),
        T0,
    )

    def unreachable(reasons: list[str]) -> float:
        found = re.search(r"TTFT SLO unreachable by scaling for ([0-9.]+)% of prompts", " ".join(reasons))
        assert found is not None, reasons
        return float(found.group(1))

    assert unreachable(mixed.reasons) < unreachable(even.reasons) - 5
    assert re.search(
        r"; up to [0-9]+ for the 52% that find 97% of themselves in the prefix cache", " ".join(mixed.reasons)
    )


def test_with_the_routers_curve_prefill_is_sized_for_the_cache_it_will_hold() -> None:
    """Long prompts, half of each cached on 4 replicas: the router's curve says a larger pool hits more,
    which makes more prompts feasible at all, so the decision buys that cache and says why. Where the
    engine measures no hits (dopd's worker has no prefix cache), the curve buys nothing."""
    spec = make_spec(prefill={"maxReplicas": 200})
    long_prompts = {"rate": 4, "isl": 20_000, "isl_p90": 60_000, "prefill": 4, "decode": 2}
    flat = plan(spec, make_obs(**long_prompts, prefix_cache_hit_rate=0.5), None, PlannerState(), T0)
    curved = plan(
        spec,
        make_obs(**long_prompts, prefix_cache_hit_rate=0.5, prefix_reuse_share_within=RISING_REUSE),
        None,
        PlannerState(),
        T0,
    )
    assert curved.raw_prefill > flat.raw_prefill
    reasons = " ".join(curved.reasons)
    assert (
        "50% prefix-cache hits now, " in reasons
        and f"expected in {curved.raw_prefill} replicas' cache" in reasons
    )
    assert "with an ample pool's cache, which the prefill sizing counts" in reasons
    # "ample" is the cache of the most replicas the spec allows: with 8, no pool it may have hits more
    # than the 50% measured on 4 (the curve is short of it there), so the curve buys nothing
    capped = make_spec(prefill={"maxReplicas": 8})
    assert (
        plan(
            capped,
            make_obs(**long_prompts, prefix_cache_hit_rate=0.5, prefix_reuse_share_within=RISING_REUSE),
            None,
            PlannerState(),
            T0,
        ).raw_prefill
        == plan(
            capped, make_obs(**long_prompts, prefix_cache_hit_rate=0.5), None, PlannerState(), T0
        ).raw_prefill
    )
    no_cache = {**long_prompts, "prefix_cache_hit_rate": 0.0}
    assert (
        plan(
            spec, make_obs(**no_cache, prefix_reuse_share_within=RISING_REUSE), None, PlannerState(), T0
        ).raw_prefill
        == plan(spec, make_obs(**no_cache), None, PlannerState(), T0).raw_prefill
    )


def test_a_curve_the_metrics_could_not_read_is_named_in_the_prefill_reason() -> None:
    """Behind two routers the curve is not read (each samples only its own prompts): the decision sizes
    at the measured rate, as without a curve, and its reason says the rate was taken as flat and why."""
    spec = make_spec(prefill={"maxReplicas": 200})
    long_prompts = {"rate": 4, "isl": 20_000, "isl_p90": 60_000, "prefill": 4, "decode": 2}
    why = "2 routers each sample only the prompts they admit"
    unread = plan(
        spec,
        make_obs(**long_prompts, prefix_cache_hit_rate=0.5, prefix_reuse_unread=why),
        None,
        PlannerState(),
        T0,
    )
    flat = plan(spec, make_obs(**long_prompts, prefix_cache_hit_rate=0.5), None, PlannerState(), T0)
    assert unread.raw_prefill == flat.raw_prefill
    assert f"(50% prefix-cache hits, taken as the same at every pool size: {why})" in " ".join(unread.reasons)


def test_while_the_router_sheds_the_prefill_correction_holds() -> None:
    """Demand 40 rps, of which the router sheds 20: the engines serve the 20 rps of the matched-profile
    case above and show its P90 TTFT. Read as the demand's latency, an engine that holds 40 rps at that
    TTFT is much faster than the profile, and the factor sinks, so the pools would be sized too small once
    the shedding stops. Under shedding the TTFT is admission's doing, so the prefill factor holds; it
    holds too with the shed rate unknown; a trickle of shedding (1%) does not stop it learning, at the
    served rate. Decode still learns: its latency does not depend on the rate."""
    spec = make_spec()
    seen = {"ttft_seconds": 0.0734, "tpot_seconds": 0.0105, "tpot_mean_seconds": 0.01, "decode_running": 80}

    def settled(rate: float, shed: float | None) -> PlannerState:
        obs = make_obs(rate=rate, prefill=3, decode=2, shed_rate_rps=shed, **seen)
        state = settled_state(obs)
        for _ in range(10):
            state = plan(spec, obs, None, state, T0).state
        return state

    assert settled(40.0, 0.0).prefill_correction < 0.95  # the demand read as served: 0.90 in 10 ticks
    for shed in (20.0, None):
        held = settled(40.0, shed)
        assert held.prefill_correction == 1.0, shed
        assert held.decode_correction > 1.03, shed
    # a trickle: the slow engine of the first correction test is still learned (1 -> about 1.2)
    trickle = make_obs(rate=20.2, prefill=2, decode=2, shed_rate_rps=0.2, ttft_seconds=0.133)
    assert plan(spec, trickle, None, settled_state(trickle), T0).state.prefill_correction == pytest.approx(
        1.2, abs=0.01
    )


def test_latencies_without_their_percentile_are_rejected() -> None:
    with pytest.raises(ValueError, match="latency_percentile is required"):
        Observation(arrival_rate_rps=1.0, ttft_seconds=0.5)


def test_correction_converges_to_the_slowdown_and_stays_within_its_bounds() -> None:
    # 0.25 s is about the P90 TTFT an engine 2x slower than the profile shows at 20 rps on 2 replicas: the
    # factor climbs to 2.0, its upper bound, and no further (a slower one would not be learned at all).
    obs = make_obs(rate=20, prefill=2, decode=2, ttft_seconds=0.25)
    state = settled_state(obs)
    for _ in range(20):
        state = plan(make_spec(), obs, None, state, T0).state
    assert state.prefill_correction == pytest.approx(2.0, abs=0.02)
    assert state.prefill_correction <= 2.0


def test_a_profile_too_slow_heals_below_the_old_floor() -> None:
    # The engine is 1.6x faster than its profile (prefill times x0.625). The observed P90 TTFT is what the
    # capacity model predicts for that engine on this layout and load; the factor converges to 0.625,
    # which the former floor of 0.8 kept out of reach (a profile 30% too slow kept 1.2x its GPUs).
    spec, rate = make_spec(), 20.0
    workload = Workload(rate, 1000.0, 2000.0, 200.0, 400.0)
    model = CapacityModel(resolve_profile(spec.profile), spec.slo, workload)
    observed = model.ttft_quantile_seconds(2, rate, 0.9, slowdown=0.625)
    obs = make_obs(rate=rate, prefill=2, decode=2, isl=1000.0, osl=200.0, ttft_seconds=observed)
    state = settled_state(obs)
    for _ in range(20):
        state = plan(spec, obs, None, state, T0).state
    assert state.prefill_correction == pytest.approx(0.625, abs=0.02)
    assert state.prefill_correction >= CORRECTION_BOUNDS[0]


def test_a_role_whose_ready_count_changed_holds_its_correction_for_one_window() -> None:
    """A decode replica has just become Ready (2 -> 3): the window's TPOT was set by the fuller batches of
    the old pool, while the prediction spreads the running sequences over three. The decode factor holds,
    and says why, until the count has stood for the 60 s metrics window; the prefill pool, unchanged,
    learns meanwhile. A fresh planner, which has not seen how long the counts stood, holds likewise."""
    spec = make_spec()
    before = make_obs(
        rate=20,
        prefill=2,
        decode=2,
        ttft_seconds=0.133,
        tpot_seconds=0.012,
        tpot_mean_seconds=0.012,
        decode_running=90,
    )
    state = settled_state(before)
    joined = before.model_copy(update={"decode": RoleObservation(current=3, ready=3)})
    at_once = plan(spec, joined, None, state, T0)
    assert at_once.state.decode_correction == 1.0
    assert at_once.state.prefill_correction == pytest.approx(1.2, abs=0.005)
    assert any(r.startswith("decode correction held: 3 replica(s) Ready for 0s") for r in at_once.reasons)
    later = plan(spec, joined, None, at_once.state, T0 + timedelta(seconds=30))
    assert later.state.decode_correction == 1.0
    settled = plan(spec, joined, None, later.state, T0 + timedelta(seconds=60))
    assert settled.state.decode_correction > 1.1
    assert not any("correction held" in r for r in settled.reasons)
    fresh = plan(spec, before, None, PlannerState(), T0)
    assert (fresh.state.prefill_correction, fresh.state.decode_correction) == (1.0, 1.0)
    assert plan(spec, before, None, fresh.state, T0 + timedelta(seconds=60)).state.prefill_correction > 1.1


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
    # 6 prefill replicas for Poisson arrivals, 8 for bursty ones (SCV 8); without the burstiness term both
    # would get 6 and the bursty one would queue. Decode slots see the same bursts (never fewer).
    assert (poisson.prefill, bursty.prefill) == (6, 8)
    assert bursty.decode >= poisson.decode


def test_attainment_target_above_the_percentile_sizes_for_the_target() -> None:
    # TTFT 0.2 s at 150 rps: 6 prefill replicas keep 99% of prompts within it, 5 only 90%.
    loose = make_spec(slo={"percentile": 90, "attainmentTarget": 0.9, "ttftSeconds": 0.2})
    strict = make_spec(slo={"percentile": 90, "attainmentTarget": 0.99, "ttftSeconds": 0.2})
    obs = make_obs(rate=150)
    assert (
        plan(strict, obs, None, PlannerState(), T0).prefill
        > plan(loose, obs, None, PlannerState(), T0).prefill
    )


def test_no_arrivals_shrink_to_the_minimum_even_though_no_length_was_measured() -> None:
    """An idle window has a known arrival rate of zero and no request to measure lengths from. That is
    no load, not unknown load: holding there (as the planner once did) keeps a peak's replicas forever."""
    spec = make_spec()
    idle = make_obs(rate=0.0, isl=None, osl=None, prefill=5, decode=4)
    d = plan(spec, idle, None, PlannerState(), T0)
    assert d.metrics_healthy
    assert (d.prefill, d.decode) == (1, 1)
    assert d.reasons[0] == "no request arrived in the metrics window: sizing for no load"
    unknown = make_obs(rate=None, isl=None, osl=None, prefill=5, decode=4)
    held = plan(spec, unknown, None, PlannerState(), T0)
    assert (held.prefill, held.decode) == (5, 4) and not held.metrics_healthy


def test_first_decision_sizes_a_standing_load_at_once() -> None:
    """From minReplicas (1P/1D) at 200 rps, the first decision of a fresh planner asks for the whole
    layout the load needs; with the default step limits (+4 or +100%) it would stop at 5P/5D and the
    standing load would queue for another interval plus a startup."""
    spec = make_spec(scaling={"scaleUp": {"maxStepReplicas": 4, "maxStepPercent": 100}})
    obs = make_obs(rate=200, prefill=1, decode=1)
    first = plan(spec, obs, None, PlannerState(), T0)
    assert (first.prefill, first.decode) == (first.raw_prefill, first.raw_decode)
    assert first.prefill > 5
    assert any("first decision" in r for r in first.reasons)
    later = plan(spec, obs, None, first.state, T0 + timedelta(seconds=30))
    assert later.prefill == 5  # afterwards the step limits apply as configured
    assert any(c.stage == "ScaleUpLimit" for c in later.clamps)


def test_a_fresh_planner_keeps_the_replicas_it_found_for_the_scale_down_window() -> None:
    """The replicas a fresh planner finds count as a recommendation for the whole scale-down window, as
    the HPA's do, not for its first decision only: a layout found at 8P/6D, where the load observed now
    needs less, may have been sized for a load that comes within the window (the bursts trace's first
    surge, 80 s into the run, met a pool released to 4P/3D 60 s in: 92.8% attainment where holding reached
    99.9%). After the window the pool follows the load."""
    spec = make_spec(scaling={"scaleDown": {"stabilizationSeconds": 300, "maxStepReplicas": 1000}})
    obs = make_obs(rate=20, prefill=8, decode=6)
    first = plan(spec, obs, None, PlannerState(), T0)
    assert (first.prefill, first.decode) == (8, 6)
    assert first.raw_prefill < 8 and first.raw_decode < 6
    held = first
    for seconds in range(30, 300, 30):
        held = plan(spec, obs, None, held.state, T0 + timedelta(seconds=seconds))
        assert (held.prefill, held.decode) == (8, 6), seconds
        assert any(c.stage == "ScaleDownStabilized" for c in held.clamps)
    after = plan(spec, obs, None, held.state, T0 + timedelta(seconds=330))
    assert (after.prefill, after.decode) == (first.raw_prefill, first.raw_decode)


def _recommendation_at(seconds_ago: float, prefill: int, decode: int) -> Recommendation:
    return Recommendation(time=T0 - timedelta(seconds=seconds_ago), prefill=prefill, decode=decode)


@pytest.mark.parametrize(
    ("earlier", "forecast", "held"),
    [
        # The layout recommended 150 s ago (the lead time: 120 s startup + 30 s interval) was 12P/8D and
        # covers what 40 rps needs now: the forecasts held, so the window shortens to 150 s and the 12P/8D
        # recommended 200 s ago no longer holds the pool up.
        pytest.param((2, 2), True, False, id="forecast-right-window-shortened"),
        # The same history without a forecast keeps the spec's 300 s window: the pool stays at 12P/8D.
        pytest.param((2, 2), False, True, id="no-forecast-spec-window"),
        # 150 s ago only 1P/1D was recommended, less than 40 rps needs now: the forecast fell short.
        pytest.param((1, 1), True, True, id="forecast-wrong-spec-window"),
    ],
)
def test_scale_down_window_shortens_when_the_forecasts_held(
    earlier: tuple[int, int], forecast: bool, held: bool
) -> None:
    spec = make_spec(scaling={"scaleDown": {"stabilizationSeconds": 300, "maxStepReplicas": 1000}})
    state = PlannerState(recommendations=[_recommendation_at(200, 12, 8), _recommendation_at(150, *earlier)])
    obs = make_obs(rate=40, prefill=12, decode=8)
    upcoming = LoadForecast(
        model="naive", horizon_seconds=150, quantile=0.9, arrival_rate_rps_mean=40, arrival_rate_rps_upper=42
    )
    d = plan(spec, obs, upcoming if forecast else None, state, T0)
    assert ((d.prefill, d.decode) == (12, 8)) is held
    assert any("scale-down window 150s" in r for r in d.reasons) is (not held)


@pytest.mark.parametrize(
    ("slope_noises", "window_s"),
    [
        pytest.param(-3.0, 30, id="declining-one-interval"),
        # a flat load's chance dip (1.5 standard errors down) keeps the lead-time window
        pytest.param(-1.5, 150, id="dip-lead-time"),
        pytest.param(0.0, 150, id="flat-lead-time"),
    ],
)
def test_on_a_decline_the_scale_down_window_shortens_to_one_interval(
    slope_noises: float, window_s: int
) -> None:
    """The reasoning trace's decline: the layouts recommended 150 s and 60 s ago (12P/8D) were sized for
    the load then, and cover what the load observed now needs (the forecasts held). Where the trend
    shows the load declining beyond twice its noise, those are a load that has passed: the pool follows
    this decision (sized for the forecast's upper quantile over the lead time) at once; a dip within the
    noise keeps the lead-time window, which holds the 12P/8D."""
    spec = make_spec(scaling={"scaleDown": {"stabilizationSeconds": 300, "maxStepReplicas": 1000}})
    state = PlannerState(recommendations=[_recommendation_at(150, 12, 8), _recommendation_at(60, 12, 8)])
    noise = 0.01
    obs = make_obs(
        rate=20,
        prefill=12,
        decode=8,
        arrival_rate_trend_rps_per_s=slope_noises * noise,
        arrival_rate_trend_noise_rps_per_s=noise,
    )
    upcoming = LoadForecast(
        model="naive", horizon_seconds=150, quantile=0.9, arrival_rate_rps_mean=20, arrival_rate_rps_upper=21
    )
    d = plan(spec, obs, upcoming, state, T0)
    assert any(f"scale-down window {window_s}s instead of 300s" in r for r in d.reasons)
    if window_s == 30:
        assert (d.prefill, d.decode) == (d.raw_prefill, d.raw_decode)
        assert d.prefill < 12 and d.decode < 8
        assert any("the load declines (-1.80 rps/min" in r for r in d.reasons)
    else:
        assert (d.prefill, d.decode) == (12, 8)


def test_a_backlog_teaches_the_corrections_nothing() -> None:
    """600 prompts queued at 20 rps is 30 s of arrivals, far more than the 1.5 s TTFT SLO's worth: the
    40 s P90 TTFT is the backlog's, not a slow engine's. Dividing it by the predicted 0.07 s would drive
    the prefill factor to its 2.0 bound and double the pool after the backlog is gone."""
    obs = make_obs(rate=20, prefill=3, decode=2, ttft_seconds=40.0, prefill_queue_depth=600)
    d = plan(make_spec(), obs, None, settled_state(obs), T0)
    assert (d.state.prefill_correction, d.state.decode_correction) == (1.0, 1.0)


def test_an_observation_no_factor_explains_is_not_learned() -> None:
    """Without a backlog, a 30 s P90 TTFT at 20 rps on 3 replicas is more than even an engine 2x slower
    than the profile would show (0.2 s): it is left alone rather than clamped to 2.0."""
    obs = make_obs(rate=20, prefill=3, decode=2, ttft_seconds=30.0)
    assert plan(make_spec(), obs, None, settled_state(obs), T0).state.prefill_correction == 1.0


def test_a_backlog_served_in_time_still_teaches_the_prefill_factor() -> None:
    """A router with a dispatch deadline serves the timely prompts first and keeps the late ones queued:
    600 prompts wait, yet the window's first tokens meet the SLO (P90 0.24 s on 2 replicas at 20 rps, an
    engine 2x slower than the profile). Those latencies are the engine's, and the factor learns from them."""
    obs = make_obs(rate=20, prefill=2, decode=2, ttft_seconds=0.24, prefill_queue_depth=600)
    assert plan(make_spec(), obs, None, settled_state(obs), T0).state.prefill_correction > 1.2


def test_a_backlog_served_in_time_never_reads_the_engine_as_fast() -> None:
    """The same queue with first tokens far inside the SLO (P90 0.05 s on 3 replicas at 20 rps): the pool
    works flat out on less than the arrivals (the queue takes the rest), so it only looks fast. The
    factor holds; on the steps trace such windows sank a right factor to 0.63 during a 2x jump."""
    obs = make_obs(rate=20, prefill=3, decode=2, ttft_seconds=0.05, prefill_queue_depth=600)
    assert plan(make_spec(), obs, None, settled_state(obs), T0).state.prefill_correction == 1.0
    # without the queue the same reading is a fast engine, and the factor learns it
    calm = make_obs(rate=20, prefill=3, decode=2, ttft_seconds=0.05)
    assert plan(make_spec(), calm, None, settled_state(calm), T0).state.prefill_correction < 1.0


def test_a_decode_pool_missing_its_slo_past_every_factor_grows_toward_the_bound() -> None:
    """A TPOT of 0.4 s against a 50 ms SLO, far beyond what a 2x slower engine would show at the observed
    batch: sequences wait for slots in a pool too small for them. The decode factor moves toward its
    upper bound (a bigger pool), not left alone as an unexplained reading would be, and relearns the
    engine's speed once TPOT is back within bounds."""
    slow = make_obs(rate=50, prefill=4, decode=2, tpot_seconds=0.4, tpot_mean_seconds=0.4, decode_running=200)
    state = settled_state(slow)
    first = plan(make_spec(), slow, None, state, T0)
    assert first.state.decode_correction == pytest.approx(1.5)
    plain = plan(make_spec(), make_obs(rate=150, prefill=4, decode=2), None, PlannerState(), T0)
    grown = plan(make_spec(), make_obs(rate=150, prefill=4, decode=2), None, first.state, T0)
    assert grown.raw_decode > plain.raw_decode
    # Within the SLO, an unexplained reading still teaches nothing (a reading below the lower bound).
    fast = make_obs(
        rate=50, prefill=4, decode=2, tpot_seconds=0.001, tpot_mean_seconds=0.001, decode_running=200
    )
    assert plan(make_spec(), fast, None, first.state, T0).state.decode_correction == pytest.approx(1.5)


def test_a_decode_pool_that_has_just_grown_does_not_read_its_old_slot_waits_as_too_small() -> None:
    """Sequences that waited for a slot in the old, smaller pool finish in the window after new replicas
    join, with a TPOT far past the SLO. With slots free now, that is the old pool's story: the decode
    factor holds (a surge had pushed it to 1.7 this way, and the pool to 19 replicas where 7 served the
    load). A pool that is still full after growing is still too small, and its factor grows. Missing the
    SLO counts the attainment too: a P90 within it while 5% of sequences miss grows a settled pool."""
    spec = make_spec()
    slots = CapacityModel(resolve_profile(spec.profile), spec.slo, Workload(50.0, 1000, 2000, 200, 400))
    flooded = make_obs(
        rate=50,
        prefill=4,
        decode=2,
        tpot_seconds=0.4,
        tpot_mean_seconds=0.4,
        decode_running=2 * slots.decode_batch_size,
    )
    state = settled_state(flooded)
    grown = flooded.model_copy(update={"decode": RoleObservation(current=6, ready=6)})
    just_grown = plan(spec, grown, None, state, T0)
    assert just_grown.state.decode_correction == 1.0
    assert any(r.startswith("decode correction held: 6 replica(s) Ready for 0s") for r in just_grown.reasons)
    still_full = grown.model_copy(update={"decode_running": 6 * slots.decode_batch_size})
    raised = plan(spec, still_full, None, state, T0)
    assert raised.state.decode_correction == pytest.approx(1.5)
    # The decision says the factor moved and why, not that it held.
    assert not any(r.startswith("decode correction held") for r in raised.reasons)
    assert any(
        r.startswith(
            "decode correction raised x1.00 -> x1.50 though the pool changed to 6 Ready within the 60s"
        )
        and "slots are still full and the TPOT SLO missed" in r
        for r in raised.reasons
    )
    # Settled, slots free, a P90 within the 50 ms SLO that no factor explains, and 95% of sequences in it.
    some_miss = make_obs(
        rate=50,
        prefill=4,
        decode=2,
        tpot_seconds=0.045,
        tpot_mean_seconds=0.045,
        tpot_attainment=0.95,
        decode_running=20,
    )
    grew = plan(spec, some_miss, None, settled_state(some_miss), T0).state.decode_correction
    assert grew == pytest.approx(1.5)
    in_target = some_miss.model_copy(update={"tpot_attainment": 0.995})
    assert plan(spec, in_target, None, settled_state(in_target), T0).state.decode_correction == 1.0


def test_decode_keeps_slot_headroom_and_says_how_many_would_hold_the_slo() -> None:
    """An engine whose decode steps run 10% faster than its profile, at 180 rps: four decode replicas
    hold the TPOT SLO, settling at about 247 sequences each of 256 slots, where a few percent more load
    fills them. The planner orders five, the fewest that would still hold it with every step at the full
    batch's time. The reason names both numbers: a user sees what the headroom costs."""
    spec = make_spec()
    obs = make_obs(rate=180, isl=1250, osl=220, prefill=7, decode=5)
    d = plan(spec, obs, None, settled_state(obs, decode_correction=0.9), T0)
    profile = resolve_profile(spec.profile).scaled(1.05, 0.9 * 1.05)
    model = CapacityModel(profile, spec.slo, Workload(180, 1250, 2500, 220, 440))
    fewest = model.decode_replicas(180)
    assert d.raw_decode == model.decode_replicas(180, every_slot_taken=True) == fewest + 1
    assert model.decode_mean_batch(fewest, 180) > 0.95 * model.decode_batch_size
    decode_reason = next(r for r in d.reasons if r.startswith("decode: B*="))
    assert f"slot headroom: {fewest} would hold the SLO at 247 sequences each" in decode_reason, decode_reason
    assert f"{d.raw_decode} still would with every slot taken" in decode_reason


@pytest.mark.parametrize("waiting", [60.0, 0.0])
def test_a_saturated_decode_pool_keeps_its_replicas_whatever_the_model_reads(waiting: float) -> None:
    """Eight decode replicas with every slot taken and sequences waiting: the window's lengths read one
    replica enough (the lengths trail a mix moving to longer answers), and no window or step limit holds
    the others. None is released while sequences wait for a slot; with none waiting, the pool shrinks."""
    spec = make_spec(
        scaling={"scaleDown": {"stabilizationSeconds": 0, "maxStepReplicas": 100, "maxStepPercent": 100}}
    )
    slots = resolve_profile(spec.profile).max_batch_size
    observation = make_obs(
        rate=10.0, osl=200.0, decode=8, decode_running=8.0 * slots, decode_queue_depth=waiting
    )
    state = PlannerState(
        recommendations=[Recommendation(time=T0 - timedelta(seconds=30), prefill=1, decode=8)]
    )
    decision = plan(spec, observation, None, state, T0)
    assert decision.raw_decode < 8
    held = [c for c in decision.clamps if c.stage == "SaturatedHold"]
    if waiting:
        assert decision.decode == 8
        assert len(held) == 1 and held[0].role == "decode" and held[0].after == 8
        assert f"{8 * slots} sequences on 8 ready replica(s)" in held[0].reason
        assert "60 wait for one" in held[0].reason
    else:
        assert decision.decode < 8 and not held
