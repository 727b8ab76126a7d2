"""The decode pool's occupancy trend (`planner_occupancy`): the KV in use over the last ticks, and the
floor it puts under the decode pool where it rises beyond its noise."""

from __future__ import annotations

import math
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from dopd_builders import T0, make_obs, make_spec
from dopd_operator.api import KvInUse
from dopd_operator.planner import plan
from dopd_operator.planner_occupancy import (
    OCCUPANCY_TREND_TICKS,
    SATURATED_DEMAND_MAX_FACTOR,
    OccupancyTrend,
    decode_occupancy_floor,
    occupancy_trend,
    record_kv_in_use,
)
from dopd_operator.planner_types import Decision, Observation, PlannerState, RoleObservation

INTERVAL = timedelta(seconds=30)
SPEC = make_spec()  # TTFT objective 1.5 s


def readings(*values: float) -> list[KvInUse]:
    return [KvInUse(time=T0 + i * INTERVAL, replicas=v) for i, v in enumerate(values)]


def test_the_kv_in_use_is_counted_in_replicas_worth_and_the_last_ticks_are_kept() -> None:
    spec = make_spec()
    state = PlannerState()
    for i, usage in enumerate((0.1, 0.2, 0.3, 0.4, 0.5)):
        state = record_kv_in_use(spec, make_obs(decode=2, decode_kv_usage=usage), state, T0 + i * INTERVAL)
    assert len(state.decode_kv_in_use) == OCCUPANCY_TREND_TICKS
    assert [round(r.replicas, 6) for r in state.decode_kv_in_use] == [0.4, 0.6, 0.8, 1.0]
    assert state.decode_kv_in_use[-1].time == T0 + 4 * INTERVAL


def test_a_gap_in_the_ticks_or_an_unknown_kv_usage_drops_the_readings_before_it() -> None:
    spec = make_spec()
    state = PlannerState(decode_kv_in_use=readings(0.1, 0.2, 0.3))
    # the operator was down for five minutes: the next reading starts a new series
    later = record_kv_in_use(
        spec, make_obs(decode_kv_usage=0.9), state, T0 + 2 * INTERVAL + timedelta(minutes=5)
    )
    assert [r.replicas for r in later.decode_kv_in_use] == [0.9]
    unknown = record_kv_in_use(spec, make_obs(decode_kv_usage=None), state, T0 + 3 * INTERVAL)
    assert unknown.decode_kv_in_use == []
    no_ready = make_obs(decode_obs=RoleObservation(current=2, ready=0), decode_kv_usage=0.5)
    assert record_kv_in_use(spec, no_ready, state, T0 + 3 * INTERVAL).decode_kv_in_use == []


def test_the_trend_is_the_least_squares_line_and_its_standard_error() -> None:
    exact = occupancy_trend(readings(0.2, 0.4, 0.6, 0.8))
    assert exact is not None
    assert math.isclose(exact.slope_replicas_per_s, 0.2 / 30)
    assert exact.noise_replicas_per_s < 1e-12
    assert exact.in_use_replicas == 0.8
    # residuals +-0.1 about a flat line: slope 0, standard error sqrt(0.04 / 2 / 4500) per second
    flat = occupancy_trend(readings(0.5, 0.7, 0.7, 0.5))
    assert flat is not None
    assert abs(flat.slope_replicas_per_s) < 1e-12
    assert math.isclose(flat.noise_replicas_per_s, math.sqrt(0.04 / 2 / 4500))
    assert occupancy_trend(readings(0.2, 0.4)) is None  # no residual to judge the noise by


def test_a_rise_beyond_its_noise_floors_the_pool_at_what_it_leads_to() -> None:
    # 0.11, 0.22, 0.45, 0.56 at ticks 30 s apart: one replica's KV filling as a mix moves to long answers
    trend = occupancy_trend(readings(0.11, 0.22, 0.45, 0.56))
    assert trend is not None
    floor, reason = decode_occupancy_floor(SPEC, make_obs(), trend, 150.0)
    rise = trend.slope_replicas_per_s - trend.noise_replicas_per_s
    assert floor == math.ceil((0.56 + rise * 150.0) / 0.95)
    assert floor >= 2
    assert reason is not None and "decode KV in use rising" in reason and "in 150s" in reason


def test_a_flat_noisy_or_falling_occupancy_puts_no_floor() -> None:
    for values in ((0.5, 0.5, 0.5, 0.5), (0.5, 0.8, 0.4, 0.7), (0.9, 0.7, 0.5, 0.3)):
        assert decode_occupancy_floor(SPEC, make_obs(), occupancy_trend(readings(*values)), 150.0) == (
            0,
            None,
        ), values
    assert decode_occupancy_floor(SPEC, make_obs(), None, 150.0) == (0, None)


