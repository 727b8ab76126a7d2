"""The planner: one pure function from (spec, observation, forecast, state, now) to a Decision.

No I/O, no clock reads, no globals (the Kopf timer and the simulator both call it; the HPA keeps
`replica_calculator.go` apart from `horizontal.go` the same way). Steps:

1. Paused or metrics unknown: hold (or fall back), and say so. Unknown is never zero.
2. Online correction (`planner_corrections.py`): observed/predicted TTFT (at its percentile) and mean
   TPOT at the current layout (bounded, smoothed) scale the profile, so a wrong profile heals (as
   Dynamo's SLA planner does).
3. Load (`planner_load.py`): the largest of the observed rate plus the surge headroom (the upper
   quantile of the rises within a lead time that neither the observed rate nor its trend foresaw,
   measured on the arrival history by the tick, `surge.py`), the forecast's upper quantile at the lead
   time and the observed trend extrapolated over it, plus the rate that drains the prefill queue over
   the lead time (for both pools), and for decode the replicas that seat the sequences waiting for a
   slot that can still meet their TPOT, where the pool sized for the load would not.
4. Capacity model (`capacity.py`): raw N_P, N_D, with service times 5% above the corrected profile.
5. Safety layer (`safety.py`), every change recorded as a Clamp. The first decision of a fresh planner
   (no recommendation history) is not step-limited, so from minReplicas at a standing load it sizes for
   that load at once, and keeps the replicas it found for the scale-down window. The scale-down window
   shortens to the lead time while the layouts recommended a lead time ago have covered the load
   observed now (the forecasts behind them were right), and to one interval where the load also
   declines beyond its trend's noise (`_scale_down_window`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dopd_operator.api import (
    DisaggregatedModelSpec,
    MetricsUnknownPolicy,
    Recommendation,
    ScalingMode,
)
from dopd_operator.capacity import CapacityModel
from dopd_operator.planner_corrections import track_ready, update_corrections
from dopd_operator.planner_lengths import (
    hold_output_lengths,
    lengths_declining,
    resident_output_lengths,
    seated_output_lengths,
    trending_lengths,
)
from dopd_operator.planner_load import (
    DecodeBacklog,
    backlog_rps,
    declining,
    decode_backlog_replicas,
    decode_saturated,
    lead_time_seconds,
    observed_workload,
    provisioned_rate,
)
from dopd_operator.planner_occupancy import decode_occupancy_floor, occupancy_trend, record_kv_in_use
from dopd_operator.planner_types import (
    CapacityEstimate,
    Clamp,
    Decision,
    LoadForecast,
    Observation,
    PlannerState,
)
from dopd_operator.profile import resolve_profile
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
    hold_while_saturated,
    limit_steps,
    stabilize,
)
from dopd_operator.surge import SurgeHeadroom

# Pools are sized as if the engine were this much slower than the corrected profile. With a loose TTFT
# SLO the cheapest prefill pool runs close to saturation, where a service time a few percent too short
# is an overload that no queue-draining catches before new replicas start; the corrections themselves
# move by about 5% from tick to tick on a right profile (simulated Azure trace). The oracle, which
# measures the capacity model, sizes without it.
SERVICE_TIME_HEADROOM = 1.05
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
    idle = observation.idle
    if idle:
        # Nothing arrived, so nothing measured the lengths: size for no load (through the same
        # stabilization and step limits), and a forecast cannot be sized without lengths.
        idle_reason = "no request arrived in the metrics window: sizing for no load"
        if forecast is not None:
            idle_reason += f" (the forecast of {forecast.arrival_rate_rps_upper:.2f} rps waits for lengths)"
        forecast = None
        surge = None
        observation = observation.model_copy(update={"input_tokens_mean": 0.0, "output_tokens_mean": 0.0})

    base_profile = resolve_profile(spec.profile)
    lengths_reasons: list[str] = []
    outputs_adjusted = False  # raised to what the residents imply, or held for full decode slots
    state, unsettled = track_ready(spec, observation, state, now)
    state = record_kv_in_use(spec, observation, state, now)
    decode_correction_before = state.decode_correction
    if not idle:
        # Idle, nothing measured the lengths, and the window's latencies are the tail of a load that has
        # gone (the sequences still decoding), at no workload the lengths say: judged at none (the
        # sizing's zero lengths), the reasoning trace's last long outputs had raised the decode factor
        # from 1.03 to 1.45 a minute after its load stopped, and the next load would have been sized
        # for that.
        observation, raised = resident_output_lengths(spec, observation)
        observation, state, held = hold_output_lengths(spec, observation, state, base_profile, now)
        lengths_reasons = [r for r in (raised, held) if r is not None]
        outputs_adjusted = bool(lengths_reasons)
        state = update_corrections(spec, observation, state, base_profile, unsettled)
    if "decode" in unsettled and state.decode_correction != decode_correction_before:
        unsettled["decode"] = _unsettled_decode_raised(
            spec, observation, decode_correction_before, state.decode_correction
        )
    profile = base_profile.scaled(
        state.prefill_correction * SERVICE_TIME_HEADROOM, state.decode_correction * SERVICE_TIME_HEADROOM
    )
    rate_rps, load_reason = provisioned_rate(spec, observation, forecast, surge, no_forecast_why)
    # The corrections above judged the latencies at the window's own lengths; the pools are sized for
    # the lengths a lead time ahead.
    sized, trend_reason = trending_lengths(spec, observation, outputs_adjusted)
    sized, seated_reason = seated_output_lengths(observation, sized)
    lengths_reasons.extend(r for r in (trend_reason, seated_reason) if r is not None)
    workload = observed_workload(sized, rate_rps, profile.kv_capacity_tokens, spec.prefill.max_replicas)
    model = CapacityModel(profile, spec.slo, workload)
    queue_rps = backlog_rps(spec, observation, state, model, now)
    lead_s = lead_time_seconds(spec, observation)
    occupancy_floor, occupancy_reason = decode_occupancy_floor(
        spec, observation, occupancy_trend(state.decode_kv_in_use), lead_s
    )

    def raw_at(rate: float) -> tuple[Layout, DecodeBacklog]:
        # Decode with slot headroom: as many replicas as serve the load with every step at the full
        # batch's time (`CapacityModel.decode_replicas`), where the fewest that hold the SLO settle well
        # short of it; plus those the sequences waiting for a slot need.
        decode = model.decode_replicas(rate + queue_rps, every_slot_taken=True)
        backlog = decode_backlog_replicas(spec, observation, state, model, decode, now)
        return Layout(model.prefill_replicas(rate + queue_rps), decode + backlog.replicas), backlog

    def shaped_at(rate: float) -> Layout:
        return apply_ratio_band(clamp_bounds(raw_at(rate)[0], spec, None), spec, None)

    raw, decode_backlog = raw_at(rate_rps)
    reasons = [
        idle_reason or load_reason,
        *_capacity_reasons(
            model,
            raw,
            rate_rps,
            queue_rps,
            decode_backlog,
            lead_s,
            state,
            observation.prefix_cache_hit_rate is not None,
            observation.prefix_reuse_unread,
        ),
    ]
    reasons.extend(unsettled.values())
    reasons.extend(lengths_reasons)
    if observation.decode_step_mean_seconds is None and observation.tpot_seconds is not None:
        reasons.append(
            f"decode correction held at x{state.decode_correction:.2f}: the decode step's mean is unknown "
            "(the TPOT histogram's _sum or the decode pods' slot waits are missing), and a percentile "
            "read from its buckets is not the engine's speed"
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
        spec, observation, forecast, history, shaped_at(observation.arrival_rate_rps or 0.0), now, lead_s
    )
    if window_reason is not None:
        reasons.append(window_reason)
    target = stabilize(target, current, history, spec, now, clamps, down_window)
    if occupancy_floor > target.decode and occupancy_reason is not None:
        # After the scale-down window, and not remembered by it: the floor lasts as long as the rise.
        # Pending pods hold it as they hold the sizing: they are not capacity.
        floored, floor_blocked = hold_unschedulable(
            target.replace("decode", occupancy_floor), current, observation, clamps
        )
        if floored.decode > target.decode:
            reasons.append(occupancy_reason)
        target, blocked = floored, blocked or floor_blocked
    target = hold_while_saturated(target, current, decode_saturated(observation, base_profile), clamps)
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


# ------------------------------------------------------------------------- windows and scale times


def _scale_down_window(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    forecast: LoadForecast | None,
    history: list[Recommendation],
    needed_now: Layout,
    now: datetime,
    lead_s: float,
) -> tuple[float | None, str | None]:
    """The scale-down stabilization window for this tick: the spec's, the lead time when the forecaster
    has been right, or one interval when it has and the load declines; and why. `lead_s` is this tick's
    lead time (`planner_load.lead_time_seconds`).

    "Right" is judged on what matters for releasing capacity: every layout recommended about one lead
    time ago (those recommendations were sized for the forecast of now) covers what the load observed
    now needs. Then a replica released now can be back before the load the current forecast allows for
    arrives, and holding it for the full window only buys idle GPUs. Without a forecast, or when an
    earlier recommendation fell short, the spec's window holds (the HPA's behaviour).

    The window holds the highest recent recommendation so that a dip does not release what the next
    tick needs. Where the load declines (`planner_load.declining`) the recent recommendations are sized
    for a load that has passed, and each decision is itself sized for the forecast's upper quantile over
    the lead time: the window shortens to one interval. On the reasoning trace's decline (30 to 10 rps
    over 15 minutes) the lead-time window held the decode pool 3-5 replicas above what the load needed
    (recommendations 150 s old): 1.19x -> 1.15x the oracle's GPU-hours at the same attainment, diurnal
    1.05x -> 1.03x. At one standard error a flat load's chance dips had released the replica a surge
    then needed (bursts seed 0 97.2% -> 93.8%).
    """
    window = spec.scaling.scale_down.stabilization_seconds
    if forecast is None or window <= lead_s:
        return None, None
    interval = timedelta(seconds=spec.scaling.interval_seconds)
    due = [
        r
        for r in history
        if now - timedelta(seconds=lead_s) - interval <= r.time <= now - timedelta(seconds=lead_s)
    ]
    if not due or any(r.prefill < needed_now.prefill or r.decode < needed_now.decode for r in due):
        return None, None
    held = (
        f"the layouts recommended {lead_s:g}s ago cover the load observed now ({needed_now.prefill}P/"
        f"{needed_now.decode}D), so the forecasts held"
    )
    decline = declining(observation) or lengths_declining(observation)
    if decline is not None:
        shortest = spec.scaling.interval_seconds
        return shortest, (
            f"scale-down window {shortest:g}s instead of {window:g}s: {held}, and {decline}, so what "
            "was recommended for it earlier has passed"
        )
    return lead_s, f"scale-down window {lead_s:g}s instead of {window:g}s: {held}"


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


def _unsettled_decode_raised(
    spec: DisaggregatedModelSpec, observation: Observation, before: float, after: float
) -> str:
    """Why the decode correction moved though the pool's Ready count changed within the window: its
    slots are full and the SLO missed, so it is too small now (`planner_corrections.update_corrections`)."""
    return (
        f"decode correction raised x{before:.2f} -> x{after:.2f} though the pool changed to "
        f"{observation.decode.ready} Ready within the {spec.metrics.window_seconds:g}s window: its slots "
        "are still full and the TPOT SLO missed, so it is too small now"
    )


def _prefix_cache_phrase(model: CapacityModel, prefill: int, known: bool, curve_unread: str | None) -> str:
    """What the prefill reason says of the prefix cache: the share it credits (and, where the router
    measures how hits grow with the pool, the share `prefill` replicas' cache is expected to hold, or why
    that curve is not used), that it sized for none because the rate is unknown, or nothing (a known rate
    of 0)."""
    hit_rate = model.workload.prefix_cache_hit_rate
    if not known:
        return " (prefix-cache hit rate unknown: sized as no hits)"
    if hit_rate <= 0:
        return ""
    if model.workload.prefix_cache_curve is None and curve_unread is not None:
        return f" ({100 * hit_rate:.0f}% prefix-cache hits, taken as the same at every pool size: {curve_unread})"
    expected = model.prefill_hit_rate(prefill)  # the observed rate without a curve
    if abs(expected - hit_rate) < 0.005:
        return f" ({100 * hit_rate:.0f}% prefix-cache hits)"
    return f" ({100 * hit_rate:.0f}% prefix-cache hits now, {100 * expected:.0f}% expected in {prefill} replicas' cache)"


def _cached_limit_phrase(model: CapacityModel) -> str:
    """Where hits are a mix (a prompt hits its cached prefix or nothing, `prefix_curve.prefix_populations`),
    the longer limit of the prompts that hit most."""
    cached = model.prefill_limit_cached_tokens
    if cached is None:
        return ""
    deep = model.prompt_populations[0]
    return (
        f"; up to {cached:.0f} for the {100 * deep.share:.0f}% that find {100 * deep.hit:.0f}% of "
        "themselves in the prefix cache"
    )


def _unreachable_cache_phrase(model: CapacityModel) -> str:
    """What the TTFT-unreachable reason adds where prompts are served from a prefix cache: the limit holds
    at the hit rate observed, and the cache is the prefill replicas' KV memory, so a larger pool may hit
    more and make more prompts feasible (docs/planner.md, "Prefix cache"): counted on where the router
    measures how hits grow with the pool, else not."""
    hit_rate, curve = model.workload.prefix_cache_hit_rate, model.workload.prefix_cache_curve
    if hit_rate <= 0:
        return ""
    if curve is not None:
        return (
            f" at the observed {100 * hit_rate:.0f}% prefix-cache hits; up to {100 * curve.ceiling_hit_rate:.0f}% "
            "with an ample pool's cache, which the prefill sizing counts"
        )
    return (
        f" at the observed {100 * hit_rate:.0f}% prefix-cache hits; a larger prefill pool holds more cache "
        "and may hit more, which this sizing does not count on"
    )


def _capacity_reasons(
    model: CapacityModel,
    raw: Layout,
    rate_rps: float,
    queue_rps: float,
    decode_backlog: DecodeBacklog,
    lead_s: float,
    state: PlannerState,
    hit_rate_known: bool,
    curve_unread: str | None,
) -> list[str]:
    w = model.workload
    planned = raw.decode - decode_backlog.replicas
    reasons = [
        (
            f"prefill: {model.prefill_service_seconds_mean * 1000:.1f} ms per prompt in full batches over "
            f"prompts mean {w.input_tokens_mean:.0f}/p90 {w.input_tokens_p90 or w.input_tokens_mean:.0f} tokens"
            + _prefix_cache_phrase(model, raw.prefill, hit_rate_known, curve_unread)
            + f" ({model.prefill_rps_per_replica:.2f} rps per replica); {raw.prefill} replica(s) keep "
            f"{model.percentile_q * 100:g}% of prompts within TTFT {model.slo.ttft_seconds:g}s"
            + (f" with bursty arrivals (SCV {w.arrival_scv:.1f})" if w.arrival_scv > 1.5 else "")
            + (f" (incl. {queue_rps:.2f} rps to drain the queue)" if queue_rps > 0 else "")
        ),
        (
            f"decode: B*={model.decode_batch_size} (limited by {model.decode_batch_limited_by}), step "
            f"{model.decode_step_seconds * 1000:.1f} ms, {model.decode_rps_per_replica:.2f} rps per replica; "
            f"{planned} replica(s) for {model.decode_concurrency(rate_rps + queue_rps, planned):.0f} "
            f"concurrent sequences ({model.decode_mean_batch(planned, rate_rps + queue_rps):.0f} per replica)"
            + _slot_headroom_phrase(model, planned, rate_rps + queue_rps)
            + _decode_backlog_phrase(decode_backlog, lead_s)
        ),
    ]
    if not model.ttft_reachable:
        reasons.append(
            f"TTFT SLO unreachable by scaling for {100 * (1 - model.prefill_feasible_share):.1f}% of prompts "
            f"(longer than {model.prefill_limit_tokens:.0f} tokens{_cached_limit_phrase(model)}, whose prefill "
            f"and KV transfer alone exceed {model.slo.ttft_seconds:g}s{_unreachable_cache_phrase(model)}); "
            "prefill sized for the rest"
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


def _decode_backlog_phrase(backlog: DecodeBacklog, lead_s: float) -> str:
    if backlog.replicas <= 0:
        return ""
    horizon = (
        f"the lead time ({lead_s:g}s)"
        if backlog.drain_seconds <= lead_s
        else f"{backlog.drain_seconds:.0f}s (their mean slack, longer than the {lead_s:g}s lead time)"
    )
    return (
        f"; {backlog.replicas} more for the {backlog.waiting:.0f} sequences waiting for a decode slot "
        f"({backlog.timely:.0f} of them and those joining until the replicas ordered serve can still meet "
        f"the TPOT SLO), which that pool would not get into one within {horizon}"
    )


def _summary(target: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp]) -> str:
    ratio = f"{target.prefill / target.decode:.2f}" if target.decode else "n/a"
    text = (
        f"decided {target.prefill} prefill + {target.decode} decode ({gpus(target, spec)} GPUs, P/D {ratio})"
    )
    if clamps:
        text += "; limited by " + ", ".join(dict.fromkeys(c.stage for c in clamps))
    return text
