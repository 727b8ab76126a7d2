"""The online corrections: how much slower or faster than its profile each engine runs, learned from the
latencies observed at the current layout, so a wrong profile heals (as Dynamo's SLA planner does). Each
factor scales the profile the planner sizes with; each holds where the window's latencies do not
describe the engine at the current layout (`update_corrections` says when). Pure; caller:
`planner.plan`, which records each role's Ready count first (`track_ready`).
"""

from __future__ import annotations

from datetime import datetime

from dopd_operator.api import DisaggregatedModelSpec, ReadySince
from dopd_operator.capacity import CapacityModel
from dopd_operator.planner_lengths import young_residents
from dopd_operator.planner_load import FULL_BATCH_SHARE, observed_workload, prefill_backlogged, stepped_s
from dopd_operator.planner_types import Observation, PlannerState
from dopd_operator.profile import PerformanceProfile

# A correction explains an engine up to 2x slower or 2x faster than its profile (symmetric in ratio). The
# floor was 0.8 once, from the worry that a factor below 1 underestimates a pool near saturation; but the
# prefill factor is solved on the model (not a latency ratio), pools keep SERVICE_TIME_HEADROOM, and the
# model's own conservatism (a right profile reads about 0.8 on the Azure trace) sat at that floor, so a
# profile 30% too slow kept 1.2-1.3x the GPUs for good. Measured in docs/benchmarks/sim.md ("profile x1.3").
CORRECTION_BOUNDS = (0.5, 2.0)
CORRECTION_SMOOTHING = 0.5
# The prefill factor learns only while the router sheds at most this share of the arrivals. Above it the
# TTFT is admission's doing (it admits what it predicts will meet the SLO, the short prompts first), not
# the engine's: neither the demand nor the served rate at the demand's prompt mix explains it.
MAX_SHED_SHARE_TO_LEARN = 0.02


def track_ready(
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


def update_corrections(
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
    the percentile and the attainment only say whether the SLO is missed. The mean is the engine's step
    (`Observation.decode_step_mean_seconds`, the sequences' waits for a slot left out), except while
    every slot is taken and the SLO is missed: then the waits count (`tpot_mean_seconds`), as a pool
    too small now.

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
    metrics window (`unsettled`, from `track_ready`): a decode pool that has just grown reads the slot
    waits of the smaller pool before it, and moves toward the bound only if its batches are still full
    (FULL_BATCH_SHARE of the slots: it is too small now, whatever the window saw). Both hold while the
    arrival rate stepped to its level within the metrics window (`stepped_s`: the window's latencies
    are the old level's, the running count and queue the new one's). Nor does
    the prefill factor learn from a TTFT percentile that no pool size reaches (the prompts there take
    longer than the SLO alone: `prefill_feasible_share` below it): that percentile is the longest prompts'
    own prefill time, where a prefix cache saves most (a long prompt is mostly a cached conversation), and
    a factor fitted to it misjudges the prompts that can meet the SLO, which attainment is made of.
    On a rising load whose P90 output takes longer than half the window to generate, the decode factor
    rises but does not fall (`planner_lengths.young_residents`): the window has not seen its residents through, and
    their contexts are shorter than the steady state's.
    """
    rate = observation.arrival_rate_rps or 0.0
    # The load stepped within the window: its latencies mix two loads, the one measured at the tick
    # (running sequences, queue) is the new one's.
    if stepped_s(spec, observation) is not None:
        return state
    # A backlog whose prompts are served late: the latencies are the backlog's. (A router with a dispatch
    # deadline serves the timely prompts first and keeps the late ones queued: there the first tokens
    # of the window still tell the engine's speed.)
    served_late = observation.ttft_seconds is None or observation.ttft_seconds > spec.slo.ttft_seconds
    backlog = prefill_backlogged(spec, observation)
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
    model = CapacityModel(base, spec.slo, observed_workload(observation, observation.given_rate_rps))
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
            observation.prefill.ready,
            served,
            quantile,
            observation.ttft_seconds,
            CORRECTION_BOUNDS,
            observation.ttft_includes_kv_transfer,
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
        observation.decode_step_mean_seconds is not None
        and observation.tpot_seconds is not None
        and observation.decode_running
        and observation.decode.ready > 0
    ):
        mean_batch = observation.decode_running / observation.decode.ready
        # The mean, not the percentile: the histogram's sum over its count is exact, while a percentile
        # interpolated within a bucket 20-25% wide reads up to 17% high just past a bucket's lower bound
        # (10 ms, 20 ms), and a factor fitted to it swings with the batch across that bound.
        predicted = model.tpot_mean_seconds(mean_batch)
        # Missing the SLO: the percentile past it, or fewer sequences within it than the target.
        missed = observation.tpot_seconds > spec.slo.tpot_seconds or (
            observation.tpot_attainment is not None
            and observation.tpot_attainment < spec.slo.attainment_target
        )
        # Every slot taken and the SLO missed: the pool is too small now, whatever the window saw.
        too_small = mean_batch >= FULL_BATCH_SHARE * model.decode_batch_size and missed
        # The engine's step, its slot waits left out: a wait is a pool short of slots (the decode backlog
        # sizes it), not a slow engine. Only while every slot is taken and the SLO missed do the waits
        # count (the gap users see), as a pool too small now. Counted in any window, the waits of a
        # queue seated by a grown pool, observed as its sequences join (after the pool grew), read as a
        # 1.5x slower engine on the reasoning trace, and the pool grew to 31 decode replicas where 18
        # serve.
        mean_s = observation.decode_step_mean_seconds
        if too_small and observation.tpot_mean_seconds is not None:
            mean_s = observation.tpot_mean_seconds
        ratio = mean_s / predicted if predicted > 0 else 0.0
        if "decode" in unsettled and not too_small:
            pass  # the window's TPOT is the old pool's (its slot waits included), not this one's
        elif low <= ratio <= high and "decode" not in unsettled:
            if young_residents(spec, observation):
                # The residents' contexts grow over lives longer than the window: on a rising load they
                # are younger than the steady state the model predicts at, and their steps faster. On
                # the reasoning trace a right profile's factor sank to 0.81 in the first two minutes and
                # the pool grew behind the load from there. Such a window can say the engine is slower,
                # never that it is faster. (Not on a flat or falling load: held there too, a factor
                # raised at a cold start kept 15-25% more GPU-hours for good.)
                ratio = max(ratio, decode_factor)
            decode_factor += CORRECTION_SMOOTHING * (ratio - decode_factor)
        elif ratio > high and missed:
            # Past what any factor explains and missing the SLO: sequences wait for a slot in a pool too
            # small for them, which no ratio measures. Move toward the bound (a bigger pool either way);
            # the factor relearns the engine's speed once the TPOT is back within it.
            decode_factor += CORRECTION_SMOOTHING * (high - decode_factor)
    return state.model_copy(
        update={"prefill_correction": round(prefill_factor, 4), "decode_correction": round(decode_factor, 4)}
    )
