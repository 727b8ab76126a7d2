"""The prefill worker's HTTP adapter: POST /prefill from a decode worker, answered as an NDJSON stream.

Protocol (decode -> prefill): the body carries the prompt ids, sampling parameters, the decode side's
rendezvous (TCPStore address, pair id, device) and the transfer's first tag. The prefill worker joins
the pair group, answers `{"accepted": true}` (the decode side then posts its receives), runs the prompt
in its next batch, sends the KV layer by layer, and ends with `{"first_token": id}` or `{"error": msg}`.
Refusals before acceptance are plain JSON errors (400 bad request, 503 draining).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dopd_worker.engine import PrefillEngine, PrefillJob
from dopd_worker.metrics import create_metrics
from dopd_worker.runtime import LoadedModel, WorkerOptions
from dopd_worker.sampling import SamplingParams
from dopd_worker.serving import ProcessState, error_response
from dopd_worker.transfer import (
    DeviceIdentity,
    PairGroup,
    PeerGroups,
    Rendezvous,
    TransferError,
    client_store,
    make_group,
    select_transport,
)

log = logging.getLogger(__name__)


class PrefillPairs:
    """This prefill worker's side (rank 1) of its pair groups, one per decode worker incarnation."""

    def __init__(self, device: DeviceIdentity, torch_device: Any, timeout: datetime.timedelta) -> None:
        self.device = device
        self.torch_device = torch_device
        self.timeout = timeout
        self.groups = PeerGroups()
        self._pending: dict[str, asyncio.Future[PairGroup]] = {}

    async def ensure(self, rdv: Rendezvous) -> PairGroup:
        group = self.groups.get(rdv.pair_id)
        if group is not None:
            return group
        pending = self._pending.get(rdv.pair_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[rdv.pair_id] = pending
            kind = select_transport(self.device, rdv.device)
            try:
                store = await asyncio.to_thread(client_store, rdv.host, rdv.port, self.timeout)
                # The group's PrefixStores hold the client connection alive.
                joined = await asyncio.to_thread(
                    make_group, store, rdv.pair_id, 1, kind, self.torch_device, self.timeout, rdv.ordered
                )
                self.groups.put(rdv.pair_id, joined)
                pending.set_result(joined)
            except Exception as exc:
                pending.set_exception(TransferError(f"joining pair group {rdv.pair_id!r} failed: {exc}"))
            finally:
                self._pending.pop(rdv.pair_id, None)
        return await asyncio.shield(pending)


def build_prefill_app(
    options: WorkerOptions, loaded: LoadedModel
) -> tuple[Starlette, ProcessState, PrefillEngine]:
    metrics = create_metrics("prefill", options.model_name)
    engine = PrefillEngine(loaded.model, loaded.cache, options.token_budget, metrics)
    pairs = PrefillPairs(
        DeviceIdentity.of(loaded.device),
        loaded.device,
        datetime.timedelta(seconds=options.transfer_timeout_seconds),
    )
    accepted: set[str] = set()  # request ids from acceptance until their job settles
    cache = loaded.cache
    expected_layer = {
        "layers": cache.num_layers,
        "kv_heads": cache.k[0].shape[2],
        "head_dim": cache.k[0].shape[3],
        "dtype": str(loaded.dtype),
    }

    state = ProcessState(
        role="prefill",
        metrics=metrics,
        in_flight=lambda: len(accepted),
        details=lambda: {
            "kv_usage": cache.allocator.usage(),
            "waiting": engine.waiting(),
            "running": engine.running,
            "capacity_tokens": cache.allocator.capacity_tokens,
            "model": options.model_name,
            "token_budget": options.token_budget,
            "forming_groups": len(pairs._pending),
            "in_flight_ids": sorted(accepted)[:20],
        },
    )

    async def prefill(request: Request) -> Response:
        if state.draining:
            return error_response(503, "prefill worker is draining", "unavailable")
        try:
            body = await request.json()
            prompt = [int(t) for t in body["prompt_token_ids"]]
            sampling = SamplingParams.from_json(body["sampling"])
            rdv = Rendezvous.from_json(body["rendezvous"])
            tag_base = int(body["tag_base"])
            layout = dict(body["kv_layout"])
            request_id = str(body["request_id"])
        except (ValueError, KeyError, TypeError) as exc:
            return error_response(400, f"bad /prefill request: {exc}")
        if layout != expected_layer:
            return error_response(
                400,
                f"KV layout mismatch: decode expects {layout}, this prefill has "
                f"{expected_layer} (different models?)",
            )
        if not prompt or len(prompt) > loaded.max_model_len:
            return error_response(400, f"prompt of {len(prompt)} tokens; allowed 1..{loaded.max_model_len}")
        if max(prompt) >= loaded.config.vocab_size or min(prompt) < 0:
            return error_response(400, f"prompt token ids must be in [0, {loaded.config.vocab_size})")
        if request_id in accepted:
            return error_response(409, f"request {request_id} is already being prefilled here")
        accepted.add(request_id)
        log.debug("prefill %s accepted for %s", request_id, rdv.pair_id)
        try:
            group = await pairs.ensure(rdv)
        except BaseException as exc:
            accepted.discard(request_id)
            if isinstance(exc, TransferError):
                return error_response(502, str(exc), "kv_transfer_error")
            raise
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | BaseException] = loop.create_future()

        def settle(result: int | BaseException) -> None:
            # In flight until the job settles, whatever the client does: when the decode worker hangs up,
            # Starlette cancels the stream, and with it `done`, so do not make this depend on `done`.
            accepted.discard(request_id)
            if isinstance(result, BaseException) and group.broken:
                pairs.groups.drop(rdv.pair_id)
            if not done.done():
                done.set_result(result)

        def on_done(result: int | BaseException) -> None:
            loop.call_soon_threadsafe(settle, result)

        engine.submit(PrefillJob(request_id, prompt, sampling, group, tag_base, on_done))
        log.debug("prefill %s submitted", request_id)

        async def stream() -> AsyncIterator[bytes]:
            yield json.dumps({"accepted": True}).encode() + b"\n"
            result = await asyncio.shield(done)
            if isinstance(result, BaseException):
                log.warning("prefill %s failed: %s", request_id, result)
                yield json.dumps({"error": f"prefill failed: {result}"}).encode() + b"\n"
            else:
                yield json.dumps({"first_token": result}).encode() + b"\n"

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "role": "prefill",
                "model": options.model_name,
                "kv_layout": expected_layer,
                "device": pairs.device.to_json(),
            }
        )

    app = Starlette(
        routes=[Route("/prefill", prefill, methods=["POST"]), Route("/info", info), *state.routes()]
    )
    return app, state, engine