@given(
    in_use=st.floats(0.0, 50.0),
    more=st.floats(0.0, 10.0),
    slope=st.floats(0.0, 0.1),
    noise=st.floats(0.0, 0.1),
    lead=st.floats(0.0, 600.0),
)
def test_the_floor_never_falls_as_the_kv_in_use_or_its_rise_grows(
    in_use: float, more: float, slope: float, noise: float, lead: float
) -> None:
    base, _ = decode_occupancy_floor(SPEC, make_obs(), OccupancyTrend(in_use, slope, noise), lead)
    assert (
        decode_occupancy_floor(SPEC, make_obs(), OccupancyTrend(in_use + more, slope, noise), lead)[0] >= base
    )
    assert (
        decode_occupancy_floor(SPEC, make_obs(), OccupancyTrend(in_use, slope + more / 100, noise), lead)[0]
        >= base
    )
    if slope <= noise:
        assert base == 0


def test_a_step_in_the_arrivals_puts_no_floor() -> None:
    """The KV rises to a new level within an answer's life after the arrivals step, and the readings
    across the step fit a slope that would extrapolate the jump: the new rate is sized for instead."""
    trend = occupancy_trend(readings(1.0, 1.0, 2.0, 2.0))
    assert decode_occupancy_floor(SPEC, make_obs(), trend, 150.0)[0] >= 3
    assert decode_occupancy_floor(SPEC, make_obs(arrival_level_age_seconds=45.0), trend, 150.0) == (0, None)


def test_arrivals_rising_beyond_their_noise_put_no_floor_and_a_wandering_rate_does_not_stop_it() -> None:
    """The trend guard extrapolates a rising rate, and the pools are sized for it; a slope within twice
    its noise is a flat load's wander, and the KV's rise there is the work per request growing."""
    trend = occupancy_trend(readings(0.11, 0.22, 0.45, 0.56))
    rising = make_obs(arrival_rate_trend_rps_per_s=0.05, arrival_rate_trend_noise_rps_per_s=0.02)
    wandering = make_obs(arrival_rate_trend_rps_per_s=0.03, arrival_rate_trend_noise_rps_per_s=0.02)
    assert decode_occupancy_floor(SPEC, rising, trend, 150.0) == (0, None)
    assert decode_occupancy_floor(SPEC, wandering, trend, 150.0)[0] >= 2


def test_the_planner_orders_decode_replicas_as_the_kv_fills_before_the_lengths_say() -> None:
    """One decode replica whose KV fills at 0.11, 0.22, 0.45, 0.56 over four ticks while the window's
    finishers still read short answers: the model alone keeps one replica; the trend orders more, and
    says why. The same load with its KV flat keeps one. The floor lasts as long as the rise: the
    scale-down window does not remember it, so once the KV levels the pool goes back to what the
    load's sizing (and its window) holds."""
    spec = make_spec()

    def tick(state: PlannerState, i: int, usage: float, current: int) -> Decision:
        observation = make_obs(
            rate=20.0,
            osl=220.0,
            decode_obs=RoleObservation(current=current, ready=1),
            decode_kv_usage=usage,
            decode_running=80.0,
        )
        return plan(spec, observation, None, state, T0 + i * INTERVAL)

    def run(usages: tuple[float, ...]) -> list[Decision]:
        state, current, decisions = PlannerState(), 1, []
        for i, usage in enumerate(usages):
            decision = tick(state, i, usage, current)
            state, current = decision.state, decision.decode
            decisions.append(decision)
        return decisions

    flat = run((0.3, 0.3, 0.3, 0.3))
    assert [d.decode for d in flat] == [1, 1, 1, 1]
    assert not any("decode KV in use rising" in r for d in flat for r in d.reasons)
    rising = run((0.11, 0.22, 0.45, 0.56, 0.56, 0.56, 0.56, 0.56))
    assert rising[3].raw_decode == 1 and rising[3].decode >= 2
    assert any("decode KV in use rising" in r for r in rising[3].reasons)
    assert rising[-1].decode == 1


