"""KV-cache transfer between one prefill and one decode worker over an on-demand two-rank process group.

There is no fixed world: pods come and go as the operator scales. The decode worker runs a TCPStore
(master) on its KV port and publishes it in every /prefill request; each prefill-decode pair then builds
its own two-rank group under a `PrefixStore(pair_id)` (decode rank 0, prefill rank 1), cached per peer
and dropped when a transfer on it fails or the peer leaves. A transfer sends one [2, tokens, kv_heads,
head_dim] tensor per layer (K and V) under its own tag, into blocks the decode side has reserved.

Which backend a pair uses is a pure function of the two devices (`select_transport`): gloo between CPU
workers; NCCL between GPUs that are distinct devices; gloo through host memory when both processes sit on
the same GPU (NCCL refuses two ranks on one device). Every wait has a timeout; a failure raises
`TransferError` and never leaves a worker blocked.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import enum
import socket
import threading
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist


class TransferError(RuntimeError):
    """A KV transfer failed or timed out; the request fails, the router may retry it elsewhere."""


class TransportKind(enum.Enum):
    GLOO = "gloo"
    NCCL = "nccl"
    GLOO_HOST_STAGED = "gloo-host-staged"


@dataclass(frozen=True)
class DeviceIdentity:
    """Where a worker's KV cache lives: `cpu` or `cuda`, the host, and the GPU's UUID (None on CPU)."""

    kind: str
    host: str
    gpu_uuid: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DeviceIdentity:
        return cls(kind=str(raw["kind"]), host=str(raw["host"]), gpu_uuid=raw.get("gpu_uuid"))

    @classmethod
    def of(cls, device: torch.device) -> DeviceIdentity:
        host = socket.gethostname()
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            return cls(kind="cuda", host=host, gpu_uuid=str(getattr(props, "uuid", device.index)))
        return cls(kind="cpu", host=host)


def select_transport(local: DeviceIdentity, peer: DeviceIdentity) -> TransportKind:
    """The backend for a pair; symmetric, so both sides pick the same one without negotiating."""
    if local.kind == "cpu" and peer.kind == "cpu":
        return TransportKind.GLOO
    if local.kind == "cuda" and peer.kind == "cuda":
        same_gpu = local.host == peer.host and local.gpu_uuid == peer.gpu_uuid
        return TransportKind.GLOO_HOST_STAGED if same_gpu else TransportKind.NCCL
    return TransportKind.GLOO_HOST_STAGED  # one side on CPU: stage the GPU side through host memory


@dataclass(frozen=True)
class Rendezvous:
    """What the decode side publishes so a prefill worker can join its pair group."""

    host: str
    port: int
    pair_id: str
    device: DeviceIdentity
    ordered: bool = False  # NCCL's in-order protocol (see PairGroup)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "pair_id": self.pair_id,
            "device": self.device.to_json(),
            "ordered": self.ordered,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Rendezvous:
        return cls(
            host=str(raw["host"]),
            port=int(raw["port"]),
            pair_id=str(raw["pair_id"]),
            device=DeviceIdentity.from_json(raw["device"]),
            ordered=bool(raw.get("ordered", False)),
        )


class PairGroup:
    """A two-rank group with one peer; sends and receives whole-layer KV tensors under a tag.

    `ordered` groups (NCCL, which ignores tags and matches sends to receives by order) carry each
    transfer whole, one after the other, in the order the prefill side announces in the pair's store;
    the decode side's `OrderedReceiver` posts its receives in that same order.
    """

    def __init__(
        self,
        pg: Any,
        kind: TransportKind,
        rank: int,
        device: torch.device,
        timeout: datetime.timedelta,
        store: Any = None,
        ordered: bool | None = None,
    ) -> None:
        self.pg = pg
        self.kind = kind
        self.rank = rank
        self.peer = 1 - rank
        self.device = device
        self.timeout = timeout
        self.broken = False
        self.store = store
        self.ordered = kind is TransportKind.NCCL if ordered is None else ordered
        self._announced = 0
        self.receiver: OrderedReceiver | None = None
        if self.ordered and rank == 0:
            self.receiver = OrderedReceiver(self)

    def announce(self, tag: int) -> None:
        """Prefill side of an ordered group: the next transfer on the wire is the one tagged `tag`."""
        self.store.set(f"order/{self._announced}", str(tag))
        self._announced += 1

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.cpu() if self.kind is TransportKind.GLOO_HOST_STAGED else tensor

    def send(self, tensor: torch.Tensor, tag: int) -> Any:
        if self.kind is TransportKind.NCCL:
            torch.cuda.current_stream(self.device).synchronize()
        return self.pg.send([self._wire(tensor.contiguous())], self.peer, tag)

    def recv_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        device = torch.device("cpu") if self.kind is TransportKind.GLOO_HOST_STAGED else self.device
        return torch.empty(shape, dtype=dtype, device=device)

    def recv(self, buffer: torch.Tensor, tag: int) -> Any:
        return self.pg.recv([buffer], self.peer, tag)

    def wait(self, work: Any, what: str) -> None:
        try:
            ok = work.wait(self.timeout)
        except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses with the peer's fate
            self.broken = True
            raise TransferError(f"{what} failed: {exc}") from exc
        if ok is False:
            self.broken = True
            raise TransferError(f"{what} timed out after {self.timeout.total_seconds():.1f}s")

    def close(self) -> None:
        self.broken = True
        if self.receiver is not None:
            self.receiver.fail(TransferError("pair group closed"))
        abort = getattr(self.pg, "abort", None)
        if callable(abort) and self.kind is TransportKind.NCCL:
            abort()


def make_group(
    store: Any,
    pair_id: str,
    rank: int,
    kind: TransportKind,
    device: torch.device,
    timeout: datetime.timedelta,
    ordered: bool | None = None,
    order_store_base: Any = None,
) -> PairGroup:
    """Join (blocking until the peer joins too, or timeout) the pair group `pair_id` on `store`.

    `ordered` defaults to what the backend needs (NCCL: yes); tests force it on gloo. The decode side
    gives an ordered group its own store connection (`order_store_base`): a blocking `get` holds a
    TCPStore connection's lock, and the shared one must stay free for forming other groups.
    """
    prefix = dist.PrefixStore(pair_id, store)  # type: ignore[attr-defined]
    order_prefix = dist.PrefixStore(pair_id, order_store_base or store)  # type: ignore[attr-defined]
    order_store = dist.PrefixStore("kv-order", order_prefix)  # type: ignore[attr-defined]
    try:
        if kind is TransportKind.NCCL:
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            torch.cuda.set_device(device)
            pg: Any = dist.ProcessGroupNCCL(prefix, rank, 2, options)
        else:
            pg = dist.ProcessGroupGloo(prefix, rank, 2, timeout)
    except Exception as exc:
        raise TransferError(f"could not form the KV pair group {pair_id!r}: {exc}") from exc
    return PairGroup(pg, kind, rank, device, timeout, store=order_store, ordered=ordered)


class PeerGroups:
    """Cache of pair groups by pair id, thread-safe; a broken group is dropped so the next use rebuilds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, PairGroup] = {}

    def get(self, pair_id: str) -> PairGroup | None:
        with self._lock:
            group = self._groups.get(pair_id)
            if group is not None and group.broken:
                del self._groups[pair_id]
                return None
            return group

    def put(self, pair_id: str, group: PairGroup) -> None:
        with self._lock:
            self._groups[pair_id] = group

    def drop(self, pair_id: str) -> None:
        with self._lock:
            group = self._groups.pop(pair_id, None)
        if group is not None:
            group.close()

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._groups)


