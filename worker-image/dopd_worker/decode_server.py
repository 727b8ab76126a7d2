"""The decode worker's HTTP adapter: POST /generate from the router, answered as an NDJSON token stream.

For each request: reserve KV blocks for prompt + max_tokens (503 `decode_kv_full` when there is no room
now: the router waits for a decode worker with room), make sure a pair group with the chosen prefill worker exists (this worker is the TCPStore
master and rank 0), call the prefill worker's /prefill, post one receive per layer once it accepts, wait
for every layer (with the transfer timeout), then hand the sequence to the continuous-batching engine and
stream `{"token": id}` lines and a final `{"finish_reason": ...}`. Any failure before the first token
frees the blocks and answers 502 with the reason; the router may retry. Once every layer has arrived, it
confirms receipt to the prefill worker (`POST /prefill/ack`), which keeps the transfer pending until then.

Draining (docs/drain.md): new requests get 503 `worker_draining`; running sequences and KV receives in
progress finish; at the drain timeout the rest end with an error naming it (a receive in progress with a
503 the router re-routes, a sequence already streaming with an `error:` finish reason).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dopd_worker.engine import DecodeEngine, DecodeSequence
from dopd_worker.kv_cache import OutOfBlocks
from dopd_worker.metrics import create_metrics
from dopd_worker.runtime import LoadedModel, WorkerOptions
from dopd_worker.sampling import SamplingParams
from dopd_worker.serving import (
    DECODE_FULL_ERROR,
    DRAINING_ERROR,
    PREFILL_REFUSED_ERROR,
    ProcessState,
    error_response,
)
from dopd_worker.transfer import (
    DeviceIdentity,
    PairGroup,
    PeerGroups,
    Rendezvous,
    TransferError,
    TransportKind,
    client_store,
    make_group,
    master_store,
    select_transport,
    tag_base,
)

log = logging.getLogger(__name__)


class PrefillRefused(TransferError):
    """The prefill worker said no before any KV moved (draining, bad request): the pair group is intact."""


class DecodePairs:
    """This decode worker's side (rank 0) of its pair groups, one per prefill worker URL and epoch."""

    def __init__(self, options: WorkerOptions, device: DeviceIdentity, torch_device: Any) -> None:
        self.options = options
        self.device = device
        self.torch_device = torch_device
        self.timeout = datetime.timedelta(seconds=options.transfer_timeout_seconds)
        self.store: Any = None
        self.groups = PeerGroups()
        self._pending: dict[str, asyncio.Future[PairGroup]] = {}
        self._epochs: dict[str, int] = {}
        self._transfers = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._kinds: dict[str, TransportKind] = {}
        # prefill URL -> (device, process id) from its /info. The process id is in the pair id, so a new
        # pod that reuses a gone pod's IP never meets the group its predecessor left behind.
        self._peers: dict[str, tuple[DeviceIdentity, str]] = {}

    async def peer_device(self, prefill_url: str, client: httpx.AsyncClient) -> DeviceIdentity:
        """The prefill worker's device identity (from its /info, cached): the backend depends on it."""
        known = self._peers.get(prefill_url)
        if known is None:
            try:
                resp = await client.get(f"{prefill_url}/info", timeout=self.options.transfer_timeout_seconds)
                resp.raise_for_status()
                info = resp.json()
                known = (DeviceIdentity.from_json(info["device"]), str(info["worker_id"]))
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise PrefillRefused(f"prefill worker {prefill_url} /info failed: {exc}") from exc
            self._peers[prefill_url] = known
        return known[0]

    def peer_worker_id(self, prefill_url: str) -> str:
        known = self._peers.get(prefill_url)
        return known[1] if known is not None else "unknown"

    def ordered(self, kind: TransportKind) -> bool:
        return self.options.ordered_transfers or kind is TransportKind.NCCL

    def start(self) -> None:
        self.store = master_store(self.options.kv_host, self.options.kv_port, self.timeout)

    def pair_id(self, prefill_url: str) -> str:
        epoch = self._epochs.get(prefill_url, 0)
        return f"{self.options.worker_id}/{epoch}/{prefill_url}/{self.peer_worker_id(prefill_url)}"

    def rendezvous(self, prefill_url: str) -> Rendezvous:
        kind = self._kinds.get(prefill_url, TransportKind.GLOO)
        return Rendezvous(
            self.options.kv_host,
            self.options.kv_port,
            self.pair_id(prefill_url),
            self.device,
            ordered=self.ordered(kind),
        )

    def next_tag_base(self, num_layers: int) -> int:
        return tag_base(next(self._transfers), num_layers)

    def begin(self, prefill_url: str, peer: DeviceIdentity) -> asyncio.Future[PairGroup]:
        """The group for this prefill worker: cached, being formed, or started now (the peer joins when it
        receives the /prefill request that carries `rendezvous(prefill_url)`)."""
        pair_id = self.pair_id(prefill_url)
        loop = asyncio.get_running_loop()
        group = self.groups.get(pair_id)
        if group is not None:
            ready: asyncio.Future[PairGroup] = loop.create_future()
            ready.set_result(group)
            return ready
        pending = self._pending.get(pair_id)
        if pending is not None:
            return pending
        kind = select_transport(self.device, peer)
        self._kinds[prefill_url] = kind
        ordered = self.ordered(kind)
        pending = loop.create_future()
        self._pending[pair_id] = pending

        async def form() -> None:
            try:
                order_base = None
                if ordered:  # its own connection: the ordered receiver blocks in store.get
                    order_base = await asyncio.to_thread(
                        client_store, self.options.kv_host, self.options.kv_port, self.timeout
                    )
                group = await asyncio.to_thread(
                    make_group,
                    self.store,
                    pair_id,
                    0,
                    kind,
                    self.torch_device,
                    self.timeout,
                    ordered,
                    order_base,
                )
                self.groups.put(pair_id, group)
                log.warning(
                    "formed KV pair group %s: backend %s, ordered %s", pair_id, kind.value, group.ordered
                )
                pending.set_result(group)
            except Exception as exc:
                self.fail(prefill_url)
                pending.set_exception(TransferError(f"forming pair group {pair_id!r} failed: {exc}"))
            finally:
                self._pending.pop(pair_id, None)

        task = loop.create_task(form())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pending

    def fail(self, prefill_url: str) -> None:
        """Forget this prefill's group (and who it was): the next request asks its /info again and forms
        a fresh group under a new pair id."""
        self.groups.drop(self.pair_id(prefill_url))
        self._epochs[prefill_url] = self._epochs.get(prefill_url, 0) + 1
        self._peers.pop(prefill_url, None)


