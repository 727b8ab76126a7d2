"""The router's side of admission (`admission.py` holds the policy): the pool state from the router's
worker registry and queue, the prefill rate meter, the rejection counters, and the OpenAI-style 429/503
answer with `Retry-After` and the reason.

Callers: `router.Router` (admission at entry, the meter on prefill dispatch and release, the queued
tokens and the TTL while a request waits) and `openai_api.OpenAIServer` (the priority header, the
answer). Thin on purpose: every decision is `admission.decide` / `admission.expired`, which the
simulator calls too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import JSONResponse

from dopd_worker.admission import (
    DEFAULT_PRIORITY,
    DEFAULT_SLO_FRACTIONS,
    PRIORITY_HEADER,
    AdmissionConfig,
    PoolState,
    Priority,
    Reason,
    Verdict,
    decide,
    expired,
)
from dopd_worker.admission_queue import AdmissionQueue, QueuedTokens, room_wait_tokens
from dopd_worker.metrics import Metrics
from dopd_worker.pool_meters import DecodePaceMeter, PrefillRateMeter
from dopd_worker.scheduler import SchedulerConfig


class AdmissionError(Exception):
    """A request the router sheds (at entry, or when it expires in the queue); carries the verdict."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class WorkerView(Protocol):
    """What admission reads of a worker (`router.WorkerState`)."""

    @property
    def role(self) -> str: ...
    @property
    def usable(self) -> bool: ...
    @property
    def kv_usage(self) -> float: ...
    @property
    def capacity_tokens(self) -> int: ...
    @property
    def inflight_tokens(self) -> int: ...


def parse_priority(value: str | None) -> Priority:
    """The class named by the `x-dopd-priority` header; standard when absent. ValueError when unknown."""
    if value is None or not value.strip():
        return DEFAULT_PRIORITY
    try:
        return Priority(value.strip().lower())
    except ValueError:
        names = ", ".join(p.value for p in Priority)
        raise ValueError(f"header {PRIORITY_HEADER} must be one of {names}, got {value!r}") from None


@dataclass
class RouterAdmission:
    config: AdmissionConfig
    scheduler: SchedulerConfig
    max_prompt_tokens: int
    metrics: Metrics
    meter: PrefillRateMeter = field(default_factory=PrefillRateMeter)
    pace: DecodePaceMeter = field(default_factory=DecodePaceMeter)  # fed with token gaps by openai_api
    queue: AdmissionQueue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = AdmissionQueue(
            self.scheduler.policy, self.scheduler.aging_seconds, self.max_prompt_tokens
        )

    @property
    def queued(self) -> QueuedTokens:
        """The queued prompts' tokens; the router adds a prompt when it queues it, removes it when it
        leaves the queue (dispatched, expired, cancelled)."""
        return self.queue.queued

    def pool(
        self, workers: Iterable[WorkerView], prompt_tokens: int, kv_tokens: int, now_seconds: float
    ) -> PoolState:
        """The pools for a prompt of `prompt_tokens` that would reserve `kv_tokens` on a decode worker.
        A decode worker's fill is its KV usage (the larger of its own report and the router's
        reservations, as `Router._pick_decode` reads it) with `kv_tokens` more."""
        prefill = [w for w in workers if w.role == "prefill" and w.usable]
        budget = self.scheduler.token_budget
        decode = [w for w in workers if w.role == "decode" and w.usable]
        fill = min(
            (
                max(w.kv_usage, w.inflight_tokens / w.capacity_tokens) + kv_tokens / w.capacity_tokens
                for w in decode
            ),
            default=None,
        )
        return PoolState(
            prefill_workers=len(prefill),
            decode_workers=len(decode),
            tokens_per_second_per_worker=self.meter.tokens_per_second(now_seconds),
            service_seconds=self.meter.service_seconds(prompt_tokens, now_seconds),
            inflight_tokens=sum(w.inflight_tokens for w in prefill),
            room_wait_tokens=room_wait_tokens([w.inflight_tokens for w in prefill], prompt_tokens, budget),
            queue=self.queue.view(prompt_tokens, now_seconds),
            decode_fill=fill,
            decode_itl_seconds=self.pace.itl_seconds(now_seconds),
        )

    def admit(
        self,
        workers: Iterable[WorkerView],
        prompt_tokens: int,
        kv_tokens: int,
        priority: Priority,
        now_seconds: float,
    ) -> Verdict:
        pool = self.pool(workers, prompt_tokens, kv_tokens, now_seconds)
        verdict = decide(prompt_tokens, priority, now_seconds, pool, self.config)
        if verdict.admitted:
            self.queue.admitted.add(prompt_tokens, now_seconds)
        else:
            self._count(verdict)
        return verdict

    def expire(
        self,
        workers: Iterable[WorkerView],
        prompt_tokens: int,
        kv_tokens: int,
        priority: Priority,
        waited_seconds: float,
        now_seconds: float,
    ) -> Verdict:
        pool = self.pool(workers, prompt_tokens, kv_tokens, now_seconds)
        verdict = expired(prompt_tokens, priority, waited_seconds, pool, self.config)
        self._count(verdict)
        return verdict

    def details(self, now_seconds: float) -> dict[str, Any]:
        """For the router's /health: the SLO it admits against and the rate it measures."""
        rate = self.meter.tokens_per_second(now_seconds)
        service = self.meter.service_seconds(None, now_seconds)
        return {
            "ttft_slo_seconds": self.config.ttft_slo_seconds,
            "slo_fractions": {p.value: f for p, f in self.config.slo_fractions.items()},
            "queue_ttl_seconds": self.config.ttl_seconds,
            "prefill_tokens_per_second_per_worker": None if rate is None else round(rate, 1),
            "prefill_service_seconds": None if service is None else round(service, 4),
            "tpot_slo_seconds": self.config.tpot_slo_seconds,
            "decode_itl_seconds": _rounded(self.pace.itl_seconds(now_seconds)),
            "queued_tokens": self.queued.total_tokens,
        }

    def _count(self, verdict: Verdict) -> None:
        """Shed at entry: `dopd_requests_rejected_total{reason}`; admitted, then expired in the queue:
        `dopd_requests_expired_total`. Both were counted in `dopd_requests_arrived_total` first."""
        assert verdict.reason is not None
        labels = {"role": self.metrics.role, "model": self.metrics.model, "priority": verdict.priority.value}
        if verdict.reason is Reason.EXPIRED:
            self.metrics.requests_expired_total.labels(**labels).inc()
        else:
            self.metrics.requests_rejected_total.labels(**labels, reason=verdict.reason.value).inc()