def client_store(host: str, port: int, timeout: datetime.timedelta) -> Any:
    return dist.TCPStore(host, port, None, False, timeout=timeout, wait_for_workers=False)  # type: ignore[attr-defined]


def master_store(host: str, port: int, timeout: datetime.timedelta) -> Any:
    return dist.TCPStore(host, port, None, True, timeout=timeout, wait_for_workers=False)  # type: ignore[attr-defined]


def tag_base(transfer_number: int, num_layers: int) -> int:
    """First tag of a transfer; layer l uses base + l. Stays inside gloo's 32-bit tag space."""
    return (transfer_number % ((2**31) // num_layers)) * num_layers


class OrderedReceiver:
    """Decode side of an ordered group: one thread reads the announced transfer order from the store and,
    for each transfer, posts and waits all its layer receives before the next (NCCL's matching rule)."""

    def __init__(self, group: PairGroup) -> None:
        self.group = group
        self._cond = threading.Condition()
        self._expected: dict[int, tuple[list[torch.Tensor], concurrent.futures.Future[None]]] = {}
        self._error: TransferError | None = None
        threading.Thread(target=self._run, name="kv-ordered-receiver", daemon=True).start()

    def expect(self, tag: int, buffers: list[torch.Tensor]) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            if self._error is not None:
                future.set_exception(self._error)
            else:
                self._expected[tag] = (buffers, future)
                self._cond.notify_all()
        return future

    def fail(self, error: TransferError) -> None:
        with self._cond:
            self._error = self._error or error
            pending, self._expected = list(self._expected.values()), {}
            self._cond.notify_all()
        for _, future in pending:
            if not future.done():
                future.set_exception(error)

    def _next_tag(self, index: int) -> int | None:
        while self._error is None:
            try:
                return int(self.group.store.get(f"order/{index}"))
            except Exception:  # the store's get timed out: nothing announced yet; ask again
                if self.group.broken:
                    return None
        return None

    def _run(self) -> None:
        index = 0
        while True:
            tag = self._next_tag(index)
            if tag is None:
                return
            index += 1
            with self._cond:
                registered = self._cond.wait_for(
                    lambda t=tag: t in self._expected or self._error is not None,  # type: ignore[misc]
                    timeout=self.group.timeout.total_seconds(),
                )
                entry = self._expected.pop(tag, None) if registered else None
            if entry is None:
                self.group.broken = True
                self.fail(TransferError(f"transfer {tag} was announced but never expected here"))
                return
            buffers, future = entry
            try:
                works = [self.group.recv(buf, tag + layer) for layer, buf in enumerate(buffers)]
                for layer, work in enumerate(works):
                    self.group.wait(work, f"ordered KV receive of layer {layer}")
            except TransferError as exc:
                future.set_exception(exc)
                self.fail(exc)
                return
            future.set_result(None)
