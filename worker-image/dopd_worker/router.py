"""The router's core: worker registry (discovery + health polls), prefill dispatch through the pure
`scheduler.PrefillQueue`, decode choice by least KV usage, and one request's life as an async stream of
token ids. The OpenAI HTTP surface on top of it lives in `openai_api.py`.

A request waits in the prefill queue until the policy gives it a prefill worker; the router then picks
the decode worker with the least KV usage among those with room for its prompt + max_tokens (waiting
while none has) and calls its /generate with that prefill worker's URL (the
decode worker pulls the prefill and the KV transfer). The prefill worker's slot is released when the
first token arrives. Before the first token a request may move (`generate`): refusals by a draining or
vanished worker go elsewhere without using a retry, failures are retried up to `max_retries` times;
after it, a failure ends the stream with an error (docs/drain.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import httpx

from dopd_worker.admission import DEFAULT_PRIORITY, Priority, Verdict
from dopd_worker.discovery import Discovery, WorkerSet
from dopd_worker.metrics import Metrics
from dopd_worker.router_admission import AdmissionError, RouterAdmission
from dopd_worker.sampling import SamplingParams
from dopd_worker.scheduler import Lane, PrefillQueue, PrefillWorkerLoad, QueuedPrompt, SchedulerConfig
from dopd_worker.serving import DECODE_FULL_ERROR, DRAINING_ERROR, PREFILL_REFUSED_ERROR

# Refusals: the worker did no work for the request, so sending it elsewhere costs nothing and is safe.
_REFUSALS = frozenset({DRAINING_ERROR, PREFILL_REFUSED_ERROR})

log = logging.getLogger(__name__)


class RouterError(Exception):
    """A request the router cannot serve; `status` is the HTTP status the client gets."""

    def __init__(self, status: int, message: str, kind: str = "server_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


@dataclass
class WorkerState:
    url: str
    role: str  # prefill | decode
    lane: Lane = Lane.SHARED
    present: bool = True  # listed by discovery
    healthy: bool = False  # last health poll answered ok (not draining)
    kv_usage: float = 0.0
    capacity_tokens: int = 1
    free_tokens: int | None = None  # decode: KV tokens free at the last health poll (None: not reported)
    inflight_tokens: int = 0  # prefill: prompts dispatched, first token not yet back; decode: reserved
    inflight_long: int = 0
    inflight_requests: int = 0

    @property
    def usable(self) -> bool:
        return self.present and self.healthy


@dataclass
class Generation:
    """One request as the router runs it."""

    prompt_ids: list[int]
    sampling: SamplingParams
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    arrival_seconds: float = field(default_factory=time.monotonic)
    queue_seconds: float = 0.0
    first_token_seconds: float | None = None
    finish_reason: str | None = None
    decode_url: str | None = None
    prefill_url: str | None = None
    tokens: list[int] = field(default_factory=list)
    # admission (router_admission): the request's class, and when it leaves the queue unserved
    priority: Priority = DEFAULT_PRIORITY
    queue_deadline_seconds: float | None = None


class Router:
    def __init__(
        self,
        scheduler: SchedulerConfig,
        metrics: Metrics,
        max_retries: int,
        health_interval_seconds: float = 0.2,
        queue_timeout_seconds: float = 600.0,
        admission: RouterAdmission | None = None,
    ) -> None:
        self.queue_timeout_seconds = queue_timeout_seconds
        self.admission = admission  # None: every request is queued (no SLO given)
        self.queue = PrefillQueue(scheduler)
        self.metrics = metrics
        self.max_retries = max_retries
        self.health_interval_seconds = health_interval_seconds
        self.workers: dict[str, WorkerState] = {}
        self._waiters: dict[str, tuple[asyncio.Future[str], int]] = {}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(600.0, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        self.running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- worker registry -------------------------------------------------------------------------
    def apply(self, workers: WorkerSet) -> None:
        wanted: dict[str, tuple[str, Lane]] = {u: ("prefill", Lane.SHARED) for u in workers.prefill}
        wanted.update({u: ("prefill", Lane.LONG) for u in workers.prefill_long})
        wanted.update({u: ("decode", Lane.SHARED) for u in workers.decode})
        for url, state in self.workers.items():
            state.present = url in wanted
        for url, (role, lane) in wanted.items():
            known = self.workers.get(url)
            if known is None or known.role != role:
                self.workers[url] = WorkerState(url, role, lane)
                task = asyncio.get_running_loop().create_task(self._poll_one(self.workers[url]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                known.lane = lane
        log.info(
            "workers: %s; draining: %s",
            {u: s.role for u, s in self.workers.items() if s.present},
            list(workers.draining),
        )
        self.dispatch()

    async def _poll_one(self, state: WorkerState) -> None:
        try:
            resp = await self._client.get(f"{state.url}/health", timeout=2.0)
            body = resp.json()
            state.healthy = resp.status_code == 200 and body.get("status") == "ok"
            state.kv_usage = float(body.get("kv_usage", 0.0))
            state.capacity_tokens = max(1, int(body.get("capacity_tokens", 1)))
            free = body.get("free_tokens")
            state.free_tokens = None if free is None else max(0, int(free))
        except (httpx.HTTPError, ValueError):
            state.healthy = False
        self.dispatch()

    async def poll_forever(self) -> None:
        while True:
            for url, state in list(self.workers.items()):
                if not state.present and state.inflight_requests == 0:
                    del self.workers[url]
            await asyncio.gather(*(self._poll_one(s) for s in list(self.workers.values())))
            await asyncio.sleep(self.health_interval_seconds)

    async def run_discovery(self, discovery: Discovery) -> None:
        await discovery.run(self.apply)

    def _mark_unhealthy(self, url: str) -> None:
        state = self.workers.get(url)
        if state is not None:
            state.healthy = False

    # ---- prefill dispatch ------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Hand queued prompts to prefill workers while the policy finds room."""
        now = time.monotonic()
        while True:
            loads = [
                PrefillWorkerLoad(s.url, s.lane, s.inflight_tokens, s.inflight_long)
                for s in self.workers.values()
                if s.role == "prefill" and s.usable
            ]
            assignment = self.queue.next_assignment(now, loads)
            if assignment is None:
                break
            log.debug("dispatch %s -> %s; loads %s", assignment.request_id, assignment.worker, loads)
            waiter, prompt_tokens = self._waiters.pop(assignment.request_id, (None, 0))
            if waiter is not None and not waiter.done():
                # Account right here, not when the waiter wakes: the next pass of this loop must see it.
                state = self.workers[assignment.worker]
                state.inflight_tokens += prompt_tokens
                state.inflight_long += int(self.queue.is_long(prompt_tokens))
                state.inflight_requests += 1
                if self.admission is not None:
                    self.admission.meter.started(state.url, assignment.request_id, now)
                waiter.set_result(assignment.worker)
        self._gauges()

    def _gauges(self) -> None:
        labels = {"role": "router", "model": self.metrics.model}
        self.metrics.requests_waiting.labels(**labels).set(len(self.queue))
        self.metrics.requests_running.labels(**labels).set(self.running)

    # ---- admission (router_admission, the pure policy in admission.py) --------------------------------
    def admit(self, gen: Generation) -> Verdict | None:
        """Admit or shed a new request before it is queued; None when admission is off. A shed request
        is counted by reason; an admitted one carries its queue deadline."""
        if self.admission is None:
            return None
        verdict = self.admission.admit(
            self.workers.values(),
            len(gen.prompt_ids),
            len(gen.prompt_ids) + gen.sampling.max_tokens,
            gen.priority,
            gen.arrival_seconds,
        )
        gen.queue_deadline_seconds = verdict.queue_deadline_seconds
        return verdict

    def _queue_wait_seconds(self, gen: Generation, now: float) -> tuple[float, bool]:
        """How long the request may wait for a prefill worker, and whether its admission deadline (not
        the queue timeout) sets that."""
        if gen.queue_deadline_seconds is None:
            return self.queue_timeout_seconds, False
        left = gen.queue_deadline_seconds - now
        return (left, True) if left < self.queue_timeout_seconds else (self.queue_timeout_seconds, False)

    async def _acquire_prefill(self, gen: Generation) -> WorkerState:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        self._waiters[gen.request_id] = (waiter, len(gen.prompt_ids))
        queued = time.monotonic()
        # Queued by its arrival, not by this attempt: a request back for another prefill (a decode
        # worker found full after all, a refusal, a retry) keeps its place ahead of later arrivals.
        self.queue.push(QueuedPrompt(gen.request_id, len(gen.prompt_ids), gen.arrival_seconds))
        if self.admission is not None:
            self.admission.queued.add(len(gen.prompt_ids))
        self.dispatch()
        wait_seconds, by_deadline = self._queue_wait_seconds(gen, queued)
        try:
            # shield: on timeout the waiter must stay inspectable (it may have been assigned just then)
            url = await asyncio.wait_for(asyncio.shield(waiter), wait_seconds)
        except TimeoutError:
            if waiter.done():
                self._release_prefill(gen, self.workers[waiter.result()])
            else:
                waiter.cancel()
            if by_deadline and self.admission is not None:
                now = time.monotonic()
                raise AdmissionError(
                    self.admission.expire(
                        self.workers.values(),
                        len(gen.prompt_ids),
                        len(gen.prompt_ids) + gen.sampling.max_tokens,
                        gen.priority,
                        now - gen.arrival_seconds,
                        now,
                    )
                ) from None
            raise RouterError(
                503,
                f"no prefill worker took the request within {self.queue_timeout_seconds:.0f}s "
                f"({sum(1 for s in self.workers.values() if s.role == 'prefill' and s.usable)} usable)",
                "unavailable",
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # assigned just before the client went away
                self._release_prefill(gen, self.workers[waiter.result()])
            waiter.cancel()
            raise
        finally:
            self._waiters.pop(gen.request_id, None)
            self.queue.remove(gen.request_id)
            if self.admission is not None:
                self.admission.queued.remove(len(gen.prompt_ids))
            self._gauges()
        gen.queue_seconds += time.monotonic() - queued
        return self.workers[url]

    def _release_prefill(self, gen: Generation, state: WorkerState, served: bool = False) -> None:
        """Give the prefill slot back: at the first token (`served`) or when the attempt failed."""
        state.inflight_tokens -= len(gen.prompt_ids)
        state.inflight_long -= int(self.queue.is_long(len(gen.prompt_ids)))
        state.inflight_requests -= 1
        if self.admission is not None:
            self.admission.meter.finished(
                state.url, gen.request_id, len(gen.prompt_ids), served, time.monotonic()
            )
        self.dispatch()

    def _usable_decode(self) -> list[WorkerState]:
        return [s for s in self.workers.values() if s.role == "decode" and s.usable]

    def _pick_decode(self, exclude: set[str], tokens: int = 0) -> WorkerState | None:
        """The usable decode worker with the least KV usage among those with room to reserve `tokens`
        (`decode_room_tokens`), one not tried yet (`exclude`) if there is any (else a tried one: a retry
        on the same worker beats failing); None when none is usable or none has room."""
        usable = self._usable_decode()
        candidates = [s for s in usable if s.url not in exclude] or usable
        candidates = [s for s in candidates if decode_room_tokens(s) >= tokens]
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda s: (
                max(s.kv_usage, s.inflight_tokens / s.capacity_tokens),
                s.inflight_requests,
                s.url,
            ),
        )

    async def _await_decode(self, gen: Generation, exclude: set[str]) -> WorkerState:
        """A decode worker with KV room for `gen`'s prompt + max_tokens, waiting while none is usable (a
        rollout can retire the last old pod a moment before the router has seen its replacement answer)
        or none has room (a full decode pool frees it as sequences finish: the request waits, as the
        simulator's decode queue makes it, rather than failing), until the queue timeout since the
        request arrived. A request larger than every decode worker's whole KV cache fails at once (400)."""
        reserved = len(gen.prompt_ids) + gen.sampling.max_tokens
        deadline = gen.arrival_seconds + self.queue_timeout_seconds
        while (decode := self._pick_decode(exclude, reserved)) is None:
            usable = self._usable_decode()
            largest = max((s.capacity_tokens for s in usable), default=None)
            if largest is not None and largest < reserved:
                raise RouterError(
                    400,
                    f"prompt ({len(gen.prompt_ids)} tokens) + max_tokens ({gen.sampling.max_tokens}) need "
                    f"{reserved} tokens of KV cache, more than any decode worker holds ({largest}): "
                    "shorten the prompt or lower max_tokens",
                    "invalid_request_error",
                )
            if time.monotonic() >= deadline:
                why = (
                    f"none had KV room for {reserved} tokens (prompt + max_tokens)"
                    if usable
                    else "none usable"
                )
                raise RouterError(
                    503,
                    f"no decode worker became available within {self.queue_timeout_seconds:.0f}s ({why})",
                    "unavailable",
                )
            await asyncio.sleep(self.health_interval_seconds / 4)
        return decode

    # ---- one request -----------------------------------------------------------------------------
    async def generate(self, gen: Generation) -> AsyncGenerator[int, None]:
        """Token ids of one request; raises RouterError with a clear message when it fails.

        Before its first token a request may move, and nothing was sent to the client yet, so nothing is
        duplicated: a refusal (a draining decode worker, a prefill peer that is draining or gone, a decode
        worker that no longer accepts connections) goes to another worker without using a retry, at most
        once per known worker; a failure (a KV transfer broken by a dying worker) is retried up to
        `max_retries` times on another decode worker. After the first token nothing moves: a failure ends
        the stream with an error.
        """
        tried_decode: set[str] = set()
        failures = refusals = 0
        self.running += 1
        try:
            while True:
                prefill = await self._acquire_prefill(gen)
                released = False
                try:
                    decode = await self._await_decode(gen, tried_decode)
                except BaseException:
                    self._release_prefill(gen, prefill)
                    raise
                gen.prefill_url, gen.decode_url = prefill.url, decode.url
                reserved = len(gen.prompt_ids) + gen.sampling.max_tokens
                decode.inflight_tokens += reserved
                decode.inflight_requests += 1
                body = {
                    "request_id": f"{gen.request_id}-{failures + refusals}",
                    "prompt_token_ids": gen.prompt_ids,
                    "sampling": gen.sampling.to_json(),
                    "prefill_url": prefill.url,
                }
                got_token = False
                try:
                    async with self._client.stream("POST", f"{decode.url}/generate", json=body) as resp:
                        if resp.status_code != 200:
                            raise _upstream_error(
                                resp.status_code, (await resp.aread()).decode(errors="replace"), decode.url
                            )
                        async for line in resp.aiter_lines():
                            if not line:
                                continue
                            event = json.loads(line)
                            if "token" in event:
                                if not released:
                                    released = True
                                    self._release_prefill(gen, prefill, served=True)
                                got_token = True
                                gen.tokens.append(int(event["token"]))
                                yield gen.tokens[-1]
                            elif "finish_reason" in event:
                                reason = str(event["finish_reason"])
                                if reason.startswith("error"):
                                    raise RouterError(
                                        502, f"decode worker {decode.url}: {reason}", "upstream_error"
                                    )
                                gen.finish_reason = reason
                                return
                    raise RouterError(
                        502,
                        f"decode worker {decode.url} closed the stream before finishing",
                        "upstream_error",
                    )
                except (httpx.HTTPError, RouterError) as exc:
                    err = _as_router_error(exc, decode.url)
                    if isinstance(exc, httpx.TransportError):
                        self._mark_unhealthy(decode.url)
                    if got_token or err.status not in (502, 503):
                        raise err from exc
                    if err.kind == DECODE_FULL_ERROR:
                        # Its KV filled since the last poll (another router, block rounding): no room
                        # there until the next poll says otherwise; the request waits for room elsewhere.
                        decode.free_tokens = 0
                        log.info("request %s found %s full, waiting for room", gen.request_id, decode.url)
                        continue
                    if err.kind in _REFUSALS and refusals < len(self.workers):
                        refusals += 1
                        if err.kind == PREFILL_REFUSED_ERROR:
                            self._mark_unhealthy(prefill.url)  # until its next health poll says otherwise
                        else:
                            self._mark_unhealthy(decode.url)
                            tried_decode.add(decode.url)
                        log.info("request %s refused, re-routing: %s", gen.request_id, err.message)
                        continue
                    if failures >= self.max_retries:
                        raise err from exc
                    failures += 1
                    if err.kind == "kv_transfer_error":
                        self._mark_unhealthy(prefill.url)  # either end may have died; the poll tells
                    tried_decode.add(decode.url)
                    log.warning(
                        "request %s attempt %d failed, retrying: %s", gen.request_id, failures, err.message
                    )
                finally:
                    if not released:
                        self._release_prefill(gen, prefill)
                    decode.inflight_tokens -= reserved
                    decode.inflight_requests -= 1
        finally:
            self.running -= 1
            self._gauges()

    async def close(self) -> None:
        await self._client.aclose()