def rejection_response(verdict: Verdict) -> JSONResponse:
    """The OpenAI-shaped error (`{"error": {"message", "type", "code"}}`, as `serving.error_response`) with
    the reason, the prediction behind it and `Retry-After`."""
    assert verdict.reason is not None and verdict.retry_after_seconds is not None
    return JSONResponse(
        {"error": rejection_body(verdict)},
        status_code=verdict.status,
        headers={"Retry-After": str(verdict.retry_after_seconds)},
    )


def rejection_body(verdict: Verdict) -> dict[str, Any]:
    """The error object of a shed request (also sent as an SSE error event when a stream expires)."""
    assert verdict.reason is not None
    predicted = verdict.predicted_ttft_seconds
    return {
        "message": verdict.message,
        "type": "rate_limit_exceeded" if verdict.status == 429 else "unavailable",
        "code": verdict.status,
        "reason": verdict.reason.value,
        "priority": verdict.priority.value,
        "predicted_ttft_seconds": None if predicted is None else round(predicted, 3),
        "threshold_seconds": round(verdict.threshold_seconds, 3),
        "retry_after_seconds": verdict.retry_after_seconds,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def admission_config(
    ttft_slo_seconds: float | None,
    slo_fractions: Iterable[str],
    queue_ttl_seconds: float | None,
    tpot_slo_seconds: float | None = None,
) -> AdmissionConfig | None:
    """The `dopd router` flags as a config; None (admission off) without a TTFT SLO. `slo_fractions` are
    `CLASS=FRACTION` items overriding `admission.DEFAULT_SLO_FRACTIONS`. ValueError on a bad item."""
    items = list(slo_fractions)
    if ttft_slo_seconds is None:
        if items or queue_ttl_seconds is not None or tpot_slo_seconds is not None:
            raise ValueError(
                "--admission-slo-fraction, --queue-ttl-seconds and --tpot-slo-seconds need --ttft-slo-seconds"
            )
        return None
    fractions = dict(DEFAULT_SLO_FRACTIONS)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            fractions[parse_priority(name)] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            names = ", ".join(p.value for p in Priority)
            raise ValueError(
                f"--admission-slo-fraction takes CLASS=FRACTION with CLASS in {names}, got {item!r}"
            )
    return AdmissionConfig(
        ttft_slo_seconds, fractions, queue_ttl_seconds=queue_ttl_seconds, tpot_slo_seconds=tpot_slo_seconds
    )
