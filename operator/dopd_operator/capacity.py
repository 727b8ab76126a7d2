"""The capacity model: how many prefill and decode replicas a load needs under the TTFT/TPOT SLOs.

Pure math over a performance profile (see docs/architecture.md, "Capacity model"):

- Prompt and output lengths are modelled as log-normal, fitted to the observed mean and P90. Prefill
  time is convex in prompt length, so the mean service time is E[T_p(L)] = a + b*E[L] + c*E[L^2],
  which grows with the variance of L, not T_p(E[L]) (the DOPD paper's point about variance).
- Prefill is a G/G/c queue: the TTFT percentile is bounded by the wait percentile (Erlang C with an
  Allen-Cunneen correction for arrival burstiness and service-time variability) plus the service time of a percentile-
  length prompt plus its KV transfer. N_P is the fewest replicas meeting the TTFT SLO.
- Decode: B* is the largest batch whose step time meets the TPOT SLO and whose KV fits; each sequence
  stays OSL x T_d(B*) seconds, so by Little's law the concurrency is lambda * E[OSL] * T_d(B*). A
  replica is sized so the SLO percentile of its Poisson-fluctuating batch stays at or below B*.

Every sizing function is monotone non-decreasing in the arrival rate and the lengths; the property
tests in tests/operator/test_planner_properties.py hold the planner to that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from statistics import NormalDist

from dopd_operator.api import SloSpec
from dopd_operator.profile import PerformanceProfile

_Z90 = NormalDist().inv_cdf(0.9)
# The largest P90/mean ratio a log-normal can have (at sigma = z90); larger observed ratios are clamped.
_MAX_P90_OVER_MEAN = math.exp(_Z90 * _Z90 / 2)
MAX_REPLICAS_SEARCH = 100_000
KV_HEADROOM = 0.9  # share of KV capacity planned for; the rest absorbs length variance
_EPS = 1e-9
# Highest planned prefill utilization. M/G/c theory lets a pool with short prefills and a loose TTFT SLO
# run at 95%, but then any forecast error is an overload: the queue grows until new replicas start,
# `startup` seconds later. The same headroom the HPA's utilization targets give.
PREFILL_MAX_UTILIZATION = 0.85
DECODE_MAX_UTILIZATION = 0.85  # of B*, for the same reason
_GRID_POINTS = 200
_GRID_Z = [NormalDist().inv_cdf((i + 0.5) / _GRID_POINTS) for i in range(_GRID_POINTS)]


@dataclass(frozen=True)
class LengthDistribution:
    """A log-normal length distribution fitted to a mean and a P90 (tokens)."""

    mean_tokens: float
    mu: float
    sigma: float

    @classmethod
    def from_mean_p90(cls, mean_tokens: float, p90_tokens: float | None) -> LengthDistribution:
        if mean_tokens <= 0:
            return cls(mean_tokens=0.0, mu=-math.inf, sigma=0.0)
        ratio = 1.0 if p90_tokens is None else min(max(p90_tokens / mean_tokens, 1.0), _MAX_P90_OVER_MEAN)
        # ln(p90/mean) = z*sigma - sigma^2/2; take the smaller root (continuous, sigma=0 at ratio 1).
        sigma = _Z90 - math.sqrt(max(_Z90 * _Z90 - 2 * math.log(ratio), 0.0))
        return cls(mean_tokens=mean_tokens, mu=math.log(mean_tokens) - sigma * sigma / 2, sigma=sigma)

    def moment(self, k: int) -> float:
        """E[L^k] over the distribution truncated at its 99.75th percentile.

        Real prompts are bounded by the context window; an untruncated log-normal's fourth moment
        (which the prefill-time variance needs, since T_p is quadratic in L) is dominated by prompts
        that cannot exist. The quantile grid is rescaled so the mean stays exactly the observed mean.
        """
        if self.mean_tokens <= 0:
            return 0.0
        return float(sum(length**k for length in self.grid) / _GRID_POINTS)

    @cached_property
    def grid(self) -> list[float]:
        """Equally likely lengths at the grid's quantiles, scaled to the mean."""
        if self.mean_tokens <= 0:
            return [0.0] * _GRID_POINTS
        raw = [math.exp(self.mu + self.sigma * z) for z in _GRID_Z]
        scale = self.mean_tokens * _GRID_POINTS / sum(raw)
        return [length * scale for length in raw]

    def quantile(self, q: float) -> float:
        if self.mean_tokens <= 0:
            return 0.0
        return math.exp(self.mu + self.sigma * NormalDist().inv_cdf(q))


