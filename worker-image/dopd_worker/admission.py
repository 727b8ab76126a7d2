"""SLO-aware admission: admit a request only while it can still meet its TTFT SLO. Pure: no clock, no
I/O; times come in as arguments.

One policy, two callers: the router (`router_admission.RouterAdmission`, at the OpenAI entry point, before
a request is queued) and the simulator (`dopd_sim.admission`, before a trace request enters the prefill
queue), so the overload benchmark measures the router's own rule.

Prediction (a fluid model of the prefill pool, `predict_ttft_seconds`): a request waits in the queue
until the workers have taken the queued tokens the scheduling policy serves before it, at the pool's
measured rate R (tokens per busy worker-second times usable workers). Under FIFO that is every queued
token; under length-aware it is the queued prompts no longer than it plus the shorter prompts admitted
while it waits, a busy period `ahead / (R - overtaking rate)`, capped by the aging bound after which it
goes before every younger prompt (`admission_queue`). With nothing queued ahead it may still find no
worker with room for it (each holds a batch over its token budget, as long prompts do): then it waits
for the least-loaded worker to finish the excess, on average half of it. Then it waits for the batch
running on its worker and runs in the next one: the measured dispatch-to-first-token time of prompts of
its length (at least its own tokens at one worker's rate). The rates are measured
(`pool_meters.PrefillRateMeter`), so the prediction needs no profile and follows a slow engine, a
decode pool that holds prefill slots, or a batch mix that changes.

Decision (`decide`), in this order:
1. no usable prefill or decode worker: 503 (`no_prefill_worker`, `no_decode_worker`), `Retry-After`;
2. the decode pool is past the request's class share of its limits (interactive 1.0, standard 0.95,
   batch 0.9 by default): no decode worker would stay within that share of its KV cache (and batch
   slots) with this sequence, 429 (`decode_full`); or, with a TPOT SLO, the measured inter-token
   latency is above that share of the SLO, 429 (`decode_slow`). A decode pool at its limit stops
   taking new sequences before every admitted request misses its TPOT, keeping the last room for the
   classes shed last;
3. the predicted TTFT is above the request's class threshold (a fraction of the TTFT SLO: interactive
   0.95, standard 0.8, batch 0.5 by default, so batch traffic is shed first and interactive last): 429
   (`predicted_ttft`), with `Retry-After` the seconds the backlog needs to drain under the threshold;
4. else admitted, with a queue deadline: a request still queued at `arrival + queue TTL - its
   dispatch-to-first-token time` can no longer meet the SLO and is answered 429 (`expired`) instead
   of being served late.
A request that finds no work ahead of it is admitted whatever its prediction (shedding it frees
nothing), and while the rate is not yet measured every request is admitted (the deadline still holds).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dopd_worker.admission_queue import QueueView


class Priority(enum.Enum):
    """Request classes, from the `x-dopd-priority` header; shed in the reverse of this order."""

    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"


PRIORITY_HEADER = "x-dopd-priority"
DEFAULT_PRIORITY = Priority.STANDARD


class Reason(enum.Enum):
    """Why a request was not served; the `reason` label of `dopd_requests_rejected_total`."""

    PREDICTED_TTFT = "predicted_ttft"
    DECODE_FULL = "decode_full"
    DECODE_SLOW = "decode_slow"
    NO_PREFILL_WORKER = "no_prefill_worker"
    NO_DECODE_WORKER = "no_decode_worker"
    EXPIRED = "expired"


# The share of the TTFT SLO each class's predicted TTFT may reach. Below 1 leaves room for what the
# fluid prediction misses (the spread of batch times, a worker's jitter): at 0.8 the simulator's overload
# benchmark (docs/benchmarks/overload.md, the GPU budget binding at twice the sustainable load) keeps
# all but a few in 10^4 admitted requests within the SLO.
DEFAULT_SLO_FRACTIONS: Mapping[Priority, float] = MappingProxyType(
    {Priority.INTERACTIVE: 0.95, Priority.STANDARD: 0.8, Priority.BATCH: 0.5}
)
# The share of the decode pool's limits (KV cache and batch slots; the TPOT SLO for its measured
# inter-token latency) a class may fill before it is shed. Narrower than the TTFT shares: the planner
# sizes a decode pool to run near those limits at normal load, so a batch share of 0.5 would shed batch
# traffic with no overload at all.
DEFAULT_DECODE_FRACTIONS: Mapping[Priority, float] = MappingProxyType(
    {Priority.INTERACTIVE: 1.0, Priority.STANDARD: 0.95, Priority.BATCH: 0.9}
)


def _check_fractions(name: str, fractions: Mapping[Priority, float]) -> Mapping[Priority, float]:
    """A frozen copy; ValueError unless every class has a share in (0, 4] not rising toward batch."""
    missing = [p.value for p in Priority if p not in fractions]
    if missing:
        raise ValueError(f"{name} needs every priority class; missing {', '.join(missing)}")
    text = ", ".join(f"{p.value}={fractions[p]:g}" for p in Priority)
    if not all(0 < fractions[p] <= 4 for p in Priority):
        raise ValueError(f"{name} must be in (0, 4], got {text}")
    order = [fractions[p] for p in Priority]
    if order != sorted(order, reverse=True):
        raise ValueError(
            f"{name} must not rise from interactive to standard to batch (interactive traffic is shed "
            f"last), got {text}"
        )
    return MappingProxyType({p: float(fractions[p]) for p in Priority})


@dataclass(frozen=True)
class AdmissionConfig:
    ttft_slo_seconds: float
    slo_fractions: Mapping[Priority, float] = field(default_factory=lambda: DEFAULT_SLO_FRACTIONS)
    queue_ttl_seconds: float | None = None  # None: the TTFT SLO (past it, no request can meet it)
    tpot_slo_seconds: float | None = None  # None: the decode pace is not checked
    decode_fractions: Mapping[Priority, float] = field(default_factory=lambda: DEFAULT_DECODE_FRACTIONS)
    unavailable_retry_after_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.ttft_slo_seconds > 0:
            raise ValueError(f"ttft_slo_seconds must be positive, got {self.ttft_slo_seconds}")
        object.__setattr__(self, "slo_fractions", _check_fractions("slo_fractions", self.slo_fractions))
        object.__setattr__(
            self, "decode_fractions", _check_fractions("decode_fractions", self.decode_fractions)
        )
        if self.queue_ttl_seconds is not None and not self.queue_ttl_seconds > 0:
            raise ValueError(f"queue_ttl_seconds must be positive, got {self.queue_ttl_seconds}")
        if self.tpot_slo_seconds is not None and not self.tpot_slo_seconds > 0:
            raise ValueError(f"tpot_slo_seconds must be positive, got {self.tpot_slo_seconds}")
        if not self.unavailable_retry_after_seconds > 0:
            raise ValueError("unavailable_retry_after_seconds must be positive")

    def threshold_seconds(self, priority: Priority) -> float:
        return self.slo_fractions[priority] * self.ttft_slo_seconds

    def itl_threshold_seconds(self, priority: Priority) -> float | None:
        if self.tpot_slo_seconds is None:
            return None
        return self.decode_fractions[priority] * self.tpot_slo_seconds

    @property
    def ttl_seconds(self) -> float:
        return self.queue_ttl_seconds if self.queue_ttl_seconds is not None else self.ttft_slo_seconds


@dataclass(frozen=True)
class PoolState:
    """The serving pools as the caller sees them when a request arrives."""

    prefill_workers: int  # usable (ready, not draining)
    decode_workers: int
    tokens_per_second_per_worker: float | None  # measured prefill rate; None: not measured yet
    service_seconds: float | None  # measured dispatch to first token at this length; None: not yet
    inflight_tokens: int  # prompts dispatched to prefill workers, first token not back
    room_wait_tokens: int  # tokens the least-loaded worker must finish before this prompt fits on it
    queue: QueueView  # the queued work before this prompt (admission_queue.AdmissionQueue.view)
    # The least any decode worker would be filled, as a share of its KV cache (or batch slots), with this
    # request's prompt + max_tokens reserved; None: unknown (not checked).
    decode_fill: float | None = None
    decode_itl_seconds: float | None = None  # measured decode pace; None: idle or not measured


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    reason: Reason | None  # None when admitted
    status: int  # HTTP status: 200 admitted, 429 shed, 503 nothing ready
    priority: Priority
    predicted_ttft_seconds: float | None  # None: the prefill rate is not measured yet
    threshold_seconds: float
    queue_deadline_seconds: float | None  # admitted: leave the queue unserved if still waiting then
    retry_after_seconds: int | None  # shed: when a retry may succeed (whole seconds, at least 1)
    message: str


def predict_ttft_seconds(prompt_tokens: int, pool: PoolState) -> float | None:
    """Queue wait plus dispatch to first token (module docstring); None while the pool is not measured
    or has no worker."""
    rate = pool.tokens_per_second_per_worker
    if rate is None or rate <= 0 or pool.service_seconds is None or pool.prefill_workers <= 0:
        return None
    pool_rate = rate * pool.prefill_workers
    queue = pool.queue
    # A batch in flight is, on average, half done when a request arrives.
    room_wait = 0.5 * pool.room_wait_tokens / rate
    queue_wait = 0.0
    if queue.tokens_ahead > 0:
        spare = pool_rate - queue.overtaking_tokens_per_second
        queue_wait = queue.tokens_ahead / spare if spare > 0 else math.inf
        if queue.aging_seconds is not None:
            queue_wait = min(queue_wait, queue.aging_seconds + queue.tokens_total / pool_rate)
    return room_wait + queue_wait + own_prefill_seconds(prompt_tokens, pool)


def own_prefill_seconds(prompt_tokens: int, pool: PoolState) -> float:
    """Dispatch to first token for this prompt: the measured time, or its own tokens at one worker's
    rate when that is longer (a prompt larger than the batches measured); 0 while not measured."""
    rate = pool.tokens_per_second_per_worker
    if rate is None or rate <= 0 or pool.service_seconds is None:
        return 0.0
    return max(pool.service_seconds, prompt_tokens / rate)


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(min(seconds, 3600.0)))


def decide(
    prompt_tokens: int,
    priority: Priority,
    arrival_seconds: float,
    pool: PoolState,
    config: AdmissionConfig,
) -> Verdict:
    """Admit or shed one request (module docstring for the order of the checks)."""
    threshold = config.threshold_seconds(priority)
    predicted = predict_ttft_seconds(prompt_tokens, pool)

    def shed(reason: Reason, status: int, retry_seconds: float, message: str) -> Verdict:
        return Verdict(
            False, reason, status, priority, predicted, threshold, None, _retry_after(retry_seconds), message
        )

    if pool.prefill_workers <= 0:
        return shed(
            Reason.NO_PREFILL_WORKER,
            503,
            config.unavailable_retry_after_seconds,
            "no prefill worker is ready to serve the request",
        )
    if pool.decode_workers <= 0:
        return shed(
            Reason.NO_DECODE_WORKER,
            503,
            config.unavailable_retry_after_seconds,
            "no decode worker is ready to serve the request",
        )
    room = config.decode_fractions[priority]
    if pool.decode_fill is not None and pool.decode_fill > room:
        return shed(
            Reason.DECODE_FULL,
            429,
            1.0,
            f"overloaded: the decode workers' KV caches would be {pool.decode_fill:.0%} full with this "
            f"request, above the {room:.0%} a {priority.value} request is admitted at",
        )
    itl_threshold = config.itl_threshold_seconds(priority)
    itl = pool.decode_itl_seconds
    if itl_threshold is not None and itl is not None and itl > itl_threshold:
        return shed(
            Reason.DECODE_SLOW,
            429,
            1.0,
            f"overloaded: the decode workers produce a token every {itl * 1000:.1f} ms, above the "
            f"{itl_threshold * 1000:.1f} ms a {priority.value} request is admitted at "
            f"({config.decode_fractions[priority]:g} x TPOT SLO {config.tpot_slo_seconds:g}s)",
        )
    idle = pool.inflight_tokens == 0 and pool.queue.tokens_ahead == 0
    if predicted is not None and predicted > threshold and not idle:
        return shed(
            Reason.PREDICTED_TTFT,
            429,
            predicted - threshold,
            f"overloaded: predicted time to first token {predicted:.2f}s is above the "
            f"{threshold:.2f}s this {priority.value} request may wait ({config.slo_fractions[priority]:g} "
            f"x TTFT SLO {config.ttft_slo_seconds:g}s)",
        )
    deadline = arrival_seconds + max(config.ttl_seconds - own_prefill_seconds(prompt_tokens, pool), 0.0)
    return Verdict(True, None, 200, priority, predicted, threshold, deadline, None, "admitted")


def expired(
    prompt_tokens: int, priority: Priority, waited_seconds: float, pool: PoolState, config: AdmissionConfig
) -> Verdict:
    """The answer to an admitted request still queued at its deadline; `pool` is the pools now (they say
    when a retry may fit)."""
    predicted = predict_ttft_seconds(prompt_tokens, pool)
    threshold = config.threshold_seconds(priority)
    retry = (predicted - threshold) if predicted is not None else config.ttl_seconds
    return Verdict(
        False,
        Reason.EXPIRED,
        429,
        priority,
        predicted,
        threshold,
        None,
        _retry_after(retry),
        f"overloaded: the request waited {waited_seconds:.2f}s in the queue, past the point where it "
        f"could still meet the TTFT SLO of {config.ttft_slo_seconds:g}s (queue TTL {config.ttl_seconds:g}s)",
    )
