"""The capacity model's decode pool (`capacity` module docstring, "Decode"): how many sequences a decode
replica holds, the step time of the batch the pool settles at, and the fewest replicas whose sequences
get a slot within their TPOT slack.

A replica holds at most `c1 = min(maxBatchSize, KV / E[prompt + output], B_tpot)` sequences (the engine's
batch limit, the KV the router reserves per sequence, the largest batch whose step meets TPOT). The pool
is `N*c1` slots, each sequence occupying one for `(n - 1)` steps at the step time of the batch the pool
settles at (`mean_batch`: `N*B = rate*(n-1)*step(B+1)`). A sequence may wait for a slot as long as its
TPOT stays within the SLO: `(SLO - step)*(n - 1)` seconds, so long outputs absorb waits that short ones
cannot. `replicas` is the fewest whose share of sequences waiting no longer than that reaches the
provisioning quantile (Erlang C over the slots). When TPOT, not a hard limit, caps the batch, the engine
does not stop at `B_tpot`, so each replica is also loaded to a mean `m` with `m + z*sqrt(m) <= B_tpot`
(Poisson batch fluctuation).

Pure. Built by `capacity.CapacityModel` once per workload (its variants at other prefix-cache hit rates
share it: decode does not see the cache), which exposes it under its `decode_*` names.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dopd_operator.api import SloSpec
from dopd_operator.lengths import LengthDistribution
from dopd_operator.profile import PerformanceProfile
from dopd_operator.queueing import EPS, MAX_REPLICAS_SEARCH, erlang_c, fewest_meeting

if TYPE_CHECKING:
    from dopd_operator.capacity import Workload


class DecodeModel:
    """Slots, step time and replica counts of the decode pool for one profile, SLO and workload."""

    def __init__(
        self,
        profile: PerformanceProfile,
        slo: SloSpec,
        workload: Workload,
        osl: LengthDistribution,
        percentile_q: float,
        z: float,
        arrival_scv: float,
    ) -> None:
        """`percentile_q` and `z`: the provisioning quantile and its normal deviate; `arrival_scv`: the
        arrivals' burstiness as the capacity model bounds it."""
        self.profile, self.percentile_q, self._arrival_scv = profile, percentile_q, arrival_scv
        prof, d = profile, profile.decode
        self.output_tokens_mean = max(workload.output_tokens_mean, 1.0)
        # The sequences in a batch at any moment are length-biased: one with a long output stays long.
        # Averaged over residents (weighted by output length), a sequence holds its prompt plus
        # E[n^2] / (2 E[n]) generated tokens (E[n]/2 only if every output were as long), and the router
        # has reserved KV for its prompt and whole output, E[n^2] / E[n]. For the Azure outputs that is
        # 30% more than E[n]: sized on the mean, a full decode pool runs 5% slower than planned. Where
        # the (prompt, output) pairs are known, the prompts are weighted by their own outputs too: on
        # the Azure trace long prompts get shorter answers (correlation -0.17), and the residents'
        # context is 11% below what independent lengths give.
        prompt_tokens_resident, output_tokens_resident = _resident_lengths(workload, osl)
        self.context_tokens_mean = prompt_tokens_resident + output_tokens_resident / 2
        reserved = max(prompt_tokens_resident + output_tokens_resident, 1.0)
        per_seq = d.b_seconds_per_context_token * self.context_tokens_mean + d.c_seconds_per_sequence
        self._step_seconds_per_sequence = per_seq
        tpot_budget = slo.tpot_seconds - d.a_seconds
        batch_tpot = tpot_budget / per_seq if per_seq > 0 else math.inf
        batch_kv = prof.kv_capacity_tokens / reserved
        self.batch_limited_by, slots = min(
            ("tpot", batch_tpot),
            ("kv", batch_kv),
            ("max-batch", float(prof.max_batch_size)),
            key=lambda x: x[1],
        )
        self.tpot_reachable = batch_tpot >= 1.0
        self.slots = max(slots, 1.0)
        self.batch_size = max(1, math.floor(self.slots + EPS))
        self.step_seconds = prof.decode_step_seconds(self.slots, self.context_tokens_mean)
        steps = np.maximum(osl.grid - 1.0, 0.0)
        self.steps_mean = float(np.mean(steps))
        self._residency_scv = float(np.var(steps)) / max(self.steps_mean**2, EPS)
        # Seconds each output may wait for a slot and still meet TPOT (the KV transfer came before the
        # first token, in TTFT); outputs of one token have no TPOT and always meet it.
        per_token = slo.tpot_seconds - self.step_seconds
        slack = per_token * steps
        self._slack = np.where(steps > 0, np.maximum(slack, 0.0), np.inf)
        # Mean seconds a sequence may wait for a slot before it is late (one-token outputs never are:
        # they count as no wait). By Little's law at most `rate * slack_seconds_mean` sequences wait
        # and can still join in time.
        self.slack_seconds_mean = float(np.mean(np.where(np.isfinite(self._slack), self._slack, 0.0)))
        # Mean residents per replica such that mean + z*sqrt(mean) <= B_tpot (TPOT-capped batches only).
        z = max(z, 0.0)
        root = (-z + math.sqrt(z * z + 4 * self.slots)) / 2
        self._fluctuating_mean = max(root * root, 1e-3)
        # A full replica's rate: every slot taken, each step at B*.
        self.rps_per_replica = self.slots / max(self.steps_mean * self.step_seconds, EPS)

    def mean_batch(self, replicas: float, rate_rps: float) -> float:
        """Mean sequences per decode replica once the pool settles at `rate_rps`; the slot limit B* where
        it cannot settle below it (sequences queue for slots). Residents slow the step and a slower step
        keeps them longer: by Little's law `B = rate * steps * step(B + 1) / N` (a resident shares its
        step with B others on average, a Poisson batch seen from inside), linear in B for the linear
        step model. Sizing at B* instead (every slot always taken) over-provisioned: on the Azure trace
        four replicas settle at 176 sequences each (19 ms steps), where B* = 256 (27 ms) called for five."""
        if rate_rps <= 0 or replicas <= 0:
            return 0.0
        tokens_per_second = rate_rps * self.steps_mean
        per_sequence = self._step_seconds_per_sequence
        headroom = replicas - tokens_per_second * per_sequence
        if headroom <= 0:
            return self.slots
        fixed = self.profile.decode.a_seconds
        return min(tokens_per_second * (fixed + per_sequence) / headroom, self.slots)

    def residency_seconds(self, replicas: float, rate_rps: float, every_slot_taken: bool = False) -> float:
        """Mean seconds a sequence holds its slot at `rate_rps` on `replicas`: its steps at the batch the
        pool settles at, or, `every_slot_taken`, at the full batch B*."""
        batch = self.slots if every_slot_taken else min(self.mean_batch(replicas, rate_rps) + 1.0, self.slots)
        return self.steps_mean * self.tpot_seconds(batch)

    def attainment(self, replicas: float, rate_rps: float, every_slot_taken: bool = False) -> float:
        """Predicted share of sequences that get a decode slot within their TPOT slack (`every_slot_taken`:
        were every step that of a full batch)."""
        if rate_rps <= 0 or self.steps_mean <= 0:
            return 1.0
        residency = self.residency_seconds(replicas, rate_rps, every_slot_taken)
        servers = replicas * self.slots
        offered = rate_rps * residency
        if offered >= servers * (1 - 1e-9):
            return 0.0
        wait_probability = erlang_c(servers, offered)
        variability = max((self._arrival_scv + self._residency_scv) / 2.0, 1e-3)
        decay = (servers / residency - rate_rps) / variability
        return float(np.mean(1.0 - wait_probability * np.exp(-decay * self._slack)))

    def replicas(self, rate_rps: float, every_slot_taken: bool = False) -> int:
        """Fewest decode replicas that hold the TPOT SLO at `rate_rps` (0 at zero load).

        `every_slot_taken`: the fewest that would hold it were every step that of a full batch B*, as
        if each sequence held its slot for its steps at B*'s step time (more replicas: the pool then
        settles well below B*, and a rise fills its slots before it slows the steps). The planner's
        slot headroom (`planner.plan`); the default is the fewest that do hold it, the model's answer."""
        if rate_rps <= 0:
            return 0
        if self.steps_mean <= 0:
            return 1
        tpot_capped = self.batch_limited_by == "tpot"

        def meets(replicas: int) -> bool:
            if self.attainment(replicas, rate_rps, every_slot_taken) < self.percentile_q - EPS:
                return False
            residents = rate_rps * self.residency_seconds(replicas, rate_rps, every_slot_taken)
            return not tpot_capped or residents / replicas <= self._fluctuating_mean + EPS

        # Fewer replicas than the pool's token rate at the per-sequence step cost never settle.
        start = max(1, math.floor(rate_rps * self.steps_mean * self._step_seconds_per_sequence + EPS) + 1)
        return fewest_meeting(meets, start, MAX_REPLICAS_SEARCH, floor=1)

    def concurrency(self, rate_rps: float, replicas: int) -> float:
        """Little's law: sequences resident in decode at `rate_rps` on `replicas`, each for its steps at
        the batch the pool settles at."""
        if rate_rps <= 0:
            return 0.0
        return rate_rps * self.residency_seconds(max(replicas, 1), rate_rps)

    def tpot_seconds(self, batch_size: float) -> float:
        """The step time (TPOT) of a batch of `batch_size` sequences at the residents' mean context."""
        return self.profile.decode_step_seconds(max(batch_size, 1.0), self.context_tokens_mean)

    def tpot_mean_seconds(self, mean_batch_size: float) -> float:
        """Predicted mean inter-token latency, over tokens, for replicas holding `mean_batch_size`
        sequences on average. A step of B sequences yields B tokens, so the step a token sees is
        size-biased: that of the batch E[B^2]/E[B], one more than the mean for a Poisson batch."""
        return self.tpot_seconds(max(mean_batch_size, 0.0) + 1.0)


def _resident_lengths(workload: Workload, osl: LengthDistribution) -> tuple[float, float]:
    """(prompt, output) tokens of the mean decode resident: lengths weighted by their outputs (a
    sequence stays resident for its output's steps). Known pairs are weighted pair by pair; otherwise
    the two are taken as independent (the prompt's mean, and E[n^2] / E[n] of the outputs)."""
    w = workload
    known_in, known_out = w.input_tokens_known, w.output_tokens_known
    if known_in is not None and known_out is not None and len(known_in) == len(known_out) > 0:
        outputs = np.maximum(np.asarray(known_out, dtype=np.float64), 1.0)
        prompts = np.asarray(known_in, dtype=np.float64)
        weights = outputs / float(np.sum(outputs))
        return float(np.sum(weights * prompts)), float(np.sum(weights * outputs))
    outputs = np.maximum(osl.grid, 1.0)
    return w.input_tokens_mean, float(np.mean(outputs**2) / np.mean(outputs))
