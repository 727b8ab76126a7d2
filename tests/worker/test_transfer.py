"""KV transfer: the backend selection table (pure), and a real two-process gloo pair that moves a layer
into reserved blocks and fails clearly, without hanging, when the peer dies mid-transfer."""

from __future__ import annotations

import datetime
import multiprocessing
from typing import Any

import pytest
import torch

from dopd_worker.config import PRESETS
from dopd_worker.kv_cache import PagedKVCache
from dopd_worker.ports import free_ports
from dopd_worker.transfer import (
    DeviceIdentity,
    Rendezvous,
    TransferError,
    TransportKind,
    client_store,
    make_group,
    master_store,
    select_transport,
    tag_base,
)

CPU_A = DeviceIdentity("cpu", "node-a")
CPU_B = DeviceIdentity("cpu", "node-b")
GPU_A0 = DeviceIdentity("cuda", "node-a", "GPU-0000")
GPU_A1 = DeviceIdentity("cuda", "node-a", "GPU-1111")
GPU_B0 = DeviceIdentity("cuda", "node-b", "GPU-2222")


@pytest.mark.parametrize(
    ("local", "peer", "kind"),
    [
        pytest.param(CPU_A, CPU_B, TransportKind.GLOO, id="cpu-cpu-gloo"),
        pytest.param(CPU_A, CPU_A, TransportKind.GLOO, id="cpu-cpu-same-host-gloo"),
        pytest.param(GPU_A0, GPU_A1, TransportKind.NCCL, id="two-gpus-one-node-nccl"),
        pytest.param(GPU_A0, GPU_B0, TransportKind.NCCL, id="gpus-on-two-nodes-nccl"),
        # NCCL refuses two ranks on one device: stage through host memory over gloo.
        pytest.param(GPU_A0, GPU_A0, TransportKind.GLOO_HOST_STAGED, id="same-gpu-host-staged"),
        pytest.param(GPU_A0, CPU_A, TransportKind.GLOO_HOST_STAGED, id="gpu-cpu-host-staged"),
    ],
)
def test_select_transport_is_symmetric(
    local: DeviceIdentity, peer: DeviceIdentity, kind: TransportKind
) -> None:
    assert select_transport(local, peer) is kind
    assert select_transport(peer, local) is kind  # both sides decide alone and must agree


def test_rendezvous_round_trips_through_json() -> None:
    rdv = Rendezvous("10.0.0.7", 29600, "abc/0/http://p:8000", GPU_A0)
    assert Rendezvous.from_json(rdv.to_json()) == rdv


def test_tag_bases_of_consecutive_transfers_do_not_overlap() -> None:
    layers = 32
    bases = [tag_base(n, layers) for n in range(1000)]
    assert len(set(bases)) == 1000 and all(b % layers == 0 for b in bases)
    assert tag_base(2**31 // layers, layers) == 0  # wraps inside gloo's 31-bit tag space


PEER_START_TIMEOUT_S = 60.0


def _prefill_peer(port: int, layers_to_send: int, exit_code: int, started: Any) -> None:
    """Rank 1: sends `layers_to_send` layers of a known KV, then exits abruptly (a killed pod)."""
    import os

    timeout = datetime.timedelta(seconds=5)
    store = client_store("127.0.0.1", port, timeout)
    started.set()
    group = make_group(
        store,
        "pair-x",
        1,
        TransportKind.GLOO,
        torch.device("cpu"),
        timeout,
    )
    for layer in range(layers_to_send):
        kv = torch.full((2, 20, 2, 16), float(layer + 1))
        group.wait(group.send(kv, 100 + layer), "send")
    os._exit(exit_code)


def _receive(layers_sent: int) -> tuple[PagedKVCache, list[int], BaseException | None]:
    (port,) = free_ports(1)
    timeout = datetime.timedelta(seconds=5)
    store = master_store("127.0.0.1", port, timeout)
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    peer = context.Process(target=_prefill_peer, args=(port, layers_sent, 0, started))
    peer.start()
    # Both pods are up before they pair: the 5 s group timeout is for the pairing, not for a fresh
    # interpreter importing torch (which took longer than that on two busy cores).
    assert started.wait(PEER_START_TIMEOUT_S), f"the peer process did not start in {PEER_START_TIMEOUT_S} s"
    cache = PagedKVCache(PRESETS["tiny"], 8, 16, torch.float32, torch.device("cpu"))
    table = cache.allocator.allocate("r", 20)
    error: BaseException | None = None
    try:
        group = make_group(store, "pair-x", 0, TransportKind.GLOO, torch.device("cpu"), timeout)
        buffers = [group.recv_buffer(cache.layer_shape(20), torch.float32) for _ in range(cache.num_layers)]
        works = [group.recv(b, 100 + layer) for layer, b in enumerate(buffers)]
        for layer, work in enumerate(works):
            group.wait(work, f"layer {layer}")
            cache.write_layer(layer, table, buffers[layer])
    except TransferError as exc:
        error = exc
    finally:
        peer.join(timeout=20)
        if peer.is_alive():
            peer.kill()
    return cache, table, error


@pytest.mark.worker
@pytest.mark.timeout(120)
def test_two_process_gloo_pair_moves_every_layer_into_reserved_blocks() -> None:
    cache, table, error = _receive(layers_sent=2)
    assert error is None
    for layer in range(2):
        assert torch.equal(cache.read_layer(layer, table, 20), torch.full((2, 20, 2, 16), float(layer + 1)))


@pytest.mark.worker
@pytest.mark.timeout(120)
def test_peer_dying_mid_transfer_raises_transfer_error_instead_of_hanging() -> None:
    cache, table, error = _receive(layers_sent=1)  # the peer dies after layer 0 of 2
    assert isinstance(error, TransferError)
    assert "layer 1" in str(error)
    assert torch.equal(cache.read_layer(0, table, 20), torch.full((2, 20, 2, 16), 1.0))
