"""The planner: one pure function from (spec, observation, forecast, state, now) to a Decision.

No I/O, no clock reads, no globals (the Kopf timer and the simulator both call it; the HPA keeps
`replica_calculator.go` apart from `horizontal.go` the same way). Steps:

1. Paused or metrics unknown: hold (or fall back), and say so. Unknown is never zero.
2. Online correction: observed/predicted TTFT (at its percentile) and mean TPOT at the current layout
   (bounded, smoothed) scale the profile, so a wrong profile heals (as Dynamo's SLA planner does).
3. Load: the largest of the observed rate plus the surge headroom (the upper quantile of the rises
   within a lead time that neither the observed rate nor its trend foresaw, measured on the arrival
   history by the tick, `surge.py`), the forecast's upper quantile at the lead time and the observed
   trend extrapolated over it, plus the rate that drains the prefill queue over the lead time (for
   both pools).
4. Capacity model (`capacity.py`): raw N_P, N_D, with service times 5% above the corrected profile.
5. Safety layer (`safety.py`), every change recorded as a Clamp. The first decision of a fresh planner
   (no recommendation history) is not step-limited, so from minReplicas at a standing load it sizes for
   that load at once, and keeps the replicas it found for the scale-down window. The scale-down window
   shortens to the lead time while the layouts recommended a lead time ago have covered the load
   observed now (the forecasts behind them were right).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dopd_operator.api import (
    DisaggregatedModelSpec,
    MetricsUnknownPolicy,
    ReadySince,
    Recommendation,
    ScalingMode,
)
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.planner_types import (
    CapacityEstimate,
    Clamp,
    Decision,
    LoadForecast,
    Observation,
    PlannerState,
)
from dopd_operator.profile import PerformanceProfile, resolve_profile
from dopd_operator.safety import (
    Layout,
    apply_ratio_band,
    apply_tolerance,
    clamp_bounds,
    enforce_budget,
    fit_budget,
    gpus,
    hold_found_replicas,
    hold_unschedulable,
    limit_steps,
    stabilize,
)
from dopd_operator.surge import SurgeHeadroom

# A correction explains an engine up to 2x slower or 2x faster than its profile (symmetric in ratio). The
# floor was 0.8 once, from the worry that a factor below 1 underestimates a pool near saturation; but the
# prefill factor is solved on the model (not a latency ratio), pools keep SERVICE_TIME_HEADROOM, and the
# model's own conservatism (a right profile reads about 0.8 on the Azure trace) sat at that floor, so a
# profile 30% too slow kept 1.2-1.3x the GPUs for good. Measured in docs/benchmarks/sim.md ("profile x1.3").
CORRECTION_BOUNDS = (0.5, 2.0)
MIN_ARRIVAL_SCV, MAX_ARRIVAL_SCV = 0.5, 20.0
CORRECTION_SMOOTHING = 0.5
# The prefill factor learns only while the router sheds at most this share of the arrivals. Above it the
# TTFT is admission's doing (it admits what it predicts will meet the SLO, the short prompts first), not
# the engine's: neither the demand nor the served rate at the demand's prompt mix explains it.
MAX_SHED_SHARE_TO_LEARN = 0.02
# Pools are sized as if the engine were this much slower than the corrected profile. With a loose TTFT
# SLO the cheapest prefill pool runs close to saturation, where a service time a few percent too short
# is an overload that no queue-draining catches before new replicas start; the corrections themselves
# move by about 5% from tick to tick on a right profile (simulated Azure trace). The oracle, which
# measures the capacity model, sizes without it.
SERVICE_TIME_HEADROOM = 1.05
# A decode pool whose mean batch is at this share of its slot limit (`CapacityModel.decode_batch_size`)
# is full: sequences queue for its slots (`_update_corrections`).
FULL_BATCH_SHARE = 0.95
MAX_RECOMMENDATIONS = 200


def plan(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    forecast: LoadForecast | None,
    state: PlannerState,
    now: datetime,
    surge: SurgeHeadroom | None = None,
    no_forecast_why: str | None = None,
) -> Decision:
    """Decide prefill and decode replicas for one tick.

    `surge` is the headroom the load's past unforeseen rises call for (`surge.surge_headroom`, from the
    tick's arrival-rate history); None: none. `no_forecast_why`: why `forecast` is None, for the
    decision's reasons.
    """
    current = Layout(observation.prefill.current, observation.decode.current)
    if spec.scaling.mode is ScalingMode.PAUSED:
        return _hold(
            spec, observation, state, current, ["scaling.mode is Paused: replicas are left as they are"], True
        )
    if not observation.load_known:
        return _metrics_unknown(spec, observation, state, current)
    idle_reason = None
    if observation.idle:
        # Nothing arrived, so nothing measured the lengths: size for no load (through the same
        # stabilization and step limits), and a forecast cannot be sized without lengths.
        idle_reason = "no request arrived in the metrics window: sizing for no load"
        if forecast is not None:
            idle_reason += f" (the forecast of {forecast.arrival_rate_rps_upper:.2f} rps waits for lengths)"
        forecast = None
        surge = None
        observation = observation.model_copy(update={"input_tokens_mean": 0.0, "output_tokens_mean": 0.0})

    base_profile = resolve_profile(spec.profile)
    state, unsettled = _track_ready(spec, observation, state, now)
    state = _update_corrections(spec, observation, state, base_profile, unsettled)
    profile = base_profile.scaled(
        state.prefill_correction * SERVICE_TIME_HEADROOM, state.decode_correction * SERVICE_TIME_HEADROOM
    )
    rate_rps, load_reason = _provisioned_rate(spec, observation, forecast, surge, no_forecast_why)
    workload = _workload(observation, forecast, rate_rps)
    model = CapacityModel(profile, spec.slo, workload)
    queue_rps = _backlog_rps(spec, observation, state, model, now)

    def raw_at(rate: float) -> Layout:
        # Decode with slot headroom: as many replicas as serve the load with every step at the full
        # batch's time (`CapacityModel.decode_replicas`), where the fewest that hold the SLO settle well
        # short of it.
        return Layout(
            model.prefill_replicas(rate + queue_rps),
            model.decode_replicas(rate + queue_rps, every_slot_taken=True),
        )

    def shaped_at(rate: float) -> Layout:
        return apply_ratio_band(clamp_bounds(raw_at(rate), spec, None), spec, None)

    raw = raw_at(rate_rps)
    reasons = [
        idle_reason or load_reason,
        *_capacity_reasons(
            model, raw, rate_rps, queue_rps, state, observation.prefix_cache_hit_rate is not None
        ),
    ]
    reasons.extend(unsettled.values())
    if observation.tpot_mean_seconds is None and observation.tpot_seconds is not None:
        reasons.append(
            f"decode correction held at x{state.decode_correction:.2f}: the mean inter-token latency is "
            "unknown (the TPOT histogram's _sum is missing), and a percentile read from its buckets is "
            "not the engine's speed"
        )
    clamps: list[Clamp] = []
    shaped = apply_ratio_band(clamp_bounds(raw, spec, clamps), spec, clamps)
    target, sustained_rps = fit_budget(shaped, shaped_at, rate_rps, spec, clamps)
    target, blocked = hold_unschedulable(target, current, observation, clamps)

    # The window remembers what was recommended, not what smoothing made of it (as the HPA does).
    fresh = not state.recommendations
    history = [r for r in state.recommendations if r.time >= now - _longest_window(spec)]
    recommendation = Recommendation(time=now, prefill=target.prefill, decode=target.decode)
    down_window, window_reason = _scale_down_window(
        spec, observation, forecast, history, shaped_at(observation.arrival_rate_rps or 0.0), now
    )
    if window_reason is not None:
        reasons.append(window_reason)
    target = stabilize(target, current, history, spec, now, clamps, down_window)
    history.append(recommendation)
    if fresh:
        target = hold_found_replicas(target, current, spec, clamps)
        # The replicas found count as this decision's recommendation, so the next decisions' scale-down
        # window holds them too (the HPA records the current replicas the same way when it first sees a
        # target): a load the found layout was sized for may come within the window.
        history[-1] = Recommendation(
            time=now,
            prefill=max(recommendation.prefill, current.prefill),
            decode=max(recommendation.decode, current.decode),
        )
        reasons.append(
            "first decision: sized for the observed load at once (step limits apply from the next decision)"
        )
    else:
        target = limit_steps(target, current, spec, clamps)
    target = apply_tolerance(target, current, spec, clamps)
    target = enforce_budget(clamp_bounds(target, spec, clamps), spec, clamps)

    state = _stamp_scale_times(state, current, target, now).model_copy(
        update={"recommendations": history[-MAX_RECOMMENDATIONS:]}
    )
    reasons.append(_summary(target, spec, clamps))
    capacity = CapacityEstimate(
        load_rps=rate_rps,
        prefill_service_seconds_mean=model.prefill_service_seconds_mean,
        prefill_rps_per_replica=model.prefill_rps_per_replica,
        decode_batch_size=model.decode_batch_size,
        decode_step_seconds=model.decode_step_seconds,
        decode_rps_per_replica=model.decode_rps_per_replica,
        sustainable_rps=min(sustained_rps, target.decode * model.decode_rps_per_replica),
        ttft_reachable=model.ttft_reachable,
        tpot_reachable=model.tpot_reachable,
    )
    limiting = {"TooManyReplicas", "GpuBudget", "ScaleUpLimit", "ScaleDownLimit", "CapacityBlocked"}
    return Decision(
        prefill=target.prefill,
        decode=target.decode,
        raw_prefill=raw.prefill,
        raw_decode=raw.decode,
        gpus=gpus(target, spec),
        reasons=tuple(reasons),
        clamps=tuple(clamps),
        capacity=capacity,
        state=state,
        metrics_healthy=True,
        scaling_limited=any(c.stage in limiting for c in clamps),
        capacity_blocked=blocked,
    )


# ------------------------------------------------------------------------------------------ inputs


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


def _stepped_s(spec: DisaggregatedModelSpec, observation: Observation) -> float | None:
    """Seconds since the arrival rate stepped to its level, when that is within the metrics window (the
    window's rate is then read from the step on, `estimators.summarize_arrivals`); else None."""
    age_s = observation.arrival_level_age_seconds
    return age_s if age_s is not None and age_s < spec.metrics.window_seconds else None


def _backlog_rps(
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
    leaves them a larger one than they were sized for. What drains from prefill arrives at decode: both
    pools are sized for it."""
    queue = observation.prefill_queue_depth or 0.0
    if queue <= 0:
        return 0.0
    lead_s = lead_time_seconds(spec, observation)
    startup_s = lead_s - spec.scaling.interval_seconds
    growing_s = startup_s
    if observation.prefill.pending > 0 and state.last_scale_up_time is not None:
        growing_s = min(max(startup_s - (now - state.last_scale_up_time).total_seconds(), 0.0), startup_s)
    computed_rps = observation.prefill.ready * model.prefill_rps_per_replica
    growth = max((observation.arrival_rate_rps or 0.0) - computed_rps, 0.0) * growing_s
    return (queue + growth) / lead_s


def _provisioned_rate(
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
    age_s = _stepped_s(spec, observation)
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


def _workload(observation: Observation, forecast: LoadForecast | None, rate_rps: float) -> Workload:
    assert observation.input_tokens_mean is not None and observation.output_tokens_mean is not None
    isl, osl = observation.input_tokens_mean, observation.output_tokens_mean
    if forecast is not None:
        isl = max(isl, forecast.input_tokens_mean_upper or 0.0)
        osl = max(osl, forecast.output_tokens_mean_upper or 0.0)
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
    )


def _scale_down_window(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    forecast: LoadForecast | None,
    history: list[Recommendation],
    needed_now: Layout,
    now: datetime,
) -> tuple[float | None, str | None]:
    """The scale-down stabilization window for this tick: the spec's, or the lead time when the
    forecaster has been right, and why.

    "Right" is judged on what matters for releasing capacity: every layout recommended about one lead
    time ago (those recommendations were sized for the forecast of now) covers what the load observed
    now needs. Then a replica released now can be back before the load the current forecast allows for
    arrives, and holding it for the full window only buys idle GPUs. Without a forecast, or when an
    earlier recommendation fell short, the spec's window holds (the HPA's behaviour).
    """
    window = spec.scaling.scale_down.stabilization_seconds
    lead = lead_time_seconds(spec, observation)
    if forecast is None or window <= lead:
        return None, None
    interval = timedelta(seconds=spec.scaling.interval_seconds)
    due = [
        r
        for r in history
        if now - timedelta(seconds=lead) - interval <= r.time <= now - timedelta(seconds=lead)
    ]
    if not due or any(r.prefill < needed_now.prefill or r.decode < needed_now.decode for r in due):
        return None, None
    return lead, (
        f"scale-down window {lead:g}s instead of {window:g}s: the layouts recommended {lead:g}s ago "
        f"cover the load observed now ({needed_now.prefill}P/{needed_now.decode}D), so the forecasts held"
    )


def _track_ready(
    spec: DisaggregatedModelSpec, observation: Observation, state: PlannerState, now: datetime
) -> tuple[PlannerState, dict[str, str]]:
    """Record each role's Ready count and since when it has held; return the roles whose count changed
    within the metrics window and that have a latency to learn from, with why their correction holds.

    Like is compared with like: a latency percentile is measured over the metrics window, and a window
    that saw a replica join or leave does not describe the current layout. Right after a scale-up the
    window's TPOT was set by the fuller batches of the old, smaller pool (and the new replica starts
    empty), while the prediction divides the running sequences over the new count: on the Azure trace
    that read a right decode profile as 25-35% slow, and the pool grew a replica it did not need.
    """
    window_s = spec.metrics.window_seconds
    update: dict[str, ReadySince] = {}
    unsettled: dict[str, str] = {}
    latencies = {"prefill": observation.ttft_seconds, "decode": observation.tpot_seconds}
    for role in ("prefill", "decode"):
        ready = observation.role(role).ready
        seen: ReadySince | None = getattr(state, f"{role}_ready")
        if seen is None or seen.count != ready:
            seen = ReadySince(count=ready, since=now)
            update[f"{role}_ready"] = seen
        held_s = (now - seen.since).total_seconds()
        if held_s < window_s and latencies[role] is not None:
            unsettled[role] = (
                f"{role} correction held: {ready} replica(s) Ready for {held_s:.0f}s, less than the "
                f"{window_s:g}s window its latency is measured over"
            )
    return (state.model_copy(update=update) if update else state), unsettled


def _update_corrections(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    state: PlannerState,
    base: PerformanceProfile,
    unsettled: dict[str, str],
) -> PlannerState:
    """Move the correction factors toward observed/predicted latency at the current layout.

    Like is compared with like: the TTFT prediction is made at the percentile the observation was
    measured at (`Observation.latency_percentile`), not at the provisioning percentile. Dividing an
    observed P90 by a predicted P99 would read a correct profile as too slow-to-fast and drive the
    factor to its floor. The decode factor is the observed mean inter-token latency over the predicted
    mean at the observed batch (`CapacityModel.tpot_mean_seconds`): the histogram's sum over its count
    is exact, its percentile an interpolation within a bucket (tests/operator/test_decode_correction.py);
    the percentile and the attainment only say whether the SLO is missed.

    Nothing is learned from what no factor within CORRECTION_BOUNDS explains (except a decode pool
    missing the TPOT SLO, at its percentile or its attainment target, by more than the upper bound
    explains: its factor moves toward that bound), nor
    while a prefill backlog stands (more than one TTFT SLO's worth of arrivals queued) and its prompts
    are served late (observed TTFT above the SLO): the latencies of such windows, and the decode flood
    when a backlog drains, are left by a load the pool was too small for, not by the engine's speed;
    a backlog served in time (a router with a dispatch deadline) raises the prefill factor but never
    lowers it (the pool serves less than the arrivals it is solved at).
    The queue term of the load drains the backlog; a slow engine shows again in the windows after. The
    prefill factor also holds while the router sheds more than MAX_SHED_SHARE_TO_LEARN of the arrivals,
    or the shed rate is unknown; and a role's factor holds while its Ready count changed within the
    metrics window (`unsettled`, from `_track_ready`): a decode pool that has just grown reads the slot
    waits of the smaller pool before it, and moves toward the bound only if its batches are still full
    (FULL_BATCH_SHARE of the slots: it is too small now, whatever the window saw). Both hold while the
    arrival rate stepped to its level within the metrics window (`_stepped_s`: the window's latencies
    are the old level's, the running count and queue the new one's). Nor does
    the prefill factor learn from a TTFT percentile that no pool size reaches (the prompts there take
    longer than the SLO alone: `prefill_feasible_share` below it): that percentile is the longest prompts'
    own prefill time, where a prefix cache saves most (a long prompt is mostly a cached conversation), and
    a factor fitted to it misjudges the prompts that can meet the SLO, which attainment is made of.
    """
    rate = observation.arrival_rate_rps or 0.0
    # The load stepped within the window: its latencies mix two loads, the one measured at the tick
    # (running sequences, queue) is the new one's.
    if _stepped_s(spec, observation) is not None:
        return state
    # A backlog whose prompts are served late: the latencies are the backlog's. (A router with a dispatch
    # deadline serves the timely prompts first and keeps the late ones queued: there the first tokens
    # of the window still tell the engine's speed.)
    served_late = observation.ttft_seconds is None or observation.ttft_seconds > spec.slo.ttft_seconds
    backlog = (observation.prefill_queue_depth or 0.0) > rate * spec.slo.ttft_seconds
    if backlog and served_late:
        return state
    # The latencies are those of the load the engines were given, the served rate. While the router
    # sheds more than a trickle, or with the shed rate unknown, the prefill factor holds: solved at the
    # demand, a shedding pool reads as a fast engine and the factor sinks toward its floor.
    served = observation.served_rate_rps
    shed = observation.shed_rate_rps
    learns_prefill = (
        served is not None
        and shed is not None
        and shed <= MAX_SHED_SHARE_TO_LEARN * rate
        and "prefill" not in unsettled
    )
    model = CapacityModel(base, spec.slo, _workload(observation, None, rate if served is None else served))
    prefill_factor, decode_factor = state.prefill_correction, state.decode_correction
    low, high = CORRECTION_BOUNDS
    quantile = (observation.latency_percentile or 0.0) / 100.0
    if (
        observation.ttft_seconds is not None
        and observation.prefill.ready > 0
        and learns_prefill
        and served
        and model.prefill_feasible_share >= quantile  # a percentile some pool size reaches
    ):
        # Solved, not divided: near saturation the TTFT is far from proportional to the prefill time.
        wanted = model.prefill_slowdown(
            observation.prefill.ready, served, quantile, observation.ttft_seconds, CORRECTION_BOUNDS
        )
        if wanted is not None and backlog:
            # Served in time from a standing queue, the pool works flat out on less than the window's
            # arrivals (the queue takes the rest), so solving at the arrivals reads it as fast: on the
            # steps trace a 2x jump sank a right factor to 0.63 while the queue grew, and the pool
            # shrank under it. Such a window can say the engine is slower, never that it is faster.
            wanted = max(wanted, prefill_factor)
        if wanted is not None:
            prefill_factor += CORRECTION_SMOOTHING * (wanted - prefill_factor)
    if (
        observation.tpot_mean_seconds is not None
        and observation.tpot_seconds is not None
        and observation.decode_running
        and observation.decode.ready > 0
    ):
        mean_batch = observation.decode_running / observation.decode.ready
        # The mean, not the percentile: the histogram's sum over its count is exact, while a percentile
        # interpolated within a bucket 20-25% wide reads up to 17% high just past a bucket's lower bound
        # (10 ms, 20 ms), and a factor fitted to it swings with the batch across that bound.
        predicted = model.tpot_mean_seconds(mean_batch)
        ratio = observation.tpot_mean_seconds / predicted if predicted > 0 else 0.0
        # Missing the SLO: the percentile past it, or fewer sequences within it than the target.
        missed = observation.tpot_seconds > spec.slo.tpot_seconds or (
            observation.tpot_attainment is not None
            and observation.tpot_attainment < spec.slo.attainment_target
        )
        # Every slot taken: the pool is too small now, whatever the window saw.
        full = mean_batch >= FULL_BATCH_SHARE * model.decode_batch_size
        if "decode" in unsettled and not (full and missed):
            pass  # the window's TPOT is the old pool's (its slot waits included), not this one's
        elif low <= ratio <= high and "decode" not in unsettled:
            decode_factor += CORRECTION_SMOOTHING * (ratio - decode_factor)
        elif ratio > high and missed:
            # Past what any factor explains and missing the SLO: sequences wait for a slot in a pool too
            # small for them, which no ratio measures. Move toward the bound (a bigger pool either way);
            # the factor relearns the engine's speed once the TPOT is back within it.
            decode_factor += CORRECTION_SMOOTHING * (high - decode_factor)
    return state.model_copy(
        update={"prefill_correction": round(prefill_factor, 4), "decode_correction": round(decode_factor, 4)}
    )


def _longest_window(spec: DisaggregatedModelSpec) -> timedelta:
    return timedelta(
        seconds=max(
            spec.scaling.scale_up.stabilization_seconds, spec.scaling.scale_down.stabilization_seconds
        )
    )


def _stamp_scale_times(state: PlannerState, current: Layout, target: Layout, now: datetime) -> PlannerState:
    update: dict[str, datetime] = {}
    if target.prefill > current.prefill or target.decode > current.decode:
        update["last_scale_up_time"] = now
    if target.prefill < current.prefill or target.decode < current.decode:
        update["last_scale_down_time"] = now
    return state.model_copy(update=update) if update else state


# ----------------------------------------------------------------------------------------- holding


def _hold(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    state: PlannerState,
    layout: Layout,
    reasons: list[str],
    healthy: bool,
    stage: str | None = None,
) -> Decision:
    clamps: list[Clamp] = []
    target = enforce_budget(clamp_bounds(layout, spec, clamps), spec, clamps)
    if stage is not None:
        current = Layout(observation.prefill.current, observation.decode.current)
        for role in ("prefill", "decode"):
            value = current.prefill if role == "prefill" else current.decode
            clamps.insert(0, Clamp(stage=stage, role=role, before=value, after=value, reason=reasons[0]))
    return Decision(
        prefill=target.prefill,
        decode=target.decode,
        raw_prefill=layout.prefill,
        raw_decode=layout.decode,
        gpus=gpus(target, spec),
        reasons=(*reasons, _summary(target, spec, clamps)),
        clamps=tuple(clamps),
        capacity=None,
        state=state,
        metrics_healthy=healthy,
        scaling_limited=False,
        capacity_blocked=False,
    )


def _metrics_unknown(
    spec: DisaggregatedModelSpec, observation: Observation, state: PlannerState, current: Layout
) -> Decision:
    why = observation.unknown_reason
    if spec.scaling.on_metrics_unknown is MetricsUnknownPolicy.FALLBACK and spec.scaling.fallback_replicas:
        fallback = Layout(spec.scaling.fallback_replicas.prefill, spec.scaling.fallback_replicas.decode)
        reason = f"metrics unknown ({why}): moving to fallbackReplicas {fallback.prefill}P/{fallback.decode}D"
        return _hold(spec, observation, state, fallback, [reason], False, "MetricsUnknown")
    reason = f"metrics unknown ({why}): holding {current.prefill}P/{current.decode}D (unknown is not zero)"
    return _hold(spec, observation, state, current, [reason], False, "MetricsUnknown")


# ---------------------------------------------------------------------------------------- reasons


def _prefix_cache_phrase(hit_rate: float, known: bool) -> str:
    """What the prefill reason says of the prefix cache: the share it credits, that it sized for none
    because the rate is unknown, or nothing (a known rate of 0)."""
    if not known:
        return " (prefix-cache hit rate unknown: sized as no hits)"
    return f" ({100 * hit_rate:.0f}% prefix-cache hits)" if hit_rate > 0 else ""


def _unreachable_cache_phrase(hit_rate: float) -> str:
    """What the TTFT-unreachable reason adds where prompts are served from a prefix cache: the limit holds
    at the hit rate observed, and the cache is the prefill replicas' KV memory, so a larger pool may hit
    more and make more prompts feasible, which the model does not know (docs/planner.md, "Prefix cache")."""
    if hit_rate <= 0:
        return ""
    return (
        f" at the observed {100 * hit_rate:.0f}% prefix-cache hits; a larger prefill pool holds more cache "
        "and may hit more, which this sizing does not count on"
    )


def _capacity_reasons(
    model: CapacityModel,
    raw: Layout,
    rate_rps: float,
    queue_rps: float,
    state: PlannerState,
    hit_rate_known: bool,
) -> list[str]:
    w = model.workload
    reasons = [
        (
            f"prefill: {model.prefill_service_seconds_mean * 1000:.1f} ms per prompt in full batches over "
            f"prompts mean {w.input_tokens_mean:.0f}/p90 {w.input_tokens_p90 or w.input_tokens_mean:.0f} tokens"
            + _prefix_cache_phrase(w.prefix_cache_hit_rate, hit_rate_known)
            + f" ({model.prefill_rps_per_replica:.2f} rps per replica); {raw.prefill} replica(s) keep "
            f"{model.percentile_q * 100:g}% of prompts within TTFT {model.slo.ttft_seconds:g}s"
            + (f" with bursty arrivals (SCV {w.arrival_scv:.1f})" if w.arrival_scv > 1.5 else "")
            + (f" (incl. {queue_rps:.2f} rps to drain the queue)" if queue_rps > 0 else "")
        ),
        (
            f"decode: B*={model.decode_batch_size} (limited by {model.decode_batch_limited_by}), step "
            f"{model.decode_step_seconds * 1000:.1f} ms, {model.decode_rps_per_replica:.2f} rps per replica; "
            f"{raw.decode} replica(s) for {model.decode_concurrency(rate_rps + queue_rps, raw.decode):.0f} "
            f"concurrent sequences ({model.decode_mean_batch(raw.decode, rate_rps + queue_rps):.0f} per replica)"
            + _slot_headroom_phrase(model, raw.decode, rate_rps + queue_rps)
        ),
    ]
    if not model.ttft_reachable:
        reasons.append(
            f"TTFT SLO unreachable by scaling for {100 * (1 - model.prefill_feasible_share):.1f}% of prompts "
            f"(longer than {model.prefill_limit_tokens:.0f} tokens, whose prefill alone exceeds "
            f"{model.slo.ttft_seconds:g}s{_unreachable_cache_phrase(w.prefix_cache_hit_rate)}); prefill sized for the rest"
        )
    if not model.tpot_reachable:
        reasons.append(
            f"TPOT SLO unreachable: one sequence's step already exceeds {model.slo.tpot_seconds:g}s"
        )
    if state.prefill_correction != 1.0 or state.decode_correction != 1.0:
        reasons.append(
            f"profile corrected by observed latency: prefill x{state.prefill_correction:.2f}, "
            f"decode x{state.decode_correction:.2f}"
        )
    return reasons


def _slot_headroom_phrase(model: CapacityModel, decode: int, rate_rps: float) -> str:
    fewest = model.decode_replicas(rate_rps)
    if decode <= fewest:
        return ""
    return (
        f"; slot headroom: {fewest} would hold the SLO at {model.decode_mean_batch(fewest, rate_rps):.0f} "
        f"sequences each, {decode} still would with every slot taken"
    )


def _summary(target: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp]) -> str:
    ratio = f"{target.prefill / target.decode:.2f}" if target.decode else "n/a"
    text = (
        f"decided {target.prefill} prefill + {target.decode} decode ({gpus(target, spec)} GPUs, P/D {ratio})"
    )
    if clamps:
        text += "; limited by " + ", ".join(dict.fromkeys(c.stage for c in clamps))
    return text
