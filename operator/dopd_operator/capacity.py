"""The capacity model: how many prefill and decode replicas a load needs under the TTFT/TPOT SLOs.

Pure math over a performance profile, meant to be *accurate*, not safe: the planner's headroom comes
from the forecast's upper quantile, the trend guard and the online corrections, and the simulator's
oracle checks this model against the engine it sizes (docs/planner.md, "Capacity model"). Callers:
`planner.plan` (each tick), the simulator's oracle, warm start and static-layout search.

- Lengths (`lengths.py`). Prompt and output lengths are gamma-distributed, fitted to the observed mean
  and P90 (or, when known, the lengths themselves). Prefill time is convex in prompt length, so moments
  are taken over the distribution, never at its mean.
- Prefill. A replica computes batches of prompts under a token budget (vLLM's max_num_batched_tokens):
  a batch costs `a + sum(work(l))`, `work(l) = b*new + c*(l^2 - cached^2)` with a prefix-cache hit rate
  `h` (`new = (1-h)*l`); where the router measures how the hits fall on prompts, the prompts are
  populations each at its own share (`prefix_curve.prefix_populations`: most cached, or none), and each
  is feasible up to its own limit. Under load the fixed cost `a` is shared by the batch, so a busy replica serves
  a prompt in `E[work] + a/k` seconds, `k` prompts per full batch (`budget / E[new]`); a prompt longer
  than the budget is chunked and pays `a` per chunk. The pool is a G/G/c queue with that service time
  (Erlang C, Allen-Cunneen correction for arrival burstiness and service variability). A prompt's TTFT
  is its wait plus its batch's time plus its KV transfer to decode (the decode worker emits the first
  token when the KV has arrived), and the batch grows with load: `k = (lambda*a/N) / (1 - rho_work)`
  prompts arrive while one batch runs. `N_P` is the fewest replicas whose *TTFT attainment* (the share
  of prompts whose wait fits in what their batch and transfer leave of the SLO, averaged over the
  length distribution) reaches the provisioning quantile, among the prompts that can meet the SLO at
  all: a prompt whose prefill and transfer alone exceed the SLO is a miss at any size and is not paid
  for.
- Decode (`capacity_decode.DecodeModel`). A replica holds at most `min(maxBatchSize, KV per sequence,
  B_tpot)` sequences; the pool is those slots, each held for a sequence's steps at the step time of the
  batch the pool settles at, and a sequence may wait for a slot as long as its TPOT stays within the SLO.
  `N_D` is the fewest replicas whose share of sequences waiting no longer than that reaches the
  provisioning quantile (Erlang C over the slots).
- The queueing formulas and monotone searches both pools use are in `queueing`.

Every sizing function is monotone non-decreasing in the arrival rate and the prompt lengths; the
property tests in tests/operator/test_planner_properties.py hold the planner to that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from dopd_operator.api import SloSpec
from dopd_operator.capacity_decode import DecodeModel
from dopd_operator.lengths import LengthDistribution
from dopd_operator.prefix_curve import MAX_PREFIX_HIT_RATE, PrefixCacheCurve, prefix_populations
from dopd_operator.profile import PREFILL_TOKEN_BUDGET_TOKENS, PerformanceProfile
from dopd_operator.queueing import (
    EPS,
    MAX_REPLICAS_SEARCH,
    erlang_c,
    fewest_meeting,
    highest_fitting,
    solve_increasing,
)

FloatArray = npt.NDArray[np.float64]
Lengths = TypeVar("Lengths", float, FloatArray)  # one prompt's tokens, or many

MAX_ARRIVAL_SCV = 20.0
# A prompt that finds every prefill replica busy goes to the one with the fewest in-flight tokens, whose
# running batch is among the shortest: its remaining time is taken as uniform over this share of a mean
# batch cycle. Measured, not derived: against the simulated router (16 static layouts, Poisson and
# bursty arrivals, 50-300 rps) it puts the predicted P90 TTFT at 1.00x the simulated one on average
# (0.84-1.16x; P99 0.99x, 0.82-1.38x); a whole cycle (the unconditional residual) overstates the P90 by
# a further 10% and would bias the online prefill correction low.
BUSY_RESIDUAL_CYCLE_SHARE = 0.5


@dataclass(frozen=True)
class Workload:
    """What the capacity model sizes for: a rate, two length distributions, burstiness and cache hits."""

    arrival_rate_rps: float
    input_tokens_mean: float
    input_tokens_p90: float | None
    output_tokens_mean: float
    output_tokens_p90: float | None
    arrival_scv: float = 1.0  # squared coefficient of variation of inter-arrival times; Poisson = 1
    prefix_cache_hit_rate: float = 0.0  # share of prompt tokens served from the prefix cache
    # How the hits fall on prompts, when known: (share of a prompt's tokens served from the cache, share
    # of the prompt tokens in prompts hit so) pairs, measured where `prefix_cache_hit_rate` was. Prompts
    # then hit their cached prefix or nothing (`prefix_populations`). None: every prompt hits the mean rate.
    prefix_hit_mix: tuple[tuple[float, float], ...] | None = None
    # How the hit rate moves with the prefill pool's size, when the router measures it: prefill is then
    # sized at the hit rate of each candidate size (`CapacityModel.prefill_replicas`).
    prefix_cache_curve: PrefixCacheCurve | None = None
    # The lengths themselves, when known (the oracle): their distribution replaces the gamma fit.
    input_tokens_known: tuple[float, ...] | None = None
    output_tokens_known: tuple[float, ...] | None = None


@dataclass
class _Family:
    """What a model and its variants at other hit rates (`CapacityModel.at_hit_rate`) share: the fitted
    lengths (the same workload's), the decode pool's model, and each hit share's prompt limit (the same
    profile, SLO and budget).
    A prefill search builds a variant per hit rate it tries."""

    isl: LengthDistribution
    osl: LengthDistribution
    decode: DecodeModel | None = None  # the decode pool's model: it does not see the cache
    limits: dict[tuple[float, float], float] = field(default_factory=dict)
    _below: dict[float, tuple[FloatArray, float]] = field(default_factory=dict)

    def prompts_below(self, limit_tokens: float) -> tuple[FloatArray, float]:
        """`isl.below(limit_tokens)`, memoized (read-only: every variant shares it)."""
        found = self._below.get(limit_tokens)
        if found is None:
            lengths, share = self.isl.below(limit_tokens)
            lengths.setflags(write=False)
            found = self._below[limit_tokens] = (lengths, share)
        return found


@dataclass(frozen=True)
class _FeasiblePrompts:
    """One population's prompts that can meet the TTFT SLO: their lengths (equally likely) and weight
    among all feasible prompts, their new tokens, prefill work and KV transfer."""

    weight: float
    new: FloatArray
    work: FloatArray
    transfer: FloatArray


@dataclass(frozen=True)
class _PrefillWait:
    """A prompt's wait for its batch: none with probability 1 - `probability`; else the rest of a running
    batch (uniform over `residual_seconds`) plus pooled queueing (exponential, rate `queue_decay`)."""

    batch: float
    probability: float
    residual_seconds: float
    queue_decay: float

    def within(self, seconds: FloatArray) -> FloatArray:
        """P(wait <= seconds), elementwise (0 for negative seconds)."""
        t = np.maximum(seconds, 0.0)
        cycle, decay = max(self.residual_seconds, 1e-9), self.queue_decay
        covered = np.minimum(t, cycle)
        # P(U + E <= t) for U ~ uniform(0, cycle), E ~ exponential(decay): (1/cycle) * integral over u.
        busy = (covered - (np.exp(-decay * (t - covered)) - np.exp(-decay * t)) / decay) / cycle
        out: FloatArray = np.where(seconds < 0, 0.0, (1.0 - self.probability) + self.probability * busy)
        return out


class CapacityModel:
    """Per-replica capacities and replica counts for one profile, SLO and length mix."""

    def __init__(
        self,
        profile: PerformanceProfile,
        slo: SloSpec,
        workload: Workload,
        prefill_token_budget: int = PREFILL_TOKEN_BUDGET_TOKENS,
        family: _Family | None = None,
    ) -> None:
        """`family`: internal, what `at_hit_rate` shares with its variants."""
        self.profile = profile
        self.slo = slo
        self.workload = workload
        self.prefill_token_budget = prefill_token_budget
        self._by_hit_rate: dict[float, CapacityModel] = {}
        # Provision so the SLO percentile holds *and* the attainment target's share of requests meets
        # the objectives: with P90 objectives and a 99% target, size for 99% of requests.
        self.percentile_q = max(slo.percentile / 100.0, slo.attainment_target)
        self._z = NormalDist().inv_cdf(min(self.percentile_q, 0.9999))
        self._arrival_scv = min(max(workload.arrival_scv, 0.0), MAX_ARRIVAL_SCV)
        if family is None:
            isl = (
                LengthDistribution.from_lengths(workload.input_tokens_known)
                if workload.input_tokens_known is not None
                else LengthDistribution.from_mean_p90(workload.input_tokens_mean, workload.input_tokens_p90)
            )
            osl = (
                LengthDistribution.from_lengths(workload.output_tokens_known)
                if workload.output_tokens_known is not None
                else LengthDistribution.from_mean_p90(
                    max(workload.output_tokens_mean, 1.0), workload.output_tokens_p90
                )
            )
            family = _Family(isl, osl)
        self._family = family
        self.isl, self.osl = family.isl, family.osl
        self._prefill_init()
        if family.decode is None:
            family.decode = DecodeModel(
                profile, slo, workload, family.osl, self.percentile_q, self._z, self._arrival_scv
            )
        self.decode_model = family.decode

    # ------------------------------------------------------------------------------------ prefill

    @staticmethod
    def _new_tokens(prompts: FloatArray, hit: float) -> FloatArray:
        return (1.0 - hit) * prompts

    def _work_coefficients(self, hit: float) -> tuple[float, float]:
        """Seconds per token and per token squared of a prompt's prefill work at a hit share `hit`: the
        cached prefix is not computed, and its tokens are attended to."""
        p = self.profile.prefill
        return p.b_seconds_per_token * (1.0 - hit), p.c_seconds_per_token2 * (1.0 - hit * hit)

    def _work(self, prompts: Lengths, hit: float) -> Lengths:
        """Prefill work of each prompt (or one), its fixed cost aside."""
        linear, quadratic = self._work_coefficients(hit)
        out: Lengths = linear * prompts + quadratic * prompts * prompts
        return out

    def _transfer(self, prompts: FloatArray) -> FloatArray:
        """Seconds to ship each prompt's KV to decode: in its TTFT, since the decode worker emits the
        first token when the KV has arrived (a cached prefix is shipped too)."""
        out: FloatArray = prompts * self.profile.kv_transfer_seconds_per_token
        return out

    def _prefill_init(self) -> None:
        a = self.profile.prefill.a_seconds
        self._hit = min(max(self.workload.prefix_cache_hit_rate, 0.0), MAX_PREFIX_HIT_RATE)
        self.prompt_populations = prefix_populations(self._hit, self.workload.prefix_hit_mix)
        grid = self.isl.grid
        # each population's share of the prompts, and its new tokens and prefill work over the whole grid
        self._grid_prompts = [
            (pop.share, self._new_tokens(grid, pop.hit), self._work(grid, pop.hit))
            for pop in self.prompt_populations
        ]
        self._work_mean = sum(share * float(np.mean(work)) for share, _, work in self._grid_prompts)
        self._new_mean = sum(share * float(np.mean(new)) for share, new, _ in self._grid_prompts)
        budget = float(self.prefill_token_budget)
        # Prompts in a full batch (the engine also caps sequences per batch), and the fixed cost each
        # pays there: a/k, or a per chunk for prompts longer than the budget.
        self._batch_full = max(
            1.0, min(budget / max(self._new_mean, 1.0), float(self.profile.max_batch_size))
        )
        fixed_full = a * self._new_mean / budget if self._new_mean > budget else a / self._batch_full
        self.prefill_service_seconds_mean = self._work_mean + fixed_full
        if len(self._grid_prompts) == 1:
            variance = float(np.var(self._grid_prompts[0][2]))
        else:  # a mixture's: its second moment less its squared mean
            second_moment = sum(share * float(np.mean(work * work)) for share, _, work in self._grid_prompts)
            variance = max(second_moment - self._work_mean**2, 0.0)
        self.prefill_service_scv = variance / max(self.prefill_service_seconds_mean**2, EPS)
        # The longest prompt that can meet the TTFT SLO at all: alone, with no wait (its transfer too),
        # per population (the one that hits least: the uncached limit).
        limits = [self._longest_within(self.slo.ttft_seconds, pop.hit) for pop in self.prompt_populations]
        self.prefill_limit_tokens = limits[-1]
        self.prefill_limit_cached_tokens = limits[0] if len(limits) > 1 else None
        below = [self._family.prompts_below(limit) for limit in limits]
        shares = [pop.share * share for pop, (_, share) in zip(self.prompt_populations, below, strict=True)]
        self.prefill_feasible_share = sum(shares)
        total = self.prefill_feasible_share
        self._feasible = tuple(
            _FeasiblePrompts(
                weight=(weighted / total) if total > 0 else pop.share,
                new=self._new_tokens(lengths, pop.hit),
                work=self._work(lengths, pop.hit),
                transfer=self._transfer(lengths),
            )
            for pop, (lengths, _), weighted in zip(self.prompt_populations, below, shares, strict=True)
        )
        self.ttft_reachable = self.prefill_feasible_share >= self.percentile_q - EPS

    def _longest_within(self, seconds: float, hit: float) -> float:
        """The longest prompt whose prefill and KV transfer alone take at most `seconds` at a hit share
        `hit` (0 when none does); memoized in the model's family."""
        found = self._family.limits.get((seconds, hit))
        if found is None:
            found = self._family.limits[(seconds, hit)] = self._solve_longest_within(seconds, hit)
        return found

    def _solve_longest_within(self, seconds: float, hit: float) -> float:
        # The TTFT of one prompt in a batch of its own (chunked past the token budget): its prefill (as
        # `_work`, its coefficients taken once: plain float arithmetic per step) and its KV transfer.
        fixed_s, budget = self.profile.prefill.a_seconds, self.prefill_token_budget
        linear, quadratic = self._work_coefficients(hit)
        transfer = self.profile.kv_transfer_seconds_per_token

        def alone(tokens: float) -> float:
            work = linear * tokens + quadratic * tokens * tokens
            return fixed_s * max(1.0, (1.0 - hit) * tokens / budget) + work + tokens * transfer

        if alone(0.0) > seconds:
            return 0.0
        low, high = 0.0, 1024.0
        while alone(high) <= seconds:
            low, high = high, high * 2
            if high > 1e9:
                return high
        for _ in range(40):
            mid = (low + high) / 2
            if alone(mid) <= seconds:
                low = mid
            else:
                high = mid
        return low

    @property
    def prefill_rps_per_replica(self) -> float:
        """Prompts per second one busy replica computes (full batches)."""
        return 1.0 / max(self.prefill_service_seconds_mean, EPS)

    def _prefill_wait(self, replicas: float, rate_rps: float, slowdown: float = 1.0) -> _PrefillWait | None:
        """The wait before a prompt's batch starts at this load; None when overloaded.

        The router hands a prompt to an idle replica when there is one; when all are busy, to the one
        with the fewest in-flight tokens, where it waits for the running batch to end and joins the next.
        So a replica's batch is one prompt plus those that arrived during its last batch while all were
        busy: `k = 1 + C*lambda*T(k)/N`, `T(k) = a + k*E[work]`, `C` the probability that all are busy
        (Erlang C at the per-prompt service `E[work] + a/k`). A prompt that finds all busy waits out the
        rest of a batch (uniform over `BUSY_RESIDUAL_CYCLE_SHARE * T(k)`) plus the pooled G/G/c queueing
        (exponential, Allen-Cunneen corrected for burstiness) that appears once the replicas' budgets are
        full. `slowdown` scales
        every prefill time (the engine `slowdown` times slower than the profile).
        """
        a = self.profile.prefill.a_seconds * slowdown
        work = self._work_mean * slowdown
        if rate_rps * work >= replicas * (1.0 - 1e-9):
            return None

        def batch_after(batch: float) -> float:
            probability = erlang_c(replicas, rate_rps * (work + a / batch))
            return 1.0 + probability * rate_rps * (a + batch * work) / replicas

        low, high = 1.0, self._batch_full
        if batch_after(high) < high:
            for _ in range(24):  # the batch size that reproduces itself
                mid = (low + high) / 2
                if batch_after(mid) > mid:
                    low = mid
                else:
                    high = mid
        batch = high  # else the budgets are full: batches are as large as they get
        service = work + a / batch
        if rate_rps * service >= replicas * (1 - 1e-9):
            return None
        variability = max((self._arrival_scv + self.prefill_service_scv) / 2.0, 1e-3)
        cycle = a * max(1.0, batch * self._new_mean / self.prefill_token_budget) + batch * work
        return _PrefillWait(
            batch=batch,
            probability=erlang_c(replicas, rate_rps * service),
            residual_seconds=BUSY_RESIDUAL_CYCLE_SHARE * cycle,
            queue_decay=(replicas / service - rate_rps) / variability,
        )

    def _batch_seconds(
        self, new_tokens: FloatArray, work_seconds: FloatArray, batch: float, slowdown: float = 1.0
    ) -> FloatArray:
        """Seconds of the batch each prompt (its new tokens, its work) is computed in, with `batch - 1`
        average others: the fixed cost once per budget's worth of tokens, then everyone's work."""
        a = self.profile.prefill.a_seconds
        others_new = (batch - 1.0) * self._new_mean
        fixed = a * np.maximum(1.0, (new_tokens + others_new) / self.prefill_token_budget)
        out: FloatArray = slowdown * (fixed + work_seconds + (batch - 1.0) * self._work_mean)
        return out

    def prefill_attainment(self, replicas: float, rate_rps: float) -> float:
        """Predicted share of the prompts that can meet the TTFT SLO which do, on `replicas` replicas."""
        if rate_rps <= 0:
            return 1.0
        wait = self._prefill_wait(replicas, rate_rps)
        if wait is None:
            return 0.0
        attained = 0.0
        for prompts in self._feasible:
            batch_seconds = self._batch_seconds(prompts.new, prompts.work, wait.batch)
            # A prompt that its batch alone pushes past the SLO meets it only without waiting (and then
            # in a smaller batch): counting it as needing no wait keeps the requirement continuous.
            slack = np.maximum(self.slo.ttft_seconds - batch_seconds - prompts.transfer, 0.0)
            attained += prompts.weight * float(np.mean(wait.within(slack)))
        return attained

    def wait_percentile_seconds(self, replicas: int, rate_rps: float, quantile: float | None = None) -> float:
        """Predicted wait before prefill at `quantile` (default: the provisioning percentile); infinite
        when overloaded."""
        if rate_rps <= 0:
            return 0.0
        if replicas <= 0:
            return math.inf
        wait = self._prefill_wait(replicas, rate_rps)
        if wait is None:
            return math.inf
        target = self.percentile_q if quantile is None else quantile
        return solve_increasing(lambda t: float(wait.within(np.array([t]))[0]), target, 0.0)

    def ttft_percentile_seconds(self, replicas: int, rate_rps: float) -> float:
        """Predicted TTFT at the provisioning percentile (infinite when the replicas cannot keep up)."""
        return self.ttft_quantile_seconds(replicas, rate_rps, self.percentile_q)

    def ttft_quantile_seconds(
        self,
        replicas: int,
        rate_rps: float,
        quantile: float,
        slowdown: float = 1.0,
        include_transfer: bool = True,
    ) -> float:
        """Predicted TTFT at `quantile` (0..1) over all prompts: the quantile of wait + batch time + KV
        transfer, the wait mixed over the length distribution (not the sum of two quantiles, which
        overstates it). `slowdown` scales every prefill time (not the transfer); without
        `include_transfer`, the TTFT a prefill pod times (queue + prefill, as vLLM's and SGLang's do).
        The online correction compares an observed percentile with this prediction at the same
        percentile, never a different one."""
        if replicas <= 0:
            return math.inf
        grid = self.isl.grid
        transfer = self._transfer(grid) if include_transfer else np.zeros_like(grid)
        if rate_rps <= 0:
            alone = [
                (share, self._batch_seconds(new, work, 1.0, slowdown) + transfer)
                for share, new, work in self._grid_prompts
            ]
            if len(alone) == 1:
                return float(np.quantile(alone[0][1], quantile))
            return solve_increasing(
                lambda t: sum(share * float(np.mean(seconds <= t)) for share, seconds in alone), quantile, 0.0
            )
        wait = self._prefill_wait(replicas, rate_rps, slowdown)
        if wait is None:
            return math.inf
        batches = [
            (share, self._batch_seconds(new, work, wait.batch, slowdown) + transfer)
            for share, new, work in self._grid_prompts
        ]
        return solve_increasing(
            lambda t: sum(share * float(np.mean(wait.within(t - seconds))) for share, seconds in batches),
            quantile,
            min(float(np.min(seconds)) for _, seconds in batches),
        )

    def prefill_slowdown(
        self,
        replicas: int,
        rate_rps: float,
        quantile: float,
        observed_ttft_seconds: float,
        bounds: tuple[float, float],
        observed_includes_transfer: bool = True,
    ) -> float | None:
        """How much slower than the profile the engine's prefill is, judged by one observed TTFT
        percentile: the factor, within `bounds`, at which the predicted TTFT at that percentile equals
        the observed one. Near saturation TTFT grows much faster than the prefill time, so the plain ratio
        observed/predicted would overshoot there; solving the model for the factor does not. None when
        no factor within `bounds` explains the observation (a backlog draining, a queue not yet built).

        Solved on the share of prompts within the observed TTFT (it falls as the factor grows; the
        factor's prediction reaches the observed percentile where the share crosses `quantile`), so each
        step costs one evaluation, not a quantile search. `observed_includes_transfer`: whether the
        observed TTFT includes the KV transfer (dopd's router) or ends with the prefill (vLLM's and
        SGLang's prefill pods); the prediction it is solved against counts it likewise."""
        if replicas <= 0 or rate_rps <= 0:
            return None
        grid = self.isl.grid
        slack_seconds = observed_ttft_seconds - (self._transfer(grid) if observed_includes_transfer else 0.0)

        def share_within(slowdown: float) -> float:
            wait = self._prefill_wait(replicas, rate_rps, slowdown)
            if wait is None:
                return 0.0
            return sum(
                share
                * float(
                    np.mean(wait.within(slack_seconds - self._batch_seconds(new, work, wait.batch, slowdown)))
                )
                for share, new, work in self._grid_prompts
            )

        low, high = bounds
        if share_within(low) < quantile or share_within(high) > quantile:
            return None
        for _ in range(12):
            mid = math.sqrt(low * high)
            if share_within(mid) >= quantile:
                low = mid
            else:
                high = mid
        return math.sqrt(low * high)

    def prefill_replicas(self, rate_rps: float) -> int:
        """Fewest prefill replicas whose TTFT attainment, among prompts that can meet the SLO, reaches the
        provisioning quantile (0 at zero load). With a prefix-cache curve, see `_prefill_replicas_cached`."""
        if rate_rps <= 0:
            return 0
        stable = max(rate_rps * self.prefill_service_seconds_mean, rate_rps * self._work_mean)
        start = max(1, math.floor(stable + EPS) + 1)
        if self.workload.prefix_cache_curve is not None:
            return self._prefill_replicas_cached(self.workload.prefix_cache_curve, rate_rps, start)
        return fewest_meeting(
            lambda n: self.prefill_attainment(n, rate_rps) >= self.percentile_q - EPS,
            start,
            MAX_REPLICAS_SEARCH,
            floor=start,
        )

    def at_hit_rate(self, hit_rate: float) -> CapacityModel:
        """This model at another prefix-cache hit rate (no curve): memoized, a search asks for a few."""
        key = round(min(max(hit_rate, 0.0), MAX_PREFIX_HIT_RATE), 4)
        found = self._by_hit_rate.get(key)
        if found is None:
            workload = replace(self.workload, prefix_cache_hit_rate=key, prefix_cache_curve=None)
            found = CapacityModel(self.profile, self.slo, workload, self.prefill_token_budget, self._family)
            self._by_hit_rate[key] = found
        return found

    def prefill_hit_rate(self, replicas: int) -> float:
        """The hit rate `replicas` prefill replicas' cache would see (the observed one without a curve)."""
        curve = self.workload.prefix_cache_curve
        if curve is None:
            return self._hit
        return curve.hit_rate(replicas * self.profile.kv_capacity_tokens)

    def _prefill_replicas_cached(self, curve: PrefixCacheCurve, rate_rps: float, start: int) -> int:
        """Where the hit rate grows with the pool, more replicas make more prompts able to meet the TTFT
        SLO at all, so the feasible share is no longer a given to size around: the fewest replicas whose
        TTFT attainment over *all* prompts (feasible share at their hit rate x attainment among those)
        reaches the provisioning quantile of what an ample cache makes feasible. Without prompts beyond
        the limit this is the attainment among all prompts at each size's hit rate."""
        ample = self.at_hit_rate(curve.ceiling_hit_rate).prefill_feasible_share
        target = self.percentile_q * ample

        def meets(n: int) -> bool:
            model = self.at_hit_rate(self.prefill_hit_rate(n))
            return model.prefill_feasible_share * model.prefill_attainment(n, rate_rps) >= target - EPS

        return fewest_meeting(meets, start, MAX_REPLICAS_SEARCH, floor=1)

    # ------------------------------------------------------------------------------------- decode

    # The decode pool (`capacity_decode.DecodeModel`), under the names the planner and the simulator use.

    @property
    def output_tokens_mean(self) -> float:
        return self.decode_model.output_tokens_mean

    @property
    def context_tokens_mean(self) -> float:
        """The mean decode resident's context (prompt plus half its output, length-biased)."""
        return self.decode_model.context_tokens_mean

    @property
    def tpot_reachable(self) -> bool:
        return self.decode_model.tpot_reachable

    @property
    def decode_batch_limited_by(self) -> str:
        return self.decode_model.batch_limited_by

    @property
    def decode_batch_size(self) -> int:
        """B*: the sequences a decode replica holds at most."""
        return self.decode_model.batch_size

    @property
    def decode_step_seconds(self) -> float:
        return self.decode_model.step_seconds

    @property
    def decode_rps_per_replica(self) -> float:
        return self.decode_model.rps_per_replica

    @property
    def decode_slack_seconds_mean(self) -> float:
        """Mean seconds a sequence may wait for a decode slot and still meet the TPOT SLO."""
        return self.decode_model.slack_seconds_mean

    def decode_mean_batch(self, replicas: float, rate_rps: float) -> float:
        return self.decode_model.mean_batch(replicas, rate_rps)

    def decode_attainment(self, replicas: float, rate_rps: float, every_slot_taken: bool = False) -> float:
        return self.decode_model.attainment(replicas, rate_rps, every_slot_taken)

    def decode_replicas(self, rate_rps: float, every_slot_taken: bool = False) -> int:
        return self.decode_model.replicas(rate_rps, every_slot_taken)

    def decode_concurrency(self, rate_rps: float, replicas: int) -> float:
        return self.decode_model.concurrency(rate_rps, replicas)

    def predicted_tpot_seconds(self, batch_size: float) -> float:
        return self.decode_model.tpot_seconds(batch_size)

    def tpot_mean_seconds(self, mean_batch_size: float) -> float:
        return self.decode_model.tpot_mean_seconds(mean_batch_size)

    # ------------------------------------------------------------------------------------ layouts

    def prefill_sustainable_rps(self, prefill: int) -> float:
        """Highest arrival rate `prefill` replicas serve within the TTFT SLO (0 for none)."""
        if prefill <= 0:
            return 0.0
        return highest_fitting(
            lambda r: self.prefill_replicas(r) <= prefill, prefill * self.prefill_rps_per_replica
        )

    def decode_sustainable_rps(self, decode: int) -> float:
        """Highest arrival rate `decode` replicas serve within the TPOT SLO (0 for none)."""
        if decode <= 0:
            return 0.0
        return highest_fitting(
            lambda r: self.decode_replicas(r) <= decode, decode * self.decode_rps_per_replica
        )

    def sustainable_rps(self, prefill: int, decode: int) -> float:
        """Highest arrival rate a layout serves within both SLOs (the smaller of the two pools' rates)."""
        if prefill <= 0 or decode <= 0:
            return 0.0
        return min(self.prefill_sustainable_rps(prefill), self.decode_sustainable_rps(decode))
