"""The lengths the planner sizes with, read from an observation: the output lengths raised to what the
decode residents imply where the window is too short to see the long outputs finish
(`resident_output_lengths`), held while the decode pool's slots are full and after a step in the
arrivals (`hold_output_lengths`), and both lengths extrapolated along their rise over the lead time
(`trending_lengths`), the outputs raised to what the residents' progress implies where the mix moves to
longer answers (`seated_output_lengths`); and whether the prompts shorten (`lengths_declining`, for the
scale-down window).
Pure; callers: `planner.plan`, `planner_corrections`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from dopd_operator.api import DisaggregatedModelSpec, OutputLengths
from dopd_operator.lengths import MAX_P90_OVER_MEAN, LengthDistribution, length_bias
from dopd_operator.planner_load import declining, decode_slots_full, lead_time_seconds
from dopd_operator.planner_types import Observation, PlannerState
from dopd_operator.profile import PerformanceProfile
from dopd_operator.queueing import highest_fitting

# Output lengths are raised to what the decode residents imply only where the P90 output at the implied
# lengths takes longer than this share of the metrics window to generate, and the P90 the window saw
# finish already takes FINISHED_LENGTHS_WINDOW_SHARE of it (`resident_output_lengths`).
RESIDENT_LENGTHS_WINDOW_SHARE = 0.5
FINISHED_LENGTHS_WINDOW_SHARE = 0.25
# The tokens the decode residents have generated read longer outputs than the window's only where they
# are above what the window's lengths imply by this many standard errors of a mean over that many
# residents, and by this share of it (`seated_output_lengths`). Over hundreds of residents the error is
# a few tokens, while steady mixes read up to 1.6x the gamma fitted to their mean and P90 (the Azure
# and code answers' tails are heavier than a gamma's): at 1.3x the rule fired on most ticks of every
# steady trace.
RESIDENT_GENERATED_NOISE_MULTIPLE = 3.0
RESIDENT_GENERATED_MARGIN = 0.75
# A length's mean rises, rather than wanders, where its slope between two windows is above zero by this
# many standard errors of what two windows of the same mix differ by (`trending_lengths`).
LENGTH_TREND_NOISE_MULTIPLE = 3.0


def lengths_declining(observation: Observation) -> str | None:
    """How the requests' work declines at the rate observed: the prompts' mean falling by more than
    LENGTH_TREND_NOISE_MULTIPLE times the noise two windows of one mix differ by (as `trending_lengths`
    reads a rise); None where it does not, or its trend is unknown. Not the outputs: they are measured
    as sequences finish, and after a step in the arrivals their mean moves for longer than the trend
    window that reports the step (on a steps trace the outputs read -32 tokens/min two minutes after
    the rate fell to 100 rps, the window released the replica that the surge headroom had held, and
    the next jump met 47% of its requests where it had met 99.8%). The prompts are measured as they
    arrive."""
    slope, noise = observation.input_tokens_trend_per_s, observation.input_tokens_trend_noise_per_s
    if slope is None or noise is None or slope >= -LENGTH_TREND_NOISE_MULTIPLE * noise:
        return None
    return (
        f"the prompts shorten ({slope * 60:+.1f} tokens/min, beyond {LENGTH_TREND_NOISE_MULTIPLE:g}x its "
        f"noise of {noise * 60:.1f})"
    )


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
            observation.output_tokens_trend_per_s if outputs_usable else None,
            observation.output_tokens_trend_noise_per_s,
        ),
    ):
        mean = getattr(observation, f"{field}_mean")
        if slope is None or noise is None or mean is None or mean <= 0:
            continue
        rise = slope - LENGTH_TREND_NOISE_MULTIPLE * noise
        if rise <= 0:
            continue
        ahead = mean + rise * lead_s
        update[f"{field}_mean"] = ahead
        p90 = getattr(observation, f"{field}_p90")
        if p90 is not None:
            update[f"{field}_p90"] = p90 * ahead / mean
        said.append(
            f"{what} {mean:.0f} -> {ahead:.0f} tokens (rising {slope * 60:.1f}/min, "
            f"{rise * 60:.1f} of it beyond {LENGTH_TREND_NOISE_MULTIPLE:g}x its noise)"
        )
    if not update:
        return observation, None
    reason = f"lengths extrapolated over the {lead_s:g}s lead time: " + "; ".join(said)
    return observation.model_copy(update=update), reason


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
    Where more wait than run (a KV-full pool behind a backlog of late sequences, whose waits the finished
    lives do not hold yet) the count overshoots: on a conversation trace moving to a reasoning model's
    answers, 2,314 waiting beside 507 running read 4,587-token outputs where about 1,150 arrived. Left
    so: from a cold start the same overshoot is what grows a pool that a wrong profile undersized
    (docs/benchmarks/sim-history.md), and the KV floor, reading the growing queue
    (`planner_occupancy.saturated_demand`), now grows such a pool earlier (on that trace the overshoot
    peaks at 14 decode replicas, where it reached 56).
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
    if residents_of_another_rate(observation):
        return observation, None
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


def residents_of_another_rate(observation: Observation) -> bool:
    """Whether the decode residents arrived at a rate other than the one read now: after a step in the
    arrivals (the rate is then read from the step on) or on a decline (`declining`). What they hold
    then says nothing of the load's lengths at this rate (on a decline the short ones have left first)."""
    return observation.arrival_level_age_seconds is not None or declining(observation) is not None


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
    94.91%, bursts 94.75% -> 94.86%, every other trace the same to the last digit). Nor are they sized
    with: for as long, the lengths last measured before the step are. After a rise the new level's
    short outputs finish first and its long ones later, so the windows read a mean below the demand's,
    then a P90 above it: at a flat 20 rps after a step from 8 (a reasoning model's answers, P90 5000
    tokens) they read a P90 of 3,979 to 6,443 tokens over three minutes, the decode sizing moved
    between 13 and 21 replicas, and the scale-down window held the highest.
    """
    full = decode_slots_full(observation, profile)
    held = state.output_lengths_free_slots
    measured = observation.output_tokens_mean
    last_full = now if full else state.decode_slots_full_time
    seated_s = seated_while_full_seconds(spec, observation, held)
    step_time = arrivals_step_time(observation, state, now, seated_s)
    after = state.model_copy(
        update={
            "decode_slots_full_time": last_full,
            "output_lengths_held_since": None,
            "arrivals_stepped_time": step_time,
        }
    )
    since_full_s = None if last_full is None else (now - last_full).total_seconds()
    if since_full_s is not None and since_full_s < seated_s:
        if held is None:
            return observation, after, None
        # The hold's clock runs from the tick it first applied while the slots stayed full, whichever
        # lengths a tick then sized with: restarted by a tick that kept the window's, it had held the
        # old lengths for another lead time with every slot still taken.
        held_since = state.output_lengths_held_since or now
        after = after.model_copy(update={"output_lengths_held_since": held_since})
        if measured is not None and measured > held.mean and young_residents(spec, observation):
            reason = (
                f"output lengths of this window kept (mean {measured:.0f}), not those last measured with "
                f"free decode slots ({held.mean:.0f}): the slots are full, but the load rises and its "
                "outputs outlast the window, so both read short of the demand's, the earlier ones more"
            )
            return observation, after, reason
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
        observation, held_phrase = _sized_with(observation, held)
        reason = (
            held_phrase
            + ", as last measured with free decode slots: the slots are full"
            + (
                ""
                if full
                else f" (they were {since_full_s:.0f}s ago, and what they seated finishes for "
                f"{seated_s:.0f}s: the window and the P90 output's generation)"
            )
            + ", and the sequences finishing are those the join order admitted, not the demand's mix"
            + (f" (this window's mean {measured:.0f})" if measured is not None else "")
        )
        return observation, after, reason
    # A step in the arrivals within the window and the P90 output's generation: the finishers are not
    # the steady mix (after a rise the new level's long outputs still decode), so neither remembered nor
    # sized with: the lengths measured before the step are (the docstring's last paragraph).
    stepped = step_time is not None  # within `seated_s` (`arrivals_step_time`)
    if step_time is not None and held is not None and measured is not None:
        window_p90 = observation.output_tokens_p90
        observation, held_phrase = _sized_with(observation, held)
        reason = (
            held_phrase
            + f", as last measured before the arrivals stepped {(now - step_time).total_seconds():.0f}s "
            "ago: until what arrived "
            f"since has finished and left the window ({seated_s:.0f}s: the window and the P90 output's "
            f"generation), the sequences finishing are those the step sorted (after a rise the new level's "
            "short answers first, its long ones later), not the demand's mix "
            f"(this window's mean {measured:.0f}"
            + (f"/P90 {window_p90:.0f}" if window_p90 is not None else "")
            + ")"
        )
        return observation, after, reason
    if measured is not None and not stepped:
        after = after.model_copy(
            update={
                "output_lengths_free_slots": OutputLengths(mean=measured, p90=observation.output_tokens_p90)
            }
        )
    return observation, after, None


def _sized_with(observation: Observation, held: OutputLengths) -> tuple[Observation, str]:
    """The observation with the held output lengths in place of the window's, and the reason's opening
    naming them."""
    phrase = (
        f"output lengths held at mean {held.mean:.0f}"
        + (f"/P90 {held.p90:.0f}" if held.p90 is not None else "")
        + " tokens"
    )
    update = {"output_tokens_mean": held.mean, "output_tokens_p90": held.p90}
    return observation.model_copy(update=update), phrase


def arrivals_step_time(
    observation: Observation, state: PlannerState, now: datetime, seated_s: float
) -> datetime | None:
    """When the arrivals last stepped to a new level, while what arrived since may still be finishing
    into the window (`seated_s`); None otherwise. The observation reports a step only while the arrival
    trend's window spans it (two minutes), shorter than a long output's life: remembered past that."""
    age_s = observation.arrival_level_age_seconds
    stepped = now - timedelta(seconds=age_s) if age_s is not None else state.arrivals_stepped_time
    if stepped is None or (now - stepped).total_seconds() >= seated_s:
        return None
    return stepped


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


def seated_output_lengths(observation: Observation, sized: Observation) -> tuple[Observation, str | None]:
    """`sized` (the lengths to size with: `observation`'s, extrapolated along their trend) with output
    lengths no shorter than how far the decode residents are into their answers implies, and why (None:
    as they were). Read against `observation`'s own lengths (raised for the residents' number or held,
    not extrapolated); where the trend's lengths account for the residents already, they stand (on the
    mix-shift trace the trend had sized for conversation's answers ahead of them, and the residents'
    floor in its place cost 0.3 points of attainment on a seed).

    The lengths are measured as requests end, and the decode pool holds those that have not: where the
    mix moves to longer answers at a steady rate (a reasoning model's users replacing code completion's,
    answers of 2400 tokens replacing 30), the window's finishers are the old mix until the new answers
    end, minutes later, and the hold for full slots keeps the old lengths longer still. The pool had one
    decode replica while its KV cache filled with 84 sequences and 1,100 more waited (93-95% on three
    seeds). How far the residents are into their answers tells sooner: a resident has generated a share
    of its answer uniform over its life, and residents are weighted by their answers' lengths, so the
    mean generated is `E[n^2] / (2 E[n])` of the outputs (the gamma fitted to the window's mean and
    P90), with a variance of `E[n^3] / (3 E[n])` less its square. Where the residents have generated
    more, by RESIDENT_GENERATED_NOISE_MULTIPLE standard errors of a mean over that many residents and by
    RESIDENT_GENERATED_MARGIN of it, the outputs are taken as the least that accounts for it: the
    window's mean with a wider spread where one accounts for it, else the widest spread
    (`lengths.MAX_P90_OVER_MEAN`) at the mean that does. A mix shifting in is a few long answers among
    many short ones, a wider spread than any one mix: scaling the window's shape instead read the shift's
    seventh minute (answers of 270 tokens on average, a tenth of them the new 2400) as 1900-token
    answers, and ordered 19 decode replicas where 5 served. With the rule the shift met 99.90-100% on
    five seeds (91.3-96.9% without it), at 11-30% fewer GPU-hours on four of them (1% more on one).

    Not where the finishers' mean falls (its trend below zero, or unknown): then the residents are the
    old mix's stragglers, deep into long answers while the new short ones finish. On the reverse shift,
    from a reasoning model's answers to code completion's, eight residents 5,000 tokens in read as
    2,500-token answers at the full rate and ordered 14 decode replicas. Nor after a step in the
    arrivals, nor on a decline (`declining`): the residents then came at another rate, and on a decline
    the short answers have left first. Unknown where the engine does not report what its residents have
    generated (the vLLM and SGLang presets).
    """
    generated, running = observation.decode_generated_tokens_mean, observation.decode_running
    mean, p90 = observation.output_tokens_mean, observation.output_tokens_p90
    if generated is None or not running or not mean:
        return sized, None
    if residents_of_another_rate(observation):
        return sized, None
    slope = observation.output_tokens_trend_per_s
    if slope is None or slope < 0:
        return sized, None  # the finishers' answers shorten: the residents are the old mix's
    outputs = LengthDistribution.from_mean_p90(mean, p90)
    n1, n2, n3 = outputs.moment(1), outputs.moment(2), outputs.moment(3)
    expected = n2 / n1 / 2  # uniform over a life of n tokens, residents weighted by n
    error = math.sqrt(max(n3 / n1 / 3 - expected**2, 0.0) / running)
    if (
        generated - expected <= RESIDENT_GENERATED_NOISE_MULTIPLE * error
        or generated <= (1 + RESIDENT_GENERATED_MARGIN) * expected
    ):
        return sized, None
    # The least that accounts for them, from the lengths sized with (the trend's, where it extrapolated):
    # E[n^2] / E[n] = mean * length_bias(spread) twice what the residents have generated.
    mean = sized.output_tokens_mean or mean
    needed_bias = 2 * generated / mean
    sized_spread = (sized.output_tokens_p90 or mean) / mean
    if length_bias(sized_spread) >= needed_bias:
        return sized, None  # the trend's lengths account for the residents already
    if needed_bias >= length_bias(MAX_P90_OVER_MEAN):
        spread = MAX_P90_OVER_MEAN
        mean = 2 * generated / length_bias(spread)
    else:
        spread = highest_fitting(lambda r: length_bias(r) <= needed_bias, MAX_P90_OVER_MEAN)
    reason = (
        f"output lengths raised to mean {mean:.0f}/P90 {mean * spread:.0f} tokens from the window's "
        f"{observation.output_tokens_mean:.0f}"
        + (f"/P90 {p90:.0f}" if p90 is not None else "")
        + f": the {running:.0f} decode residents have generated {generated:.0f} tokens each, where the "
        f"window's lengths imply {expected:.0f} (+-{error:.0f}); the answers seated now are longer than "
        "those finishing"
    )
    update = {"output_tokens_mean": mean, "output_tokens_p90": mean * spread}
    return sized.model_copy(update=update), reason
