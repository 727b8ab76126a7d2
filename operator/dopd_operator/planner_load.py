"""The load the planner sizes for, read from an observation: how far ahead it must look (the lead
time), the rate to provision for (the observed rate with its surge headroom, the forecast's upper
quantile, the trend extrapolated), the rate that drains a prefill backlog, the decode replicas a
backlog waiting for decode slots needs (`decode_backlog_replicas`), and the capacity model's
`Workload`, with the output lengths raised to what the decode residents imply where the window is too short
to see the long outputs finish (`resident_output_lengths`) and held while the decode pool's slots are
full (`hold_output_lengths`).
Pure; callers: `planner.plan`, `planner_corrections` (the workload a latency is judged at), the tick and
the simulator's oracle (`lead_time_seconds`).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import NamedTuple

from dopd_operator.api import DisaggregatedModelSpec, OutputLengths
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.planner_types import LoadForecast, Observation, PlannerState
from dopd_operator.prefix_curve import PrefixCacheCurve
from dopd_operator.profile import PerformanceProfile
from dopd_operator.surge import SurgeHeadroom

MIN_ARRIVAL_SCV, MAX_ARRIVAL_SCV = 0.5, 20.0
# A decode pool whose mean batch is at this share of its slot limit is full: sequences queue for its
# slots (`decode_slots_full`, `planner_corrections.update_corrections`).
FULL_BATCH_SHARE = 0.95
# Output lengths are raised to what the decode residents imply only where the P90 output at the implied
# lengths takes longer than this share of the metrics window to generate, and the P90 the window saw
# finish already takes FINISHED_LENGTHS_WINDOW_SHARE of it (`resident_output_lengths`).
RESIDENT_LENGTHS_WINDOW_SHARE = 0.5
FINISHED_LENGTHS_WINDOW_SHARE = 0.25
# A load declines, rather than dips, where its trend is below zero by this many standard errors of the
# slope a flat load shows at its burstiness (one in 40 windows of a flat load reads that by chance).
DECLINE_NOISE_MULTIPLE = 2.0
# A length's mean rises, rather than wanders, where its slope between two windows is above zero by this
# many standard errors of what two windows of the same mix differ by (`trending_lengths`).
LENGTH_TREND_NOISE_MULTIPLE = 3.0


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


class _LengthSlope(NamedTuple):
    what: str  # "prompts" or "outputs"
    field: str  # the Observation's field prefix: input_tokens or output_tokens
    slope_per_s: float
    noise_per_s: float


def _length_slopes(observation: Observation, outputs_usable: bool) -> list[_LengthSlope]:
    """The lengths whose trend and noise are known; the outputs only where `outputs_usable`."""
    found = []
    for what, field, slope, noise in (
        (
            "prompts",
            "input_tokens",
            observation.input_tokens_trend_per_s,
            observation.input_tokens_trend_noise_per_s,
        ),
        (
            "outputs",
            "output_tokens",
            observation.output_tokens_trend_per_s,
            observation.output_tokens_trend_noise_per_s,
        ),
    ):
        if slope is not None and noise is not None and (what == "prompts" or outputs_usable):
            found.append(_LengthSlope(what, field, slope, noise))
    return found


def lengths_declining(observation: Observation) -> str | None:
    """How the requests' work declines at the rate observed: the prompts' mean falling by more than
    LENGTH_TREND_NOISE_MULTIPLE times the noise two windows of one mix differ by (as `trending_lengths`
    reads a rise); None where it does not, or its trend is unknown. Not the outputs: they are measured
    as sequences finish, and after a step in the arrivals their mean moves for longer than the trend
    window that reports the step (on a steps trace the outputs read -32 tokens/min two minutes after
    the rate fell to 100 rps, the window released the replica that the surge headroom had held, and
    the next jump met 47% of its requests where it had met 99.8%). The prompts are measured as they
    arrive."""
    said = [
        f"the prompts shorten ({s.slope_per_s * 60:+.1f} tokens/min, beyond "
        f"{LENGTH_TREND_NOISE_MULTIPLE:g}x its noise of {s.noise_per_s * 60:.1f})"
        for s in _length_slopes(observation, outputs_usable=False)
        if s.slope_per_s < -LENGTH_TREND_NOISE_MULTIPLE * s.noise_per_s
    ]
    return said[0] if said else None


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


def trending_lengths(
    spec: DisaggregatedModelSpec, observation: Observation, outputs_adjusted: bool
) -> tuple[Observation, str | None]:
    """The observation with its lengths extrapolated along their rise over the lead time, and what was
    extrapolated (None: nothing). A load's work can rise at a flat rate: a tenant whose prompts are
    longer, or whose answers are, moving onto the model. The replicas ordered now serve a lead time
    later, when the requests are longer; the rate's trend guard does not see it. Only the rise beyond
    LENGTH_TREND_NOISE_MULTIPLE standard errors of what two windows of the same mix differ by counts
    (a length's mean is heavy-tailed: one long request moves it), and a falling length is sized as
    observed (the scale-down window releases what it no longer needs). The mean and the P90 are
    scaled alike. Not the outputs where `outputs_adjusted` (raised to what the residents imply, or held
    while the decode slots are full), nor where the arrivals stepped within the two windows compared
    (`Observation.arrival_level_age_seconds` is set within the trend window, which spans both): the
    finishers are not the demand's mix then (after a rise the new level's short outputs finish first;
    on the bursts trace a surge read as outputs rising 25 tokens/min), nor where the outputs outlast
    the window (`outputs_outlast_window`): the finishers trail the arrivals by more than a window, and
    their slope is that lag as much as the mix's (on a shift from code completion into a reasoning
    model's answers it bought 17-23% more GPU-hours at no attainment). The prompts are measured as
    they arrive, and stand."""
    lead_s = lead_time_seconds(spec, observation)
    outputs_usable = (
        not outputs_adjusted
        and observation.arrival_level_age_seconds is None
        and not outputs_outlast_window(spec, observation)
    )
    update: dict[str, float] = {}
    said: list[str] = []
    for length in _length_slopes(observation, outputs_usable):
        mean = getattr(observation, f"{length.field}_mean")
        rise = length.slope_per_s - LENGTH_TREND_NOISE_MULTIPLE * length.noise_per_s
        if mean is None or mean <= 0 or rise <= 0:
            continue
        factor = (mean + rise * lead_s) / mean
        update[f"{length.field}_mean"] = mean * factor
        p90 = getattr(observation, f"{length.field}_p90")
        if p90 is not None:
            update[f"{length.field}_p90"] = p90 * factor
        said.append(
            f"{length.what} {mean:.0f} -> {mean * factor:.0f} tokens (rising {length.slope_per_s * 60:.1f}/min, "
            f"{rise * 60:.1f} of it beyond {LENGTH_TREND_NOISE_MULTIPLE:g}x its noise)"
        )
    if not update:
        return observation, None
    reason = f"lengths extrapolated over the {lead_s:g}s lead time: " + "; ".join(said)
    return observation.model_copy(update=update), reason


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


def resident_output_lengths(
    spec: DisaggregatedModelSpec, observation: Observation
) -> tuple[Observation, str | None]:
    """The observation with output lengths no shorter than the decode pool's residents imply, where the
    metrics window is too short to see its long outputs finish; and why (None: the window's own).

    Output lengths are measured as sequences finish. Where an output takes longer to generate than the
    window lasts, the sequences finishing in it are not the demand's mix: from a cold start or on a
    rising load they are those that arrived late enough to be short, while the long ones are still
    decoding. On a reasoning mix (mean 2400 output tokens, P90 5000, 60-120 s at 15-25 ms a token) the
    first windows read a mean of 1020, then 1420 and 1750, and the pool was sized for less than half
    the outputs it got. The residents are what the pool holds: by Little's law, `running = rate *
    (n - 1) * gap`, so the mean output is at least `running / (rate * gap) + 1` (the rate the engines
    were given; the gap is the mean over a sequence's life, slot waits included: the per-request TPOT's
    mean where the preset reads one, else the window's inter-token gaps). A resident's time in the stage
    is its life, and on a rise the window's steps are slower than the lives before them: divided by the
    window's steps, which the workers observe as each step leaves, the reasoning trace's first minutes
    read 2230 tokens where the lives' gap reads 2360 (the demand's mean is 2400), the pool grew a
    replica behind the load at every tick of the ramp, and attainment fell from 99.6% to 98.9% on five
    seeds, 99.63% at 1.11x the oracle with the lives' gap. That bound is only as
    good as one gauge read at the tick (from tick to tick 0.90-1.13x the window's mean, P10-P90, on the
    Azure trace; 0.72-1.34x on the bursty code mix), so it is taken only where the window cannot hold
    the outputs: the P90 output at the implied lengths takes longer than RESIDENT_LENGTHS_WINDOW_SHARE
    of the window to generate, and the P90 that did finish in it already takes
    FINISHED_LENGTHS_WINDOW_SHARE of it (a window whose finishers are all short next to it has seen
    every length the load holds finish: residents beyond what they imply are then something else, a
    decode pool flooded from a prefill backlog faster than the arrivals, not a tail it could not see).
    The P90 is scaled with the mean (the shape the window measured). While the slots are full the
    residents are capped by the slots and the bound reads low: the window's lengths stand
    (`hold_output_lengths`). On a rise of outputs that outlast the window (`young_residents`, at the
    window's P90) the sequences waiting for a slot count with the residents: past their first token
    they are in the decode stage too, and the mean gap holds their waits (reasoning 99.28% -> 99.43%,
    seed 0 98.54% -> 99.03%). Not elsewhere: after a step the queue of a flood is arrivals beyond the
    pool, not outputs still decoding, and on the steps trace it read 200-token outputs as 860-2000.
    Nor is the bound read where the rate the residents arrived at is not the one read now: after a step
    in the arrivals (the rate is then read from the step on) or on a decline (`declining`). There the
    residents came at a higher rate, and the finishers read long, not short: when the reasoning trace's
    load stopped, 92 sequences still decoding at 0.16 rps read as 48,000-token outputs and ordered the
    most replicas the spec allows (5P/24D, held for the scale-down window after the load had gone).
    """
    running, mean = observation.decode_running, observation.output_tokens_mean
    rate = observation.given_rate_rps
    lives = observation.request_tpot_mean_seconds is not None
    gap_s = observation.request_tpot_mean_seconds if lives else observation.tpot_mean_seconds
    if not running or mean is None or mean <= 0 or not rate or not gap_s:
        return observation, None
    if observation.arrival_level_age_seconds is not None or declining(observation) is not None:
        return observation, None  # the residents arrived at a rate other than the one read now
    waiting = (observation.decode_queue_depth or 0.0) if young_residents(spec, observation) else 0.0
    in_stage = running + waiting
    implied = in_stage / (rate * gap_s) + 1.0
    if implied <= mean:
        return observation, None
    scale = implied / mean
    p90 = observation.output_tokens_p90
    implied_p90 = None if p90 is None else p90 * scale
    finished_longest_s = (mean if p90 is None else p90) * gap_s
    longest_s = finished_longest_s * scale
    window_s = spec.metrics.window_seconds
    if (
        longest_s <= RESIDENT_LENGTHS_WINDOW_SHARE * window_s
        or finished_longest_s <= FINISHED_LENGTHS_WINDOW_SHARE * window_s
    ):
        return observation, None
    over = "over the finished requests' lives" if lives else "in the window's gaps"
    reason = (
        f"output lengths raised to mean {implied:.0f}"
        + (f"/P90 {implied_p90:.0f}" if implied_p90 is not None else "")
        + f" tokens from the window's {mean:.0f}: {in_stage:.0f} sequences "
        + ("decode or wait for a slot" if waiting else "decode")
        + f" at {rate:.2f} rps and "
        f"{gap_s * 1000:.1f} ms a token {over} (Little's law); its P90 output takes {longest_s:.0f}s to generate, "
        f"over {RESIDENT_LENGTHS_WINDOW_SHARE:.0%} of the {window_s:g}s window (those that finished in it, "
        f"{finished_longest_s:.0f}s), so those finishing in it are the shorter ones"
    )
    observation = observation.model_copy(
        update={"output_tokens_mean": implied, "output_tokens_p90": implied_p90}
    )
    return observation, reason


def young_residents(spec: DisaggregatedModelSpec, observation: Observation) -> bool:
    """Whether the decode residents are younger than the steady state: the load rises (its trend beyond
    the slope's noise) and the P90 output (as sized for: raised to what the residents imply, or held)
    takes longer than RESIDENT_LENGTHS_WINDOW_SHARE of the metrics window to generate at the window's
    mean gap, so the window has not seen them through. Then every length measured so far reads short
    (`hold_output_lengths`), and so does the engine's step (`planner_corrections.update_corrections`)."""
    trend = observation.arrival_rate_trend_rps_per_s or 0.0
    if trend <= (observation.arrival_rate_trend_noise_rps_per_s or 0.0):
        return False
    return outputs_outlast_window(spec, observation)


def outputs_outlast_window(spec: DisaggregatedModelSpec, observation: Observation) -> bool:
    """Whether the P90 output takes longer than RESIDENT_LENGTHS_WINDOW_SHARE of the metrics window to
    generate at the window's mean gap: the window's finishers then trail the arrivals by more than it."""
    p90 = observation.output_tokens_p90 or observation.output_tokens_mean or 0.0
    gap_s = observation.tpot_mean_seconds or 0.0
    return p90 * gap_s > RESIDENT_LENGTHS_WINDOW_SHARE * spec.metrics.window_seconds


def hold_output_lengths(
    spec: DisaggregatedModelSpec,
    observation: Observation,
    state: PlannerState,
    profile: PerformanceProfile,
    now: datetime,
) -> tuple[Observation, PlannerState, str | None]:
    """The observation with the output lengths to size with, the state that remembers them, and why
    they were held (None: the window's own).

    Output lengths are measured as sequences finish (the engines' generation-token histograms, the
    router's). While the decode pool's slots are full, sequences wait to join, and the join order
    (`dopd_worker.join_order`: the oldest sequence that can still meet its TPOT SLO first) admits long
    outputs, whose deadlines are furthest, before short ones gone late: the sequences finishing
    over-represent long outputs, then, once the late short ones join, under-represent them. On the
    steps trace a 2x jump that filled the slots read the mean output as 306, 410 and 446 tokens over
    three windows where the demand's was 210, and the pool was sized for 14 replicas where 6 serve.
    So while the pool is full, and until the sequences it seated then have finished and left the window
    (`seated_while_full_seconds`: the window plus the time the P90 output takes to generate), the
    lengths last measured with free slots are sized with; with none measured yet, the window's. The
    hold had ended a tick after the slots freed: on the reasoning trace (P90 outputs of 5000 tokens,
    two minutes each) the long outputs seated at the peak then finished into the next windows, which
    read a mean of 2500-2700 tokens (P90 5800-6000) where the demand's was 2400 (P90 5000), and the
    pool grew by a quarter on the way down.

    Except where they are shorter than the window's on a rise of outputs that outlast the window
    (`young_residents`): there the sequences finishing are the shorter ones whatever the join order
    admits, and the lengths measured earlier are shorter still (the rise was younger then), so the
    longer, the window's, stands. On the reasoning trace the hold kept a mean of 2161 tokens for four
    minutes of a rise while the windows read 2300-2800, and the pool grew behind the load; that had been
    hidden while the simulator observed a sequence's wait for a slot at its finish, not when it joined.

    Nor are the lengths of a window the arrivals stepped in (within the window and the P90 output's
    generation) remembered as measured with free slots: its finishers are not the demand's mix. After
    a rise the new level's short outputs have finished and its long ones still decode: on the steps
    trace the windows at 110 rps read 202-213 tokens, the two after the jump to 190 rps read 190 (P90
    420 where the demand's is 460), and those were held when the slots filled a tick later; the pool,
    sized for outputs 10% short, was a decode replica short with every slot taken (steps 94.74% ->
    94.91%, bursts 94.75% -> 94.86%, every other trace the same to the last digit).
    """
    full = decode_slots_full(observation, profile)
    held = state.output_lengths_free_slots
    measured = observation.output_tokens_mean
    last_full = now if full else state.decode_slots_full_time
    after = state.model_copy(update={"decode_slots_full_time": last_full, "output_lengths_held_since": None})
    since_full_s = None if last_full is None else (now - last_full).total_seconds()
    seated_s = seated_while_full_seconds(spec, observation, held)
    if since_full_s is not None and since_full_s < seated_s:
        if held is None:
            return observation, after, None
        if measured is not None and measured > held.mean and young_residents(spec, observation):
            reason = (
                f"output lengths of this window kept (mean {measured:.0f}), not those last measured with "
                f"free decode slots ({held.mean:.0f}): the slots are full, but the load rises and its "
                "outputs outlast the window, so both read short of the demand's, the earlier ones more"
            )
            return observation, after, reason
        held_since = state.output_lengths_held_since or now
        after = after.model_copy(update={"output_lengths_held_since": held_since})
        held_s = (now - held_since).total_seconds()
        lead_s = lead_time_seconds(spec, observation)
        if held_s > lead_s and measured is not None and measured > held.mean:
            reason = (
                f"output lengths of this window used (mean {measured:.0f}), no longer those held for "
                f"{held_s:.0f}s ({held.mean:.0f}): the decode slots are still full a {lead_s:g}s lead "
                "time after the hold began, when the replicas ordered for the held lengths serve, so "
                "those were short of the demand's"
            )
            return observation, after, reason
        reason = (
            f"output lengths held at mean {held.mean:.0f}"
            + (f"/P90 {held.p90:.0f}" if held.p90 is not None else "")
            + " tokens, as last measured with free decode slots: the slots are full"
            + (
                ""
                if full
                else f" (they were {since_full_s:.0f}s ago, and what they seated finishes for "
                f"{seated_s:.0f}s: the window and the P90 output's generation)"
            )
            + ", and the sequences finishing are those the join order admitted, not the demand's mix"
            + (f" (this window's mean {measured:.0f})" if measured is not None else "")
        )
        observation = observation.model_copy(
            update={"output_tokens_mean": held.mean, "output_tokens_p90": held.p90}
        )
        return observation, after, reason
    # A step in the arrivals within the window and the P90 output's generation: the finishers are not
    # the steady mix (after a rise the new level's long outputs still decode), so not remembered.
    age_s = observation.arrival_level_age_seconds
    stepped = age_s is not None and age_s < seated_s
    if measured is not None and not stepped:
        after = after.model_copy(
            update={
                "output_lengths_free_slots": OutputLengths(mean=measured, p90=observation.output_tokens_p90)
            }
        )
    return observation, after, None


def seated_while_full_seconds(
    spec: DisaggregatedModelSpec, observation: Observation, held: OutputLengths | None
) -> float:
    """How long after the decode slots were last full the sequences finishing in the metrics window may
    still be those the join order seated then: the window, plus the time the P90 output (as last
    measured with free slots, else the window's) takes to generate at the window's mean gap (slot waits
    included; unknown: the window alone)."""
    if held is not None:
        tokens = held.p90 if held.p90 is not None else held.mean
    elif observation.output_tokens_p90 is not None:
        tokens = observation.output_tokens_p90
    else:
        tokens = observation.output_tokens_mean or 0.0
    gap_s = observation.tpot_mean_seconds or 0.0
    return spec.metrics.window_seconds + tokens * gap_s
