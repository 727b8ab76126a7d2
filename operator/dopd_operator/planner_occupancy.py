"""The decode pool's occupancy trend: the KV cache in use, read at each tick and extrapolated over the
lead time where it rises beyond its noise, as a floor under the decode pool's size.

The capacity model sizes decode for the lengths the window's finishers report. When the mix moves to
answers longer than the window (a tenant moving onto a reasoning model), the finishers are still the
old mix's for minutes while the new answers fill the KV cache: on a conversation trace shifting to a
reasoning model's answers at a bursty 20 rps, one decode replica's KV read 22%, 45%, 56%, 81% and 99%
at ticks 30 s apart, and the second replica, ordered when the lengths caught up, served two minutes
after the cache was full. The KV in use is what the lengths have not yet said.

- The reading is the KV in use in replicas' worth (the mean KV usage times the Ready decode replicas),
  so a replica joining does not read as a fall. The last `OCCUPANCY_TREND_TICKS` ticks' readings are
  kept in the planner's state (`status.planner.decodeKvInUse`); a tick whose KV usage is unknown clears
  them, as a gap in the ticks drops the readings before it.
- A pool whose KV is full cannot show a rise in it: the excess waits for a slot. Where the queue for a
  slot grew since the reading before, the pool admitted the arrivals less that growth, and the reading
  is the KV in use times the arrivals over the admissions: the KV the pool would hold were it
  admitting what arrives (`saturated_demand`; at most `SATURATED_DEMAND_MAX_FACTOR` times what it
  holds). On a conversation trace moving to a reasoning model's answers at 30 rps (Poisson), the pool
  ran KV-full from minute 14 to 20 with its queue growing from 1,400 to 2,500 sequences, and the KV
  in use, pinned at 99% of two to seven replicas, read no rise; with the queue's growth counted the
  pool grows with the demand (seeds 3-5: 96.5-98.6% -> 97.6-98.9%).
- The trend is their least-squares slope and its standard error (from the fit's residuals). Where the
  slope is above its standard error, the KV in use is projected over the lead time at the slope less
  its error, and the decode pool is at least the replicas that hold that at `FULL_BATCH_SHARE` of their
  KV (`decode_occupancy_floor`). It only raises: a falling or flat occupancy leaves the sizing alone.
- It covers what the arrival rate does not explain: not after a step in the arrivals, nor while they
  rise beyond their noise (the trend guard extrapolates the rate, and the pools are sized for it), nor
  while prompts back up at prefill (the decode pool's input then runs above the arrivals).

Pure; caller: `planner.plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from dopd_operator.api import DisaggregatedModelSpec, KvInUse
from dopd_operator.metrics.estimators import least_squares_slope
from dopd_operator.planner_load import FULL_BATCH_SHARE, arrivals_rising, prefill_backlogged
from dopd_operator.planner_types import Observation, PlannerState

# Readings fitted: this tick's and the three before it (three intervals, 90 s at the default 30 s).
OCCUPANCY_TREND_TICKS = 4
MIN_TREND_READINGS = 3  # a slope and a standard error need a residual degree of freedom
# A queue growing nearly as fast as the arrivals says the pool admits next to nothing, not that it needs
# unboundedly many replicas: the demand read is at most this many times the KV in use (the per-decision
# step limits bound the decision harder still).
SATURATED_DEMAND_MAX_FACTOR = 4.0


@dataclass(frozen=True)
class OccupancyTrend:
    """The decode KV in use now (replicas' worth) and its least-squares slope and standard error."""

    in_use_replicas: float
    slope_replicas_per_s: float
    noise_replicas_per_s: float
    queue_grew: bool = False  # the last reading counted a growing queue for a slot (`saturated_demand`)


def record_kv_in_use(
    spec: DisaggregatedModelSpec, observation: Observation, state: PlannerState, now: datetime
) -> PlannerState:
    """Keep this tick's decode KV in use with the readings of the ticks before it that are still within
    `OCCUPANCY_TREND_TICKS` intervals; an unknown KV usage (or no Ready decode replica) clears them."""
    usage, ready = observation.decode_kv_usage, observation.decode.ready
    if usage is None or ready <= 0:
        return state.model_copy(update={"decode_kv_in_use": []}) if state.decode_kv_in_use else state
    # Readings older than the ticks kept span (with half an interval's slack for a late timer) are from
    # before a gap: a hold, a paused model, an operator that was down.
    oldest_s = (OCCUPANCY_TREND_TICKS - 0.5) * spec.scaling.interval_seconds
    kept = [r for r in state.decode_kv_in_use if 0 < (now - r.time).total_seconds() <= oldest_s]
    waiting = observation.decode_queue_depth
    in_use = saturated_demand(
        usage * ready, observation.given_rate_rps, waiting, kept[-1] if kept else None, now
    )
    kept.append(KvInUse(time=now, replicas=in_use, waiting=waiting))
    return state.model_copy(update={"decode_kv_in_use": kept[-OCCUPANCY_TREND_TICKS:]})


def saturated_demand(
    in_use_replicas: float, rate_rps: float, waiting: float | None, previous: KvInUse | None, now: datetime
) -> float:
    """The KV in use, scaled by the arrivals over the admissions where the queue for a decode slot grew
    since `previous` (module docstring): the pool admitted `rate_rps` less the queue's growth. The KV in
    use as read where the queue did not grow, or either count is unknown."""
    growth_rps = queue_growth_rps(previous, waiting, now)
    if growth_rps <= 0 or rate_rps <= 0:
        return in_use_replicas
    admitted_rps = max(rate_rps - growth_rps, rate_rps / SATURATED_DEMAND_MAX_FACTOR)
    return in_use_replicas * rate_rps / admitted_rps


def queue_growth_rps(previous: KvInUse | None, waiting: float | None, now: datetime) -> float:
    """Sequences a second the queue for a decode slot grew by since `previous`; 0 where either count is
    unknown (or no time passed)."""
    if waiting is None or previous is None or previous.waiting is None:
        return 0.0
    elapsed_s = (now - previous.time).total_seconds()
    return (waiting - previous.waiting) / elapsed_s if elapsed_s > 0 else 0.0


def occupancy_trend(readings: list[KvInUse]) -> OccupancyTrend | None:
    """The least-squares line through the readings (oldest first); None with fewer than
    `MIN_TREND_READINGS`."""
    if len(readings) < MIN_TREND_READINGS:
        return None
    origin = readings[0].time
    times_s = np.array([(r.time - origin).total_seconds() for r in readings])
    values = np.array([r.replicas for r in readings])
    slope = least_squares_slope(times_s, values)
    if math.isnan(slope):  # every reading at one time
        return None
    centred_s = times_s - np.mean(times_s)
    residuals = values - np.mean(values) - slope * centred_s
    noise = math.sqrt(float(residuals @ residuals) / (len(readings) - 2) / float(centred_s @ centred_s))
    grew = queue_growth_rps(readings[-2], readings[-1].waiting, readings[-1].time) > 0
    return OccupancyTrend(float(values[-1]), slope, noise, grew)


def decode_occupancy_floor(
    spec: DisaggregatedModelSpec, observation: Observation, trend: OccupancyTrend | None, lead_s: float
) -> tuple[int, str | None]:
    """The fewest decode replicas that hold the KV in use a lead time ahead at `FULL_BATCH_SHARE` each,
    where it rises beyond its noise, and why; (0, None) otherwise, and where the arrivals explain the rise.

    After a step in the arrivals (`Observation.arrival_level_age_seconds` set) the KV rises to the new
    level within an answer's life and stays: the readings across the step fit a slope that extrapolates
    a jump, and the new rate is sized for already. While the arrivals rise beyond their noise the trend
    guard extrapolates them. While prompts back up at prefill (more waiting than arrive in one TTFT
    objective: a cold start, a burst) the decode pool's input runs above the arrivals as prefill catches
    up, and new decode replicas fill from the queue as they join; the KV in use rises with those, not
    with the work a request brings. Read there, the floor had ordered 15 decode replicas at the onset of
    a 2x burst for a pool the burst's rate sizes at 7 (`bursts`, seed 0), and 14-16 in the third minute
    of a cold start where 5 serve (Azure, a profile x1.3 slow: 9% more GPU-hours)."""
    if (
        observation.arrival_level_age_seconds is not None
        or arrivals_rising(observation)
        or prefill_backlogged(spec, observation)
    ):
        return 0, None
    if trend is None or trend.slope_replicas_per_s <= trend.noise_replicas_per_s:
        return 0, None
    rise = trend.slope_replicas_per_s - trend.noise_replicas_per_s
    projected = trend.in_use_replicas + rise * lead_s
    replicas = max(1, math.ceil(projected / FULL_BATCH_SHARE - 1e-9))
    queue = " (the queue for a slot growing: read as what the pool would hold admitting the arrivals)"
    reason = (
        f"decode KV in use rising {trend.slope_replicas_per_s * 60:.2f} replicas' worth a minute "
        f"(noise {trend.noise_replicas_per_s * 60:.2f}): {trend.in_use_replicas:.2f} now"
        f"{queue if trend.queue_grew else ''}, "
        f"{projected:.2f} in {lead_s:.0f}s at the rise beyond the noise: at least {replicas} decode "
        f"replica(s) at {FULL_BATCH_SHARE:.0%} of their KV"
    )
    return replicas, reason
