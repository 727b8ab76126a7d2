"""The load the planner sizes for, read from an observation: how far ahead it must look (the lead
time), the rate to provision for (the observed rate with its surge headroom, the forecast's upper
quantile, the trend extrapolated), the rate that drains a prefill backlog, the decode replicas a
backlog waiting for decode slots needs (`decode_backlog_replicas`), whether the arrivals decline or
rise beyond their noise and whether prompts back up at prefill, and the capacity model's `Workload`
(the lengths it is given: `planner_lengths`).
Pure; callers: `planner.plan`, `planner_corrections` (the workload a latency is judged at, and whether a
prefill backlog's latencies describe the engine), `planner_lengths`, `planner_occupancy`, the tick and
the simulator's oracle (`lead_time_seconds`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import NamedTuple

from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.planner_types import LoadForecast, Observation, PlannerState
from dopd_operator.prefix_curve import PrefixCacheCurve
from dopd_operator.profile import PerformanceProfile
from dopd_operator.surge import SurgeHeadroom

MIN_ARRIVAL_SCV, MAX_ARRIVAL_SCV = 0.5, 20.0
# A decode pool whose mean batch is at this share of its slot limit is full: sequences queue for its
# slots (`decode_slots_full`, `planner_corrections.update_corrections`).
FULL_BATCH_SHARE = 0.95
# A load declines, rather than dips, where its trend is below zero by this many standard errors of the
# slope a flat load shows at its burstiness (one in 40 windows of a flat load reads that by chance).
DECLINE_NOISE_MULTIPLE = 2.0
# A load rises, rather than wanders, where its trend is above zero by this many standard errors (as a
# decline is judged; `arrivals_rising`).
RISE_NOISE_MULTIPLE = 2.0


def lead_time_seconds(spec: DisaggregatedModelSpec, observation: Observation | None = None) -> float:
    """How far ahead a decision must look: a replica ordered now serves from `startup` seconds on, and
    the next decision comes one interval later. The one place this is computed (the tick's forecast
    horizon, the trend guard below, `dopd plan --forecast-rate`, the simulator's oracle).

    Startup per role is the time learned from the role's pods (creation to Ready) when the observation
    carries it, else the spec's `startupSeconds` prior; the slower role sets the lead time.
    """
    startups = []
    for role in ("prefill", "decode"):
        learned = observation.role(role).startup_seconds if observation is not None else None
        startups.append(learned if learned is not None else spec.role(role).startup_seconds)
    return max(startups) + spec.scaling.interval_seconds


def declining(observation: Observation) -> str | None:
    """How the load declines, where its trend is below zero by DECLINE_NOISE_MULTIPLE times the noise of
    a flat load's slope (a decline, not a dip); None where it does not, or the noise is unknown."""
    slope = observation.arrival_rate_trend_rps_per_s
    noise = observation.arrival_rate_trend_noise_rps_per_s
    if slope is None or noise is None or slope >= -DECLINE_NOISE_MULTIPLE * noise:
        return None
    return (
        f"the load declines ({slope * 60:+.2f} rps/min, beyond {DECLINE_NOISE_MULTIPLE:g}x its noise "
        f"of {noise * 60:.2f})"
    )


def arrivals_rising(observation: Observation) -> bool:
    """Whether the arrival rate rises by more than RISE_NOISE_MULTIPLE times its trend's noise (False
    where either is unknown)."""
    slope = observation.arrival_rate_trend_rps_per_s
    noise = observation.arrival_rate_trend_noise_rps_per_s
    return slope is not None and noise is not None and slope > RISE_NOISE_MULTIPLE * noise


def prefill_backlogged(spec: DisaggregatedModelSpec, observation: Observation) -> bool:
    """Whether more prompts wait for prefill than arrive in one TTFT objective (an unknown queue or rate
    reads as none waiting, none arriving)."""
    rate = observation.arrival_rate_rps or 0.0
    return (observation.prefill_queue_depth or 0.0) > rate * spec.slo.ttft_seconds


def stepped_s(spec: DisaggregatedModelSpec, observation: Observation) -> float | None:
    """Seconds since the arrival rate stepped to its level, when that is within the metrics window (the
    window's rate is then read from the step on, `estimators.summarize_arrivals`); else None."""
    age_s = observation.arrival_level_age_seconds
    return age_s if age_s is not None and age_s < spec.metrics.window_seconds else None


def backlog_rps(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    state: PlannerState,
    model: CapacityModel,
    now: datetime,
) -> float:
    """The rate, on top of the load, that drains the prefill backlog over one lead time once the
    capacity ordered serves: the queue now plus what it grows by until then, the arrivals beyond what
    the ready replicas compute (at full batches), for as long as the replicas already starting still
    take (since the last scale-up), or a whole startup when none is starting (those ordered now).
    Draining only today's queue orders for a queue that keeps growing while the new replicas start, and
    leaves them a larger one than they were sized for. While the router sheds, only the queue counts.
    What drains from prefill arrives at decode: both pools are sized for it."""
    queue = observation.prefill_queue_depth or 0.0
    if queue <= 0:
        return 0.0
    lead_s = lead_time_seconds(spec, observation)
    if (observation.shed_rate_rps or 0.0) > 0:
        # The router sheds what its pools cannot serve within the SLO: arrivals beyond them are turned
        # away, not queued, so the queue does not grow by them (counting them would also report the
        # budget layout's sustainable rate low by the shed rate, docs/benchmarks/overload.md).
        return queue / lead_s
    computed_rps = observation.prefill.ready * model.prefill_rps_per_replica
    growth = max((observation.arrival_rate_rps or 0.0) - computed_rps, 0.0) * _growing_seconds(
        spec, observation, state, now, "prefill"
    )
    return (queue + growth) / lead_s


class DecodeBacklog(NamedTuple):
    """What the sequences waiting for a decode slot add to the decode pool (`decode_backlog_replicas`)."""

    replicas: int
    waiting: float  # sequences waiting now
    timely: float  # of those and the ones that join them until the replicas ordered serve, still in time
    drain_seconds: float  # drained over: the lead time, or the mean slack where longer (0: nothing waits)


def decode_backlog_replicas(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    state: PlannerState,
    model: CapacityModel,
    planned: int,
    now: datetime,
) -> DecodeBacklog:
    """Decode replicas beyond `planned` (the pool sized for the load) that get the sequences waiting for
    a decode slot into one within a lead time once the capacity ordered serves.

    The backlog is the queue now plus what it grows by until then: the rate the engines are given
    beyond what the ready replicas turn over with every slot taken, for as long as the replicas already
    starting still take (as `backlog_rps` counts it for prefill). Only the sequences that can still
    meet their TPOT count: one may wait its slack, `(SLO - step) * (n - 1)` seconds, so by Little's
    law at most `rate * mean slack` of them are in time; the rest are late whatever is ordered, and the
    join order lets the timely ones go first (`dopd_worker.join_order`). The planned pool drains the
    timely backlog by what it turns over beyond the rate, over a lead time, or over the mean slack where
    that is longer (a short startup: the timely sequences can wait longer than the replicas ordered
    take to serve); only the rest is ordered for, at a full replica's turnover over the same horizon.
    As the timely backlog is at most `rate * mean slack`, the queue never orders more than a second
    pool for the load: drained over a 15 s lead time, a flood of 1000-token outputs with 35 s of slack
    each had ordered up to 18 decode replicas where 6 serve (the e2e cluster's 10 s startups); now 8.

    So a backlog the pool sized for the load drains by itself orders nothing, nor does one of short
    outputs, whose slack is seconds (a step or a burst: what waits is late by the time anything ordered
    serves). A pool that runs full on long outputs (a reasoning model's, read short from a window that
    cannot see them finish, `resident_output_lengths`) keeps a queue of sequences with a minute of
    slack each: that orders replicas."""
    queue = observation.decode_queue_depth or 0.0
    per_replica_rps = model.decode_rps_per_replica
    if queue <= 0 or per_replica_rps <= 0:
        return DecodeBacklog(0, queue, 0.0, 0.0)
    slack_s = model.decode_slack_seconds_mean
    drain_s = max(lead_time_seconds(spec, observation), slack_s)
    rate_rps = observation.given_rate_rps
    turned_over_rps = observation.decode.ready * per_replica_rps
    growth = max(rate_rps - turned_over_rps, 0.0) * _growing_seconds(spec, observation, state, now, "decode")
    drained = max(planned * per_replica_rps - rate_rps, 0.0) * drain_s
    timely = min(queue + growth, rate_rps * slack_s)
    excess = timely - drained
    replicas = math.ceil(excess / (per_replica_rps * drain_s) - 1e-9) if excess > 0 else 0
    return DecodeBacklog(replicas, queue, timely, drain_s)


def _growing_seconds(
    spec: DisaggregatedModelSpec, observation: Observation, state: PlannerState, now: datetime, role: str
) -> float:
    """How long a backlog of `role` still grows before capacity ordered serves: what remains of the
    startup of the replicas already starting (since the last scale-up), or a whole startup when none
    is starting (those ordered now)."""
    startup_s = lead_time_seconds(spec, observation) - spec.scaling.interval_seconds
    if observation.role(role).pending > 0 and state.last_scale_up_time is not None:
        return min(max(startup_s - (now - state.last_scale_up_time).total_seconds(), 0.0), startup_s)
    return startup_s


def provisioned_rate(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    forecast: LoadForecast | None,
    surge: SurgeHeadroom | None = None,
    no_forecast_why: str | None = None,
) -> tuple[float, str]:
    """The rate to provision for: the highest of the observed rate, the forecast's upper quantile at
    the lead time, and the observed rate extrapolated along its current rise over that lead time (the
    rise beyond one standard error of the slope a load with no trend shows at the observed burstiness:
    the slope of a noisy flat load is positive half the time, and extrapolated over a lead time it
    had provisioned the Azure trace's plateaus 5-8% high; a rise that has stopped has no current
    rise: the observation's trend is at most its window's recent half's, `estimators.summarize_arrivals`).
    The surge headroom (`surge.py`: the upper quantile of how far the load rose, within a lead time, above
    both the observed rate and its extrapolation) is added to the observed rate, up to the history's
    peak (as the forecast's upper quantile stops there, `tick.forecast_load`), and only to it: not to the
    extrapolation, which while a rise is under way carries it forward for a whole lead time and so
    already overshoots (its past errors there are negative), nor to the forecast, whose upper quantile
    is its own allowance for what it cannot foresee.

    A series younger than the trend window has its trend fitted over the data there is
    (`estimators.summarize_arrivals`), and the line is extrapolated no further ahead than that data
    spans (`Observation.arrival_rate_trend_span_seconds`): a minute of a flat start read 7 rps/min
    beyond its noise on the code trace, which a 150 s lead time had made 17 rps (two prefill replicas
    too many, held by the scale-down window).

    The trend guard covers the moments a forecaster is least sure of, such as the turn of a daily
    cycle, where a backtest still prefers the last value: a new replica takes `startup` seconds, so a
    rise that is already under way must be provisioned for now, whatever the forecaster picked.
    """
    observed = observation.arrival_rate_rps or 0.0
    lead_seconds = lead_time_seconds(spec, observation)
    slope = observation.arrival_rate_trend_rps_per_s or 0.0
    noise = observation.arrival_rate_trend_noise_rps_per_s or 0.0  # unknown: the whole slope counts
    trend = max(slope - noise, 0.0)
    # A young series' line is extrapolated no further ahead than the data it was fitted on spans.
    span_s = observation.arrival_rate_trend_span_seconds
    horizon_s = lead_seconds if span_s is None else min(lead_seconds, span_s)
    extrapolated = observed + trend * horizon_s
    extra, note = 0.0, ""
    if surge is not None and observed > 0 and surge.rps > 0:
        extra = surge.above(observed)
        note = f" + {extra:.2f} rps {surge.describe()}"
        if extra < surge.rps:
            note += f", up to the history's peak of {surge.peak_rps:.2f} rps"
    age_s = stepped_s(spec, observation)
    since = f" since it stepped {age_s:.0f}s ago" if age_s is not None else ""
    candidates = [(observed + extra, f"load {observed:.2f} rps observed{since}{note}")]
    if forecast is not None:
        uncapped = forecast.arrival_rate_rps_upper_uncapped
        capped_note = (
            f"; its P{forecast.quantile * 100:g} of {uncapped:.2f} capped at the history's peak"
            if uncapped is not None
            else ""
        )
        candidates.append(
            (
                forecast.arrival_rate_rps_upper,
                f"load {forecast.arrival_rate_rps_upper:.2f} rps: forecast P{forecast.quantile * 100:g} at "
                f"+{forecast.horizon_seconds:g}s by {forecast.model} (mean {forecast.arrival_rate_rps_mean:.2f}"
                f"{capped_note})",
            )
        )
    if trend > 0:
        candidates.append(
            (
                extrapolated,
                f"load {extrapolated:.2f} rps: rising {slope * 60:.1f} rps/min, {trend * 60:.1f} of it "
                f"beyond the rate's noise, extrapolated over the {lead_seconds:g}s lead time"
                + (
                    f" (over {horizon_s:g}s: a line fitted over the {span_s:g}s of data a young series has)"
                    if horizon_s < lead_seconds
                    else ""
                ),
            )
        )
    rate, reason = max(candidates, key=lambda c: c[0])
    if rate > observed:
        reason += f"; {observed:.2f} rps now"
    if forecast is None:
        reason += f"; no forecast ({no_forecast_why})" if no_forecast_why else "; no forecast"
    return rate, reason


def observed_workload(
    observation: Observation,
    rate_rps: float,
    cache_tokens_per_replica: float | None = None,
    max_prefill_replicas: int | None = None,
) -> Workload:
    """The capacity model's load: `rate_rps` with the observed lengths and burstiness, and the
    prefix-cache hit rate and how it falls on prompts; with `cache_tokens_per_replica` (a prefill
    replica's KV capacity), also how the hit rate moves with the pool's size, where the router measures
    it."""
    assert observation.input_tokens_mean is not None and observation.output_tokens_mean is not None
    isl, osl = observation.input_tokens_mean, observation.output_tokens_mean
    burstiness = observation.arrival_scv if observation.arrival_scv is not None else 1.0
    return Workload(
        rate_rps,
        isl,
        observation.input_tokens_p90,
        osl,
        observation.output_tokens_p90,
        arrival_scv=min(max(burstiness, MIN_ARRIVAL_SCV), MAX_ARRIVAL_SCV),
        # Unknown hits are sized as none: the pool errs large, never small.
        prefix_cache_hit_rate=observation.prefix_cache_hit_rate or 0.0,
        prefix_cache_curve=None
        if cache_tokens_per_replica is None
        else observed_curve(observation, cache_tokens_per_replica, max_prefill_replicas),
        prefix_hit_mix=observation.prefix_hit_mix,
    )


def observed_curve(
    observation: Observation, cache_tokens_per_replica: float, max_replicas: int | None = None
) -> PrefixCacheCurve | None:
    """The hit rate against the pool's size: the router's reuse distances anchored at the engines' hit
    rate at the ready prefill replicas' cache, up to `max_replicas`' cache. None when either is unknown,
    or no prefill replica is ready (no cache to anchor at)."""
    shares, hit_rate = observation.prefix_reuse_share_within, observation.prefix_cache_hit_rate
    ready = observation.prefill.ready
    if not shares or hit_rate is None or ready <= 0:
        return None
    return PrefixCacheCurve(
        tuple(bound for bound, _ in shares),
        tuple(share for _, share in shares),
        hit_rate,
        ready * cache_tokens_per_replica,
        math.inf if max_replicas is None else max_replicas * cache_tokens_per_replica,
    )


def decode_slots_full(observation: Observation, profile: PerformanceProfile) -> bool:
    """Whether the ready decode replicas run FULL_BATCH_SHARE of their slots (the profile's largest
    batch) or of their KV cache; False where the running count is unknown (not known to be full)."""
    running, ready = observation.decode_running, observation.decode.ready
    if running is None or ready <= 0:
        return False
    kv_usage = observation.decode_kv_usage
    return running / ready >= FULL_BATCH_SHARE * profile.max_batch_size or (
        kv_usage is not None and kv_usage >= FULL_BATCH_SHARE
    )


def decode_saturated(observation: Observation, profile: PerformanceProfile) -> str | None:
    """How the decode pool is saturated, for `safety.hold_while_saturated`: its slots full
    (`decode_slots_full`) and sequences waiting for one; None where it is not, or that is unknown."""
    waiting = observation.decode_queue_depth
    if not waiting or waiting <= 0 or not decode_slots_full(observation, profile):
        return None
    kv = observation.decode_kv_usage
    kv_said = "" if kv is None else f", KV cache {kv:.0%} used"
    return (
        f"its slots are full ({observation.decode_running:.0f} sequences on {observation.decode.ready} "
        f"ready replica(s){kv_said}) and {waiting:.0f} wait for one"
    )