def decode_room_tokens(state: WorkerState) -> int:
    """KV tokens a decode worker can still reserve, as far as the router knows: its capacity less the
    larger of what its last health poll found taken and what this router has reserved there now."""
    if state.free_tokens is not None:
        taken = state.capacity_tokens - state.free_tokens
    else:
        taken = round(state.kv_usage * state.capacity_tokens)
    return state.capacity_tokens - max(taken, state.inflight_tokens)


def _upstream_error(status: int, text: str, url: str) -> RouterError:
    try:
        error = json.loads(text)["error"]
        message, kind = str(error["message"]), str(error.get("type", ""))
    except (ValueError, KeyError, TypeError):
        message, kind = text[:300], ""
    if status == 400:
        return RouterError(400, message, "invalid_request_error")
    if status == 503 and (kind in _REFUSALS or kind == DECODE_FULL_ERROR):
        return RouterError(503, f"decode worker {url}: {message}", kind)
    if status == 503:
        return RouterError(503, f"decode worker {url}: {message}", "unavailable")
    transfer_failed = kind == "kv_transfer_error"
    return RouterError(
        502, f"decode worker {url}: {message}", "kv_transfer_error" if transfer_failed else "upstream_error"
    )


def _as_router_error(exc: httpx.HTTPError | RouterError, url: str) -> RouterError:
    """What the client would get; a decode worker that refuses connections (it exited after draining,
    before discovery caught up) is a refusal: the request never reached it."""
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, httpx.ConnectError):
        return RouterError(503, f"decode worker {url} refused the connection: {exc}", DRAINING_ERROR)
    return RouterError(502, f"decode worker {url} failed: {type(exc).__name__}: {exc}", "upstream_error")
