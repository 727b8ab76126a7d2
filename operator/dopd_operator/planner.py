"""The planner: one pure function from (spec, observation, forecast, state, now) to a Decision.

No I/O, no clock reads, no globals (the Kopf timer and the simulator both call it; the HPA keeps
`replica_calculator.go` apart from `horizontal.go` the same way). Steps:

1. Paused or metrics unknown: hold (or fall back), and say so. Unknown is never zero.
2. Online correction: observed/predicted TTFT and TPOT at the current layout (bounded, smoothed)
   scale the profile, so a wrong profile heals (as Dynamo's SLA planner does).
3. Load: the larger of the observed rate and the forecast's upper quantile at the lead time, plus the
   rate needed to drain the prefill queue within one interval.
4. Capacity model (`capacity.py`): raw N_P, N_D.
5. Safety layer (`safety.py`), every change recorded as a Clamp.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dopd_operator.api import DisaggregatedModelSpec, MetricsUnknownPolicy, Recommendation, ScalingMode
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
    hold_unschedulable,
    limit_steps,
    stabilize,
)

# Corrections below 1 shrink the modelled service time, i.e. the pool: learned at light load they
# under-provision the next burst, so they are bounded closer to 1 than corrections upward.
CORRECTION_BOUNDS = (0.8, 2.0)
MIN_ARRIVAL_SCV, MAX_ARRIVAL_SCV = 0.5, 20.0
CORRECTION_SMOOTHING = 0.5
MAX_RECOMMENDATIONS = 200


def plan(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    forecast: LoadForecast | None,
    state: PlannerState,
    now: datetime,
) -> Decision:
    """Decide prefill and decode replicas for one tick."""
    current = Layout(observation.prefill.current, observation.decode.current)
    if spec.scaling.mode is ScalingMode.PAUSED:
        return _hold(
            spec, observation, state, current, ["scaling.mode is Paused: replicas are left as they are"], True
        )
    if not observation.load_known:
        return _metrics_unknown(spec, observation, state, current)

    base_profile = resolve_profile(spec.profile)
    state = _update_corrections(spec, observation, state, base_profile)
    profile = base_profile.scaled(state.prefill_correction, state.decode_correction)
    rate_rps, load_reason = _provisioned_rate(spec, observation, forecast)
    workload = _workload(observation, forecast, rate_rps)
    model = CapacityModel(profile, spec.slo, workload)
    queue_rps = (observation.prefill_queue_depth or 0.0) / spec.scaling.interval_seconds

    def raw_at(rate: float) -> Layout:
        return Layout(model.prefill_replicas(rate + queue_rps), model.decode_replicas(rate))

    def shaped_at(rate: float) -> Layout:
        return apply_ratio_band(clamp_bounds(raw_at(rate), spec, None), spec, None)

    raw = raw_at(rate_rps)
    reasons = [load_reason, *_capacity_reasons(model, raw, rate_rps, queue_rps, state)]
    clamps: list[Clamp] = []
    shaped = apply_ratio_band(clamp_bounds(raw, spec, clamps), spec, clamps)
    target, sustained_rps = fit_budget(shaped, shaped_at, rate_rps, spec, clamps)
    target, blocked = hold_unschedulable(target, current, observation, clamps)

    # The window remembers what was recommended, not what smoothing made of it (as the HPA does).
    history = [r for r in state.recommendations if r.time >= now - _longest_window(spec)]
    recommendation = Recommendation(time=now, prefill=target.prefill, decode=target.decode)
    target = stabilize(target, current, history, spec, now, clamps)
    history.append(recommendation)
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


def _provisioned_rate(
    spec: DisaggregatedModelSpec, observation: Observation, forecast: LoadForecast | None
) -> tuple[float, str]:
    """The rate to provision for: the highest of the observed rate, the forecast's upper quantile at
    the lead time, and the observed rate extrapolated along its current rise over that lead time.

    The trend guard covers the moments a forecaster is least sure of, such as the turn of a daily
    cycle, where a backtest still prefers the last value: a new replica takes `startup` seconds, so a
    rise that is already under way must be provisioned for now, whatever the forecaster picked.
    """
    observed = observation.arrival_rate_rps or 0.0
    lead_seconds = lead_time_seconds(spec, observation)
    trend = max(observation.arrival_rate_trend_rps_per_s or 0.0, 0.0)
    extrapolated = observed + trend * lead_seconds
    candidates = [(observed, f"load {observed:.2f} rps observed")]
    if forecast is not None:
        candidates.append(
            (
                forecast.arrival_rate_rps_upper,
                f"load {forecast.arrival_rate_rps_upper:.2f} rps: forecast P{forecast.quantile * 100:g} at "
                f"+{forecast.horizon_seconds:g}s by {forecast.model} (mean {forecast.arrival_rate_rps_mean:.2f})",
            )
        )
    if trend > 0:
        candidates.append(
            (
                extrapolated,
                f"load {extrapolated:.2f} rps: rising {trend * 60:.1f} rps/min, extrapolated over the "
                f"{lead_seconds:g}s lead time",
            )
        )
    rate, reason = max(candidates, key=lambda c: c[0])
    if rate > observed:
        reason += f"; {observed:.2f} rps now"
    if forecast is None:
        reason += "; no forecast"
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
    )


def _update_corrections(
    spec: DisaggregatedModelSpec, observation: Observation, state: PlannerState, base: PerformanceProfile
) -> PlannerState:
    """Move the correction factors toward observed/predicted latency at the current layout.

    Like is compared with like: the prediction is made at the percentile the observation was measured
    at (`Observation.latency_percentile`), not at the provisioning percentile. Dividing an observed P90
    by a predicted P99 would read a correct profile as too slow-to-fast and drive the factor to its floor.
    """
    rate = observation.arrival_rate_rps or 0.0
    model = CapacityModel(base, spec.slo, _workload(observation, None, rate))
    prefill_factor, decode_factor = state.prefill_correction, state.decode_correction
    low, high = CORRECTION_BOUNDS
    quantile = (observation.latency_percentile or 0.0) / 100.0
    if observation.ttft_seconds is not None and observation.prefill.ready > 0 and rate > 0:
        predicted = model.ttft_quantile_seconds(observation.prefill.ready, rate, quantile)
        if 0 < predicted < float("inf"):
            wanted = min(max(observation.ttft_seconds / predicted, low), high)
            prefill_factor += CORRECTION_SMOOTHING * (wanted - prefill_factor)
    if observation.tpot_seconds is not None and observation.decode_running and observation.decode.ready > 0:
        mean_batch = observation.decode_running / observation.decode.ready
        predicted = model.tpot_quantile_seconds(mean_batch, quantile)
        if predicted > 0:
            wanted = min(max(observation.tpot_seconds / predicted, low), high)
            decode_factor += CORRECTION_SMOOTHING * (wanted - decode_factor)
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
    missing = [
        name
        for name, value in (
            ("arrival rate", observation.arrival_rate_rps),
            ("prompt length", observation.input_tokens_mean),
            ("output length", observation.output_tokens_mean),
        )
        if value is None
    ]
    why = "; ".join(observation.problems) or f"unknown: {', '.join(missing)}"
    if spec.scaling.on_metrics_unknown is MetricsUnknownPolicy.FALLBACK and spec.scaling.fallback_replicas:
        fallback = Layout(spec.scaling.fallback_replicas.prefill, spec.scaling.fallback_replicas.decode)
        reason = f"metrics unknown ({why}): moving to fallbackReplicas {fallback.prefill}P/{fallback.decode}D"
        return _hold(spec, observation, state, fallback, [reason], False, "MetricsUnknown")
    reason = f"metrics unknown ({why}): holding {current.prefill}P/{current.decode}D (unknown is not zero)"
    return _hold(spec, observation, state, current, [reason], False, "MetricsUnknown")


# ---------------------------------------------------------------------------------------- reasons


def _capacity_reasons(
    model: CapacityModel, raw: Layout, rate_rps: float, queue_rps: float, state: PlannerState
) -> list[str]:
    w = model.workload
    reasons = [
        (
            f"prefill: E[T_p] {model.prefill_service_seconds_mean * 1000:.1f} ms over prompts mean "
            f"{w.input_tokens_mean:.0f}/p90 {w.input_tokens_p90 or w.input_tokens_mean:.0f} tokens "
            f"({model.prefill_rps_per_replica:.2f} rps per replica); {raw.prefill} replica(s) keep TTFT "
            f"P{model.percentile_q * 100:g} within {model.slo.ttft_seconds:g}s"
            + (f" with bursty arrivals (SCV {w.arrival_scv:.1f})" if w.arrival_scv > 1.5 else "")
            + (f" (incl. {queue_rps:.2f} rps to drain the queue)" if queue_rps > 0 else "")
        ),
        (
            f"decode: B*={model.decode_batch_size} (limited by {model.decode_batch_limited_by}), step "
            f"{model.decode_step_seconds * 1000:.1f} ms, {model.decode_rps_per_replica:.2f} rps per replica; "
            f"{raw.decode} replica(s) for {model.decode_concurrency(rate_rps):.0f} concurrent sequences"
        ),
    ]
    if not model.ttft_reachable:
        reasons.append(
            f"TTFT SLO unreachable by scaling: a P{model.percentile_q * 100:g} prompt alone takes "
            f"{model.prefill_tail_seconds:.2f}s > {model.slo.ttft_seconds:g}s; prefill sized so almost no request waits"
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


def _summary(target: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp]) -> str:
    ratio = f"{target.prefill / target.decode:.2f}" if target.decode else "n/a"
    text = (
        f"decided {target.prefill} prefill + {target.decode} decode ({gpus(target, spec)} GPUs, P/D {ratio})"
    )
    if clamps:
        text += "; limited by " + ", ".join(dict.fromkeys(c.stage for c in clamps))
    return text