def test_the_floor_adds_no_decode_replica_while_decode_pods_cannot_be_scheduled() -> None:
    """Pending pods are not capacity (`safety.hold_unschedulable`): a KV filling behind decode pods the
    cluster has no GPUs for orders nothing beyond them, and the decision says it is capacity-blocked. (On the
    real cluster a saturated pool of unschedulable 8-GPU pods had grown from 5 to 6 decode replicas:
    the floor was applied after the hold.)"""
    spec = make_spec()
    # two Ready replicas' KV filling by half a replica's worth a tick; a third replica is pending
    state = PlannerState(decode_kv_in_use=readings(0.4, 0.9, 1.4))
    observation = make_obs(
        rate=20.0,
        osl=220.0,
        decode_obs=RoleObservation(current=3, ready=2, unschedulable=1),
        decode_kv_usage=0.95,
        decode_running=160.0,
    )
    decision = plan(spec, observation, None, state, T0 + 3 * INTERVAL)
    assert decision.decode == 3
    assert decision.capacity_blocked and "limited by CapacityBlocked" in decision.reasons[-1]
    schedulable = observation.model_copy(update={"decode": RoleObservation(current=3, ready=2)})
    placed = plan(spec, schedulable, None, state, T0 + 3 * INTERVAL)
    assert placed.decode > 3 and any("decode KV in use rising" in r for r in placed.reasons)


def test_a_prefill_backlog_puts_no_floor_and_an_unknown_queue_does_not_stop_it() -> None:
    """While more prompts wait for prefill than arrive in one TTFT objective (a cold start, a burst),
    the decode pool's input runs above the arrivals as prefill catches up and the KV rises with it. A
    queue within one TTFT's arrivals, or an unknown one, leaves the floor to act."""
    trend = occupancy_trend(readings(0.11, 0.22, 0.45, 0.56))
    # 20 rps and a 1.5 s TTFT: 30 prompts is one objective's worth of arrivals
    assert decode_occupancy_floor(SPEC, make_obs(rate=20.0, prefill_queue_depth=31.0), trend, 150.0) == (
        0,
        None,
    )
    assert decode_occupancy_floor(SPEC, make_obs(rate=20.0, prefill_queue_depth=30.0), trend, 150.0)[0] >= 2
    assert decode_occupancy_floor(SPEC, make_obs(rate=20.0, prefill_queue_depth=None), trend, 150.0)[0] >= 2


def _full(waiting: float | None, rate: float = 30.0) -> Observation:
    """Two decode replicas with their KV full, `waiting` sequences queued for a slot."""
    return make_obs(rate=rate, decode=2, decode_kv_usage=0.99, decode_queue_depth=waiting)


def test_a_kv_full_pool_whose_queue_grows_reads_the_kv_it_would_hold_admitting_the_arrivals() -> None:
    """The queue for a slot grew by 150 in 30 s: of 30 rps the pool admitted 25, and what it holds
    (1.98 replicas' worth) reads 30/25 of itself. A queue that does not grow, or is unknown, leaves the
    reading as the KV in use; one that grows as fast as the arrivals reads at most 4x."""
    spec = make_spec()
    first = record_kv_in_use(spec, _full(100.0), PlannerState(), T0)
    assert first.decode_kv_in_use[-1].replicas == 1.98 and first.decode_kv_in_use[-1].waiting == 100.0
    grew = record_kv_in_use(spec, _full(250.0), first, T0 + INTERVAL).decode_kv_in_use[-1]
    assert math.isclose(grew.replicas, 1.98 * 30.0 / 25.0)
    assert record_kv_in_use(spec, _full(80.0), first, T0 + INTERVAL).decode_kv_in_use[-1].replicas == 1.98
    assert record_kv_in_use(spec, _full(None), first, T0 + INTERVAL).decode_kv_in_use[-1].replicas == 1.98
    flood = record_kv_in_use(spec, _full(100.0 + 30 * 60.0), first, T0 + INTERVAL).decode_kv_in_use[-1]
    assert math.isclose(flood.replicas, 1.98 * SATURATED_DEMAND_MAX_FACTOR)


def test_a_pinned_kv_with_a_growing_queue_floors_the_pool_above_what_it_holds() -> None:
    """With the KV pinned at 99% the readings are flat and floor nothing; the same ticks with the queue
    growing faster each tick (a demand rising past the pool) read a rise, and the floor and its reason
    say so."""
    spec = make_spec()
    pinned, growing = PlannerState(), PlannerState()
    for i, waiting in enumerate((100.0, 160.0, 280.0, 460.0)):
        now = T0 + i * INTERVAL
        pinned = record_kv_in_use(spec, _full(None), pinned, now)
        growing = record_kv_in_use(spec, _full(waiting), growing, now)
    obs = _full(460.0)
    assert decode_occupancy_floor(spec, obs, occupancy_trend(pinned.decode_kv_in_use), 150.0) == (0, None)
    trend = occupancy_trend(growing.decode_kv_in_use)
    assert trend is not None and trend.queue_grew
    floor, reason = decode_occupancy_floor(spec, obs, trend, 150.0)
    assert floor > 3
    assert reason is not None and "the queue for a slot growing" in reason
