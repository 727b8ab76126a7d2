"""The router's core: worker registry (discovery + health polls), prefill dispatch through the pure
`scheduler.PrefillQueue`, decode choice by least KV usage, and one request's life as an async stream of
token ids. The OpenAI HTTP surface on top of it lives in `openai_api.py`.

A request waits in the prefill queue until the policy gives it a prefill worker; the router then picks
the decode worker with the least KV usage and calls its /generate with that prefill worker's URL (the
decode worker pulls the prefill and the KV transfer). The prefill worker's slot is released when the
first token arrives. Failures before the first token are retried up to `max_retries` times; later ones
end the stream with an error.
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

from dopd_worker.discovery import Discovery, WorkerSet
from dopd_worker.metrics import Metrics
from dopd_worker.sampling import SamplingParams
from dopd_worker.scheduler import Lane, PrefillQueue, PrefillWorkerLoad, QueuedPrompt, SchedulerConfig

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


class Router:
    def __init__(
        self,
        scheduler: SchedulerConfig,
        metrics: Metrics,
        max_retries: int,
        health_interval_seconds: float = 0.2,
        queue_timeout_seconds: float = 600.0,
    ) -> None:
        self.queue_timeout_seconds = queue_timeout_seconds
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
        log.info("workers: %s", {u: s.role for u, s in self.workers.items() if s.present})
        self.dispatch()

    async def _poll_one(self, state: WorkerState) -> None:
        try:
            resp = await self._client.get(f"{state.url}/health", timeout=2.0)
            body = resp.json()
            state.healthy = resp.status_code == 200 and body.get("status") == "ok"
            state.kv_usage = float(body.get("kv_usage", 0.0))
            state.capacity_tokens = max(1, int(body.get("capacity_tokens", 1)))
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
                waiter.set_result(assignment.worker)
        self._gauges()

    def _gauges(self) -> None:
        labels = {"role": "router", "model": self.metrics.model}
        self.metrics.requests_waiting.labels(**labels).set(len(self.queue))
        self.metrics.requests_running.labels(**labels).set(self.running)

    async def _acquire_prefill(self, gen: Generation) -> WorkerState:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        self._waiters[gen.request_id] = (waiter, len(gen.prompt_ids))
        queued = time.monotonic()
        self.queue.push(QueuedPrompt(gen.request_id, len(gen.prompt_ids), queued))
        self.dispatch()
        try:
            # shield: on timeout the waiter must stay inspectable (it may have been assigned just then)
            url = await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout_seconds)
        except TimeoutError:
            if waiter.done():
                self._release_prefill(gen, self.workers[waiter.result()])
            else:
                waiter.cancel()
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
            self._gauges()
        gen.queue_seconds += time.monotonic() - queued
        return self.workers[url]

    def _release_prefill(self, gen: Generation, state: WorkerState) -> None:
        state.inflight_tokens -= len(gen.prompt_ids)
        state.inflight_long -= int(self.queue.is_long(len(gen.prompt_ids)))
        state.inflight_requests -= 1
        self.dispatch()

    def _pick_decode(self, exclude: set[str]) -> WorkerState:
        candidates = [
            s for s in self.workers.values() if s.role == "decode" and s.usable and s.url not in exclude
        ]
        if not candidates:
            raise RouterError(503, "no decode worker is available", "unavailable")
        return min(
            candidates,
            key=lambda s: (
                max(s.kv_usage, s.inflight_tokens / s.capacity_tokens),
                s.inflight_requests,
                s.url,
            ),
        )

    # ---- one request -----------------------------------------------------------------------------
    async def generate(self, gen: Generation) -> AsyncGenerator[int, None]:
        """Token ids of one request; raises RouterError with a clear message when it fails."""
        tried_decode: set[str] = set()
        self.running += 1
        try:
            for attempt in range(self.max_retries + 1):
                last = attempt == self.max_retries
                prefill = await self._acquire_prefill(gen)
                released = False
                try:
                    decode = self._pick_decode(tried_decode)
                except RouterError:
                    self._release_prefill(gen, prefill)
                    raise
                gen.prefill_url, gen.decode_url = prefill.url, decode.url
                reserved = len(gen.prompt_ids) + gen.sampling.max_tokens
                decode.inflight_tokens += reserved
                decode.inflight_requests += 1
                body = {
                    "request_id": f"{gen.request_id}-{attempt}",
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
                                    self._release_prefill(gen, prefill)
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
                    err = (
                        exc
                        if isinstance(exc, RouterError)
                        else RouterError(
                            502,
                            f"decode worker {decode.url} failed: {type(exc).__name__}: {exc}",
                            "upstream_error",
                        )
                    )
                    if isinstance(exc, httpx.TransportError):
                        self._mark_unhealthy(decode.url)
                    if got_token or last or err.status not in (502, 503):
                        raise err from exc
                    log.warning(
                        "request %s attempt %d failed, retrying: %s", gen.request_id, attempt, err.message
                    )
                    tried_decode.add(decode.url)
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


def _upstream_error(status: int, text: str, url: str) -> RouterError:
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:300]
    if status == 400:
        return RouterError(400, message, "invalid_request_error")
    return RouterError(
        503 if status == 503 else 502,
        f"decode worker {url}: {message}",
        "unavailable" if status == 503 else "upstream_error",
    )