def build_decode_app(
    options: WorkerOptions, loaded: LoadedModel
) -> tuple[Starlette, ProcessState, DecodeEngine, DecodePairs]:
    metrics = create_metrics("decode", options.model_name)
    engine = DecodeEngine(
        loaded.model, loaded.cache, options.max_batch_size, metrics, options.tpot_slo_seconds
    )
    device = DeviceIdentity.of(loaded.device)
    pairs = DecodePairs(options, device, loaded.device)
    cache = loaded.cache
    layout = {
        "layers": cache.num_layers,
        "kv_heads": cache.k[0].shape[2],
        "head_dim": cache.k[0].shape[3],
        "dtype": str(loaded.dtype),
    }
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(options.transfer_timeout_seconds * 20, connect=options.transfer_timeout_seconds)
    )
    transfers_started = itertools.count(1)
    # Fault injection (DOPD_FAULT_EXIT_DURING_TRANSFER=N) counts transfers in the order their first layer
    # arrives, not the order they started: a transfer that started later can be prefilled first (its
    # /info or /prefill overtook an earlier one's), and if the count were by start, that later transfer
    # could finish and stream tokens before the N-th one's first layer arrived and the process exited.
    first_layers_received = itertools.count(1)
    labels = {"role": "decode", "model": options.model_name}
    metrics.kv_transfers_pending.labels(**labels).set_function(lambda: float(engine.pending_transfers))
    receiving: dict[str, asyncio.Task[tuple[int, list[Any]]]] = {}  # KV receives in progress
    acks: set[asyncio.Task[None]] = set()  # receipts on their way to prefill workers
    counts = {"kv_transfers_received": 0, "kv_acks_failed": 0}
    aborted: list[str] = []  # the drain timeout's reason, once it passed

    def abort(reason: str) -> int:
        aborted.append(reason)
        for task in receiving.values():
            task.cancel()
        return len(receiving) + engine.abort_all(reason)

    state = ProcessState(
        role="decode",
        metrics=metrics,
        in_flight=lambda: engine.in_flight() + len(acks),
        details=lambda: {
            "kv_usage": cache.allocator.usage(),
            "running": len(engine.active),
            "capacity_tokens": cache.allocator.capacity_tokens,
            "free_tokens": cache.allocator.free_blocks * cache.block_size,
            "model": options.model_name,
            "pending_transfers": engine.pending_transfers,
        },
        drain_timeout_seconds=options.drain_timeout_seconds,
        abort=abort,
        summary=lambda: {"kv_transfers_pending": engine.pending_transfers, **counts},
    )

    async def acknowledge(prefill_url: str, request_id: str) -> None:
        """Tell the prefill worker every layer arrived: its side of the transfer is then complete."""
        try:
            resp = await client.post(
                f"{prefill_url}/prefill/ack",
                json={"request_id": request_id},
                timeout=options.transfer_timeout_seconds,
            )
            if resp.status_code == 200:
                return
            problem = f"answered {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            problem = f"failed: {type(exc).__name__}: {exc}"
        counts["kv_acks_failed"] += 1
        log.error("confirming the KV of %s to %s %s", request_id, prefill_url, problem)

    async def receive_kv(
        request_id: str, prompt: list[int], sampling: SamplingParams, prefill_url: str
    ) -> tuple[int, list[Any]]:
        """Run the prefill on `prefill_url` and receive its KV; returns (first token, staged layers)."""
        number = next(transfers_started)
        pending_group = pairs.begin(prefill_url, await pairs.peer_device(prefill_url, client))
        rdv = pairs.rendezvous(prefill_url)
        base = pairs.next_tag_base(cache.num_layers)
        body = {
            "request_id": request_id,
            "prompt_token_ids": prompt,
            "sampling": sampling.to_json(),
            "rendezvous": rdv.to_json(),
            "tag_base": base,
            "kv_layout": layout,
            "ack": True,
            "prefill_worker_id": pairs.peer_worker_id(prefill_url),
        }
        started = time.monotonic()
        works: list[Any] = []
        group: PairGroup | None = None
        async with client.stream("POST", f"{prefill_url}/prefill", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:500]
                if resp.status_code == 409:  # another process now answers at that URL (a new pod)
                    pairs.fail(prefill_url)
                raise PrefillRefused(f"prefill worker {prefill_url} answered {resp.status_code}: {text}")
            lines = resp.aiter_lines()
            first = json.loads(await anext(lines))
            if not first.get("accepted"):
                raise TransferError(f"prefill worker {prefill_url} did not accept: {first}")
            group = await asyncio.wait_for(pending_group, options.transfer_timeout_seconds)
            buffers = [
                group.recv_buffer(cache.layer_shape(len(prompt)), loaded.dtype)
                for _ in range(cache.num_layers)
            ]
            if group.receiver is not None:  # ordered transfers (NCCL): the receiver posts in announced order
                done = asyncio.wrap_future(group.receiver.expect(base, buffers))
                await asyncio.wait_for(done, options.transfer_timeout_seconds * 2)
            else:
                works = [group.recv(buf, base + layer) for layer, buf in enumerate(buffers)]
            if options.fault_pause_during_transfer == number and works:
                # Fault injection for the chaos tests: hold a transfer half received until SIGKILLed.
                await asyncio.to_thread(group.wait, works[0], "layer 0")
                log.error("fault injection: KV transfer %d paused after layer 0", number)
                await asyncio.Event().wait()
            for layer, work in enumerate(works):
                await asyncio.to_thread(group.wait, work, f"KV receive of layer {layer} from {prefill_url}")
                if layer == 0 and options.fault_exit_during_transfer is not None:
                    # Fault injection for the scale-event tests: die with a transfer half received. Every
                    # transfer passes here before it can finish, so with N transfers having received
                    # their first layer, at most N - 1 finished: with N = 1, none (no request got a token).
                    arrived = next(first_layers_received)
                    if arrived == options.fault_exit_during_transfer:
                        log.error(
                            "fault injection: exiting during KV transfer %d (layer 0 in, transfer %d to get one)",
                            number,
                            arrived,
                        )
                        os._exit(17)
            last = json.loads(await anext(lines))
        if "error" in last:
            raise TransferError(f"prefill worker {prefill_url}: {last['error']}")
        nbytes = sum(b.numel() * b.element_size() for b in buffers)
        metrics.kv_transfer_bytes_total.labels(**labels).inc(nbytes)
        metrics.kv_transfer_seconds.labels(**labels).observe(time.monotonic() - started)
        return int(last["first_token"]), buffers

    async def generate(request: Request) -> Response:
        if state.draining:
            return error_response(503, "decode worker is draining", DRAINING_ERROR)
        try:
            body = await request.json()
            request_id = str(body["request_id"])
            prompt = [int(t) for t in body["prompt_token_ids"]]
            sampling = SamplingParams.from_json(body["sampling"])
            prefill_url = str(body["prefill_url"]).rstrip("/")
        except (ValueError, KeyError, TypeError) as exc:
            return error_response(400, f"bad /generate request: {exc}")
        total = len(prompt) + sampling.max_tokens
        if not prompt or total > loaded.max_model_len:
            return error_response(
                400,
                f"prompt ({len(prompt)}) + max_tokens ({sampling.max_tokens}) tokens "
                f"exceed the model's {loaded.max_model_len}",
            )
        try:
            with engine.lock:
                engine.cache.allocator.allocate(request_id, total)
        except OutOfBlocks as exc:
            return error_response(503, f"decode worker has no KV room now: {exc}", DECODE_FULL_ERROR)
        except ValueError as exc:
            return error_response(503, f"decode worker cannot take the request: {exc}", "unavailable")
        engine.pending_transfers += 1
        engine.gauges()
        receive = asyncio.ensure_future(receive_kv(request_id, prompt, sampling, prefill_url))
        receiving[request_id] = receive
        try:
            first_token, staged = await receive
        except asyncio.CancelledError:
            # The drain timeout, or the router hung up: either way the blocks go back (the layers land
            # in staging buffers, never in the blocks, until the transfer completes).
            with engine.lock:
                engine.cache.allocator.free(request_id)
            current = asyncio.current_task()
            if not aborted or (current is not None and current.cancelling()):
                raise  # the router hung up: nothing to answer
            pairs.fail(prefill_url)  # its receives may still be posted: this pair group is done
            log.error("%s: KV receive from %s ended by the drain timeout", request_id, prefill_url)
            return error_response(503, aborted[0], DRAINING_ERROR)
        except PrefillRefused as exc:
            with engine.lock:
                engine.cache.allocator.free(request_id)
            return error_response(503, str(exc), PREFILL_REFUSED_ERROR)
        except (TimeoutError, TransferError, httpx.HTTPError, StopAsyncIteration, ValueError) as exc:
            pairs.fail(prefill_url)
            with engine.lock:
                engine.cache.allocator.free(request_id)
            metrics.kv_transfer_failures_total.labels(**labels).inc()
            metrics.status("transfer_error")
            message = f"KV transfer from {prefill_url} failed: {type(exc).__name__}: {exc}"
            log.warning("%s: %s", request_id, message)
            return error_response(502, message, "kv_transfer_error")
        finally:
            receiving.pop(request_id, None)
            engine.pending_transfers -= 1
        counts["kv_transfers_received"] += 1
        ack = asyncio.ensure_future(acknowledge(prefill_url, request_id))
        acks.add(ack)
        ack.add_done_callback(acks.discard)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

        def emit(token: int | None, reason: str | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (token, reason))

        engine.admit(DecodeSequence(request_id, len(prompt), first_token, sampling, staged, emit))

        async def stream() -> AsyncIterator[bytes]:
            finished = False
            try:
                while True:
                    token, reason = await queue.get()
                    if token is not None:
                        yield json.dumps({"token": token}).encode() + b"\n"
                    if reason is not None:
                        finished = True
                        yield json.dumps({"finish_reason": reason}).encode() + b"\n"
                        return
            finally:
                if not finished:
                    engine.cancel(request_id)

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "role": "decode",
                "model": options.model_name,
                "kv_layout": layout,
                "max_model_len": loaded.max_model_len,
            }
        )

    app = Starlette(
        routes=[Route("/generate", generate, methods=["POST"]), Route("/info", info), *state.routes()]
    )
    return app, state, engine, pairs
