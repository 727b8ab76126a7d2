"""The prefill worker's HTTP adapter: POST /prefill from a decode worker, answered as an NDJSON stream.

Protocol (decode -> prefill): the body carries the prompt ids, sampling parameters, the decode side's
rendezvous (TCPStore address, pair id, device) and the transfer's first tag. The prefill worker joins
the pair group, answers `{"accepted": true}` (the decode side then posts its receives), runs the prompt
in its next batch, sends the KV layer by layer, and ends with `{"first_token": id}` or `{"error": msg}`.
Refusals before acceptance are plain JSON errors (400 bad request, 503 `worker_draining`). With
`"ack": true` the decode side confirms receipt of every layer with `POST /prefill/ack`, and the transfer
stays pending here until then (`handover.HandoverLedger`): a draining prefill worker exits only when no
transfer is pending (docs/drain.md).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dopd_worker.engine import PrefillEngine, PrefillJob
from dopd_worker.handover import HandoverLedger
from dopd_worker.metrics import create_metrics
from dopd_worker.runtime import LoadedModel, WorkerOptions
from dopd_worker.sampling import SamplingParams
from dopd_worker.serving import DRAINING_ERROR, ProcessState, error_response
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
    labels = {"role": "prefill", "model": options.model_name}
    engine = PrefillEngine(
        loaded.model, loaded.cache, options.token_budget, metrics, options.fault_pause_during_transfer
    )
    pairs = PrefillPairs(
        DeviceIdentity.of(loaded.device),
        loaded.device,
        datetime.timedelta(seconds=options.transfer_timeout_seconds),
    )
    # Request ids from acceptance until the decode side confirms receipt (or the job fails).
    ledger = HandoverLedger(ack_timeout_seconds=options.transfer_timeout_seconds)
    metrics.kv_transfers_pending.labels(**labels).set_function(lambda: float(ledger.pending()))
    cache = loaded.cache
    expected_layer = {
        "layers": cache.num_layers,
        "kv_heads": cache.k[0].shape[2],
        "head_dim": cache.k[0].shape[3],
        "dtype": str(loaded.dtype),
    }

    def expire_acks() -> None:
        for rid in ledger.expire(time.monotonic()):
            metrics.kv_transfers_unconfirmed_total.labels(**labels).inc()
            log.error(
                "KV transfer of %s was sent but the decode side never confirmed it within %gs",
                rid,
                options.transfer_timeout_seconds,
            )

    def abort(reason: str) -> int:
        """Drain timeout: fail the prompts not yet prefilled (their decode side answers 502 before any
        token, so the router retries them elsewhere) and stop waiting for acknowledgements."""
        failed = engine.abort_queued(RuntimeError(reason))
        for rid in ledger.give_up():
            metrics.kv_transfers_unconfirmed_total.labels(**labels).inc()
            log.error("KV transfer of %s unconfirmed at the drain timeout", rid)
        return failed

    state = ProcessState(
        role="prefill",
        metrics=metrics,
        in_flight=ledger.pending,
        details=lambda: {
            "kv_usage": cache.allocator.usage(),
            "waiting": engine.waiting(),
            "running": engine.running,
            "capacity_tokens": cache.allocator.capacity_tokens,
            "model": options.model_name,
            "token_budget": options.token_budget,
            "forming_groups": len(pairs._pending),
            "pending_transfers": ledger.pending(),
            "in_flight_ids": sorted(ledger.accepted | set(ledger.awaiting_ack))[:20],
        },
        drain_timeout_seconds=options.drain_timeout_seconds,
        abort=abort,
        summary=ledger.counts,
    )

    async def prefill(request: Request) -> Response:
        if state.draining:
            return error_response(503, "prefill worker is draining", DRAINING_ERROR)
        try:
            body = await request.json()
            prompt = [int(t) for t in body["prompt_token_ids"]]
            sampling = SamplingParams.from_json(body["sampling"])
            rdv = Rendezvous.from_json(body["rendezvous"])
            tag_base = int(body["tag_base"])
            layout = dict(body["kv_layout"])
            request_id = str(body["request_id"])
            wants_ack = bool(body.get("ack", False))
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
        peer_id = body.get("prefill_worker_id")
        if peer_id is not None and peer_id != options.worker_id:
            return error_response(
                409, f"this prefill process is {options.worker_id}, not {peer_id} (a new pod at this address)"
            )
        if not ledger.accept(request_id):
            return error_response(409, f"request {request_id} is already being prefilled here")
        log.debug("prefill %s accepted for %s", request_id, rdv.pair_id)
        try:
            group = await pairs.ensure(rdv)
        except BaseException as exc:
            ledger.settle(request_id, sent=False, wants_ack=wants_ack, now=time.monotonic())
            if isinstance(exc, TransferError):
                return error_response(502, str(exc), "kv_transfer_error")
            raise
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | BaseException] = loop.create_future()

        def settle(result: int | BaseException) -> None:
            # Pending until the job settles (and then until the decode side acknowledges), whatever the
            # client does: when the decode worker hangs up, Starlette cancels the stream, and with it
            # `done`, so do not make this depend on `done`.
            sent = not isinstance(result, BaseException)
            ledger.settle(request_id, sent=sent, wants_ack=wants_ack, now=time.monotonic())
            if sent and wants_ack:
                loop.call_later(options.transfer_timeout_seconds + 0.01, expire_acks)
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

    async def acknowledge(request: Request) -> JSONResponse:
        """The decode side received every layer of this request's KV: the hand-over is complete."""
        try:
            request_id = str((await request.json())["request_id"])
        except (ValueError, KeyError, TypeError) as exc:
            return error_response(400, f"bad /prefill/ack request: {exc}")
        if not ledger.acknowledge(request_id):
            return error_response(404, f"no KV transfer of {request_id} awaits an acknowledgement here")
        return JSONResponse({"confirmed": True})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "role": "prefill",
                "worker_id": options.worker_id,
                "model": options.model_name,
                "kv_layout": expected_layer,
                "device": pairs.device.to_json(),
            }
        )

    app = Starlette(
        routes=[
            Route("/prefill", prefill, methods=["POST"]),
            Route("/prefill/ack", acknowledge, methods=["POST"]),
            Route("/info", info),
            *state.routes(),
        ]
    )
    return app, state, engine
