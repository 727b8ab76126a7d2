"""What every dopd HTTP process shares: /health, /drain, /metrics, and a uvicorn server that exits
once drained. Used by the prefill and decode workers and the router.

Draining (SIGTERM, which the kubelet sends after the pod's preStop hook, or POST /drain): the process
stops taking new requests (503, and /health says `draining` with a 503 so readiness fails and the
router drops it), finishes what is in flight, including KV transfers until the decode side has
acknowledged them, then exits with status 0. With a drain timeout (`--drain-timeout-seconds`, which the
operator sets from `spec.<role>.drainSeconds`), whatever is still running `DRAIN_FLUSH_SECONDS` before
the timeout is ended by the role's `abort` hook with an error that names the timeout (never silently),
and the process exits with `EXIT_DRAIN_ABORTED`. Either way it logs one `drain summary: {json}` line and
writes it to the Kubernetes termination message file when the kubelet provides one. docs/drain.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dopd_worker.metrics import Metrics

log = logging.getLogger(__name__)


# Error types (the body's `error.type`) that tell the router a request was refused before any work began,
# so it may go to another worker without using up a retry.
DRAINING_ERROR = "worker_draining"  # this worker is draining: it takes nothing new
PREFILL_REFUSED_ERROR = "prefill_unavailable"  # the decode worker's prefill peer refused (draining, gone)
# The decode worker has no KV room for the request's prompt + max_tokens now: the router waits for room.
DECODE_FULL_ERROR = "decode_kv_full"


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """OpenAI-shaped error body, used by the router and the workers alike."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


DRAIN_FLUSH_SECONDS = 2.0  # of the drain timeout, kept for ending what is left with an error before the kill
EXIT_DRAINED = 0
EXIT_DRAIN_ABORTED = 3  # the drain timeout passed and work was ended with errors (or was still running)
TERMINATION_MESSAGE_PATH = Path("/dev/termination-log")  # the kubelet's default terminationMessagePath


@dataclass
class ProcessState:
    """Drain state and the hooks /health reports; `in_flight` counts work that must finish before exit.

    `abort(reason)` ends every piece of work still in flight with an error carrying `reason` and returns
    how many it ended; `summary()` adds the role's own counts (KV transfers confirmed, unconfirmed) to
    the drain summary.
    """

    role: str
    metrics: Metrics
    in_flight: Callable[[], int]
    details: Callable[[], dict[str, Any]]
    drain_timeout_seconds: float | None = None
    abort: Callable[[str], int] | None = None
    summary: Callable[[], dict[str, Any]] = dict
    termination_message_path: Path = TERMINATION_MESSAGE_PATH
    draining: bool = False
    exit_code: int = EXIT_DRAINED
    server: uvicorn.Server | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    _drain_started: float | None = None
    _in_flight_at_drain: int = 0
    _aborted: int = 0

    def __post_init__(self) -> None:
        labels = {"role": self.metrics.role, "model": self.metrics.model}
        self.metrics.draining.labels(**labels).set_function(lambda: float(self.draining))
        self.metrics.drain_in_flight_requests.labels(**labels).set_function(
            lambda: float(self.in_flight()) if self.draining else 0.0
        )

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/drain", self.drain, methods=["POST"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
        ]

    def drain_progress(self) -> dict[str, Any] | None:
        if self._drain_started is None:
            return None
        return {
            "elapsed_seconds": round(time.monotonic() - self._drain_started, 3),
            "timeout_seconds": self.drain_timeout_seconds,
            "in_flight_at_start": self._in_flight_at_drain,
            "aborted": self._aborted,
        }

    async def health(self, request: Request) -> JSONResponse:
        body = {
            "status": "draining" if self.draining else "ok",
            "role": self.role,
            "in_flight": self.in_flight(),
            **self.details(),
        }
        if self.draining:
            body["drain"] = self.drain_progress()
        return JSONResponse(body, status_code=503 if self.draining else 200)

    async def drain(self, request: Request) -> JSONResponse:
        self.start_draining()
        return JSONResponse({"status": "draining", "in_flight": self.in_flight()})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def start_draining(self) -> None:
        """Idempotent: SIGTERM after a POST /drain (or a second SIGTERM) changes nothing."""
        if not self.draining:
            self.draining = True
            self._drain_started = time.monotonic()
            self._in_flight_at_drain = self.in_flight()
            log.info(
                "%s: draining; %d in flight, timeout %s",
                self.role,
                self._in_flight_at_drain,
                f"{self.drain_timeout_seconds:g}s" if self.drain_timeout_seconds is not None else "none",
            )
            asyncio.get_running_loop().create_task(self._exit_when_idle())

    async def _exit_when_idle(self) -> None:
        assert self._drain_started is not None
        timeout = self.drain_timeout_seconds
        abort_at = None if timeout is None else self._drain_started + max(0.0, timeout - DRAIN_FLUSH_SECONDS)
        give_up_at = None if timeout is None else self._drain_started + timeout
        aborted = False
        while self.in_flight() > 0:
            now = time.monotonic()
            if abort_at is not None and not aborted and now >= abort_at:
                aborted = True
                self._abort_remaining(timeout)
            if give_up_at is not None and now >= give_up_at:
                log.error(
                    "%s: %d still in flight at the end of the %gs drain timeout; exiting anyway",
                    self.role,
                    self.in_flight(),
                    timeout,
                )
                self.exit_code = EXIT_DRAIN_ABORTED
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # let the last responses flush
        self._report()
        self.drained.set()
        if self.server is not None:
            self.server.should_exit = True

    def _abort_remaining(self, timeout: float | None) -> None:
        reason = (
            f"{self.role} worker shut down: its drain timeout of {timeout:g}s passed before this request "
            "finished (raise spec.<role>.drainSeconds)"
        )
        ended = self.abort(reason) if self.abort is not None else 0
        self._aborted += ended
        self.exit_code = EXIT_DRAIN_ABORTED
        labels = {"role": self.metrics.role, "model": self.metrics.model}
        self.metrics.drain_aborted_requests_total.labels(**labels).inc(ended)
        log.error("%s: drain timeout: ended %d request(s) with an error: %s", self.role, ended, reason)

    def _report(self) -> None:
        progress = self.drain_progress() or {}
        report = {"role": self.role, "exit_code": self.exit_code, **progress, **self.summary()}
        line = json.dumps(report, sort_keys=True)
        if self.exit_code == EXIT_DRAINED:
            log.info("drain summary: %s", line)
        else:
            log.error("drain summary: %s", line)
        if self.termination_message_path.is_file():  # in a pod: `kubectl get pod` shows it after exit
            with contextlib.suppress(OSError):
                self.termination_message_path.write_text(line + "\n")


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        log.warning("task %s:", task.get_name())
        task.print_stack(file=sys.stderr)


def serve(
    app: Any,
    host: str,
    port: int,
    state: ProcessState,
    on_startup: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Run uvicorn until drained (SIGTERM drains, as the kubelet sends it after preStop); returns the
    process exit status (`EXIT_DRAINED`, or `EXIT_DRAIN_ABORTED` when the drain timeout cut work off)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    state.server = server

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if on_startup is not None:
            await on_startup()
        server_task = asyncio.create_task(server.serve())
        await asyncio.sleep(0)
        # uvicorn's own handlers would shut down at once on SIGTERM; ours drains first.
        loop.add_signal_handler(signal.SIGTERM, state.start_draining)
        loop.add_signal_handler(signal.SIGINT, lambda: setattr(server, "should_exit", True))
        loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)  # `kill -USR2 PID`: where every task waits
        await server_task

    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    asyncio.run(main())
    return state.exit_code