@dataclass(frozen=True)
class Workload:
    """What the capacity model sizes for: a rate and two length distributions."""

    arrival_rate_rps: float
    input_tokens_mean: float
    input_tokens_p90: float | None
    output_tokens_mean: float
    output_tokens_p90: float | None
    arrival_scv: float = 1.0  # squared coefficient of variation of inter-arrival times; Poisson = 1


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered_load = lambda/mu < servers)."""
    if offered_load <= 0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    erlang_b = 1.0
    for k in range(1, servers + 1):
        erlang_b = offered_load * erlang_b / (k + offered_load * erlang_b)
    return servers * erlang_b / (servers - offered_load * (1 - erlang_b))


class CapacityModel:
    """Per-replica capacities and replica counts for one profile, SLO and length mix."""

    def __init__(self, profile: PerformanceProfile, slo: SloSpec, workload: Workload) -> None:
        self.profile = profile
        self.slo = slo
        self.workload = workload
        # Provision so the SLO percentile holds *and* the attainment target's share of requests meets
        # the objectives: with P90 objectives and a 99% target, size for the 99th percentile.
        self.percentile_q = max(slo.percentile / 100.0, slo.attainment_target)
        self._z = NormalDist().inv_cdf(min(self.percentile_q, 0.9999))
        isl = LengthDistribution.from_mean_p90(workload.input_tokens_mean, workload.input_tokens_p90)
        self.isl = isl
        # Prefill service time s(L) = a + bL + cL^2 and its first two moments over L.
        p = profile.prefill
        a, b, c = p.a_seconds, p.b_seconds_per_token, p.c_seconds_per_token2
        m1, m2, m3, m4 = (isl.moment(k) for k in (1, 2, 3, 4))
        self.prefill_service_seconds_mean = a + b * m1 + c * m2
        second = a * a + b * b * m2 + c * c * m4 + 2 * a * b * m1 + 2 * a * c * m2 + 2 * b * c * m3
        variance = max(second - self.prefill_service_seconds_mean**2, 0.0)
        self.prefill_service_scv = variance / max(self.prefill_service_seconds_mean**2, _EPS)
        tail_prompt = isl.quantile(self.percentile_q)
        self.prefill_tail_seconds = profile.prefill_seconds(tail_prompt) + profile.kv_transfer_seconds(
            tail_prompt
        )
        self.ttft_reachable = self.prefill_tail_seconds <= slo.ttft_seconds
        self._decode_init()

    def _decode_init(self) -> None:
        w, prof, d = self.workload, self.profile, self.profile.decode
        self.output_tokens_mean = max(w.output_tokens_mean, 1.0)
        # A resident sequence holds its prompt plus, on average, half its output.
        self.context_tokens_mean = w.input_tokens_mean + self.output_tokens_mean / 2
        per_seq = d.b_seconds_per_context_token * self.context_tokens_mean + d.c_seconds_per_sequence
        tpot_budget = self.slo.tpot_seconds - d.a_seconds
        batch_tpot = math.floor(tpot_budget / per_seq + _EPS) if per_seq > 0 else prof.max_batch_size
        batch_kv = math.floor(prof.kv_capacity_tokens * KV_HEADROOM / max(self.context_tokens_mean, 1.0))
        self.decode_batch_limited_by = min(
            ("tpot", batch_tpot), ("kv", batch_kv), ("max-batch", prof.max_batch_size), key=lambda x: x[1]
        )[0]
        self.decode_batch_size = max(1, min(batch_tpot, batch_kv, prof.max_batch_size))
        self.tpot_reachable = batch_tpot >= 1
        self.decode_step_seconds = prof.decode_step_seconds(self.decode_batch_size, self.context_tokens_mean)
        # Mean residents per replica such that mean + z*sqrt(mean) <= B* (Poisson batch fluctuation).
        z = max(self._z, 0.0)
        root = (-z + math.sqrt(z * z + 4 * self.decode_batch_size)) / 2
        self.decode_mean_batch = max(min(root * root, DECODE_MAX_UTILIZATION * self.decode_batch_size), 1e-3)
        residency_seconds = self.output_tokens_mean * self.decode_step_seconds
        self.decode_rps_per_replica = self.decode_mean_batch / residency_seconds

    # ------------------------------------------------------------------------------------ prefill

    @property
    def prefill_rps_per_replica(self) -> float:
        return 1.0 / max(self.prefill_service_seconds_mean, _EPS)

    def wait_percentile_seconds(self, replicas: int, rate_rps: float, quantile: float | None = None) -> float:
        """Predicted queueing wait before prefill at `quantile` (default: the provisioning percentile);
        infinite when overloaded."""
        if rate_rps <= 0:
            return 0.0
        if replicas <= 0:
            return math.inf
        service = self.prefill_service_seconds_mean
        offered = rate_rps * service
        if offered >= replicas * (1 - 1e-6):
            return math.inf
        wait_probability = erlang_c(replicas, offered)
        tail = 1.0 - (self.percentile_q if quantile is None else quantile)
        if wait_probability <= tail:
            return 0.0
        variability = (self.workload.arrival_scv + self.prefill_service_scv) / 2.0
        decay_per_second = (replicas / service - rate_rps) / variability
        return math.log(wait_probability / tail) / decay_per_second

    def ttft_percentile_seconds(self, replicas: int, rate_rps: float) -> float:
        """Predicted TTFT at the provisioning percentile (infinite when the replicas cannot keep up)."""
        return self.wait_percentile_seconds(replicas, rate_rps) + self.prefill_tail_seconds

    def ttft_quantile_seconds(self, replicas: int, rate_rps: float, quantile: float) -> float:
        """Predicted TTFT at `quantile` (0..1): the wait at that quantile plus the prefill and KV transfer
        of a prompt at that quantile of the length distribution. The online correction compares an
        observed percentile with this prediction at the same percentile, never a different one."""
        prompt = self.isl.quantile(quantile)
        service = self.profile.prefill_seconds(prompt) + self.profile.kv_transfer_seconds(prompt)
        return self.wait_percentile_seconds(replicas, rate_rps, quantile) + service

    def prefill_replicas(self, rate_rps: float) -> int:
        """Fewest prefill replicas whose queueing wait fits in what the TTFT SLO leaves after the service
        time of a percentile prompt (0 at zero load).

        When that prompt alone exceeds the SLO, the budget for waiting is zero: the replicas are sized
        so that at most (1 - percentile) of requests wait at all. The budget shrinks continuously as
        prompts grow, so longer prompts never get fewer replicas.
        """
        if rate_rps <= 0:
            return 0
        wait_budget = max(self.slo.ttft_seconds - self.prefill_tail_seconds, 0.0)
        offered = rate_rps * self.prefill_service_seconds_mean
        replicas = max(1, math.ceil(offered / PREFILL_MAX_UTILIZATION - _EPS))
        while replicas < MAX_REPLICAS_SEARCH:
            if self.wait_percentile_seconds(replicas, rate_rps) <= wait_budget:
                return replicas
            replicas += 1
        return MAX_REPLICAS_SEARCH

    # ------------------------------------------------------------------------------------- decode

    def decode_replicas(self, rate_rps: float) -> int:
        """Fewest decode replicas that hold the TPOT SLO at `rate_rps` (0 at zero load)."""
        if rate_rps <= 0:
            return 0
        return min(MAX_REPLICAS_SEARCH, max(1, math.ceil(rate_rps / self.decode_rps_per_replica - _EPS)))

    def decode_concurrency(self, rate_rps: float) -> float:
        """Little's law: sequences resident in decode at `rate_rps`."""
        return rate_rps * self.output_tokens_mean * self.decode_step_seconds

    def predicted_tpot_seconds(self, batch_size: float) -> float:
        return self.profile.decode_step_seconds(max(batch_size, 1.0), self.context_tokens_mean)

    def tpot_quantile_seconds(self, mean_batch_size: float, quantile: float) -> float:
        """Predicted inter-token latency at `quantile` for replicas holding `mean_batch_size` sequences on
        average: the step time at that quantile of a Poisson-fluctuating batch (normal approximation)."""
        z = NormalDist().inv_cdf(min(max(quantile, 0.5), 0.9999))
        batch = max(mean_batch_size, 0.0)
        return self.predicted_tpot_seconds(batch + z * math.sqrt(batch))

    # ------------------------------------------------------------------------------------ layouts

    def sustainable_rps(self, prefill: int, decode: int) -> float:
        """Highest arrival rate a layout serves within both SLOs: min(mu_P(N_P), mu_D(N_D))."""
        decode_rps = decode * self.decode_rps_per_replica
        if prefill <= 0 or decode <= 0:
            return 0.0
        low, high = 0.0, prefill * self.prefill_rps_per_replica
        for _ in range(50):
            mid = (low + high) / 2
            if self.prefill_replicas(mid) <= prefill:
                low = mid
            else:
                high = mid
        return min(low, decode_rps)
