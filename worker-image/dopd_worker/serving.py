"""What every dopd HTTP process shares: /health, /drain, /metrics, and a uvicorn server that exits
once drained. Used by the prefill and decode workers and the router.

Draining (the pod's preStop calls POST /drain, then waits for the process to exit): the process stops
taking new requests (503, and /health says `draining` so the router drops it), finishes what is in
flight, including pending KV transfers, then exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dopd_worker.metrics import Metrics

log = logging.getLogger(__name__)


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """OpenAI-shaped error body, used by the router and the workers alike."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


@dataclass
class ProcessState:
    """Drain state and the hooks /health reports; `in_flight` counts work that must finish before exit."""

    role: str
    metrics: Metrics
    in_flight: Callable[[], int]
    details: Callable[[], dict[str, Any]]
    draining: bool = False
    server: uvicorn.Server | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/drain", self.drain, methods=["POST"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
        ]

    async def health(self, request: Request) -> JSONResponse:
        body = {
            "status": "draining" if self.draining else "ok",
            "role": self.role,
            "in_flight": self.in_flight(),
            **self.details(),
        }
        return JSONResponse(body, status_code=503 if self.draining else 200)

    async def drain(self, request: Request) -> JSONResponse:
        self.start_draining()
        return JSONResponse({"status": "draining", "in_flight": self.in_flight()})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def start_draining(self) -> None:
        if not self.draining:
            log.info("%s: draining; %d in flight", self.role, self.in_flight())
            self.draining = True
            asyncio.get_running_loop().create_task(self._exit_when_idle())

    async def _exit_when_idle(self) -> None:
        while self.in_flight() > 0:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # let the last responses flush
        log.info("%s: drained, exiting", self.role)
        self.drained.set()
        if self.server is not None:
            self.server.should_exit = True


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
) -> None:
    """Run uvicorn until drained (SIGTERM drains too, as the kubelet sends it after preStop)."""
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
