"""`dopd profile`: measure this worker and write the performance profile the planner and simulator load.

Measures, on the worker's own model, device and paged cache: prefill batch time against prompt lengths
(single prompts and pairs, so the fit sees sum(l) and sum(l^2) move apart), decode step time against
batch size and context length, and the KV transfer bandwidth of a loopback gloo pair. Coefficients are
fitted with `dopd_operator.profile_fit` (not reimplemented here); the KV capacity in tokens is the
paged cache's. Output: YAML or JSON with the `dopd_operator.profile.PerformanceProfile` fields.
"""

from __future__ import annotations

import datetime
import functools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dopd_worker.kv_cache import SequenceSlice, build_batch
from dopd_worker.runtime import LoadedModel, WorkerOptions, load


@dataclass(frozen=True)
class ProfileRequest:
    model: str
    device: str = "auto"
    dtype: str = "auto"
    name: str | None = None
    prompt_lengths: tuple[int, ...] | list[int] = (32, 64, 128, 256, 512, 1024)
    batch_sizes: tuple[int, ...] | list[int] = (1, 4, 16, 32)
    context_lengths: tuple[int, ...] | list[int] = (64, 256, 1024)
    kv_cache_tokens: int | None = None
    repeats: int = 3
    max_batch_size: int = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward(loaded: LoadedModel, slices: list[SequenceSlice]) -> None:
    cache = loaded.cache
    loaded.model.forward_paged(build_batch(slices, cache.block_size, cache.device), cache.k, cache.v)


def measure_prefill(
    loaded: LoadedModel, lengths: list[int], repeats: int
) -> tuple[list[list[int]], list[float]]:
    cache, batches, seconds = loaded.cache, [], []
    usable = [n for n in lengths if 2 * n <= min(cache.allocator.capacity_tokens, loaded.max_model_len)]
    for n in usable:
        for batch in ([n], [n // 2, n - n // 2]):
            tables = [cache.allocator.allocate(f"p{i}", max(1, m)) for i, m in enumerate(batch)]
            slices = [SequenceSlice(t, 0, [1] * max(1, m)) for t, m in zip(tables, batch, strict=True)]
            seconds.append(
                _median_seconds(functools.partial(_forward, loaded, slices), cache.device, repeats)
            )
            batches.append(batch)
            for i in range(len(batch)):
                cache.allocator.free(f"p{i}")
    return batches, seconds


def measure_decode(
    loaded: LoadedModel, batch_sizes: list[int], contexts: list[int], repeats: int
) -> tuple[list[int], list[int], list[float]]:
    cache = loaded.cache
    sizes, totals, seconds = [], [], []
    for batch in batch_sizes:
        for ctx in contexts:
            if batch * (ctx + 1) > cache.allocator.capacity_tokens or ctx + 1 > loaded.max_model_len:
                continue
            tables = [cache.allocator.allocate(f"d{i}", ctx + 1) for i in range(batch)]
            slices = [SequenceSlice(t, ctx, [1]) for t in tables]
            seconds.append(
                _median_seconds(functools.partial(_forward, loaded, slices), cache.device, repeats)
            )
            sizes.append(batch)
            totals.append(batch * (ctx + 1))
            for i in range(batch):
                cache.allocator.free(f"d{i}")
    return sizes, totals, seconds


def _bandwidth_peer(port: int, nbytes: int, rounds: int) -> None:
    """Rank 1 of the bandwidth probe, in its own process (one process cannot hold both gloo ranks)."""
    from dopd_worker.transfer import TransportKind, client_store, make_group

    timeout = datetime.timedelta(seconds=30)
    group = make_group(
        client_store("127.0.0.1", port, timeout),
        "profile",
        1,
        TransportKind.GLOO,
        torch.device("cpu"),
        timeout,
    )
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    for i in range(rounds):
        group.wait(group.send(src, i), "profile send")


def measure_gloo_bandwidth(nbytes: int = 64 << 20, repeats: int = 3) -> float:
    """Bytes per second of a two-rank gloo pair over loopback TCP, the path a CPU KV transfer takes."""
    import multiprocessing
    import socket

    from dopd_worker.transfer import TransportKind, make_group, master_store

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    timeout = datetime.timedelta(seconds=30)
    store = master_store("127.0.0.1", port, timeout)
    peer = multiprocessing.get_context("spawn").Process(
        target=_bandwidth_peer, args=(port, nbytes, repeats + 1)
    )
    peer.start()
    try:
        group = make_group(store, "profile", 0, TransportKind.GLOO, torch.device("cpu"), timeout)
        dst = torch.empty(nbytes // 4, dtype=torch.float32)
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            group.wait(group.recv(dst, i), "profile recv")
            if i:  # round 0 is warm-up
                times.append(time.perf_counter() - start)
    finally:
        peer.join(timeout=30)
        if peer.is_alive():
            peer.kill()
    return nbytes / statistics.median(times)


def run_profile(request: ProfileRequest, out_path: Path) -> str:
    """Measure, fit, validate as a PerformanceProfile, write; returns a one-line summary."""
    from dopd_operator.profile import PerformanceProfile
    from dopd_operator.profile_fit import fit_decode, fit_prefill

    torch.set_grad_enabled(False)
    options = WorkerOptions(
        role="decode",
        model=request.model,
        device=request.device,
        dtype=request.dtype,
        kv_cache_tokens=request.kv_cache_tokens,
        max_batch_size=request.max_batch_size,
    )
    loaded = load(options)
    batches, prefill_s = measure_prefill(loaded, list(request.prompt_lengths), request.repeats)
    sizes, totals, decode_s = measure_decode(
        loaded, list(request.batch_sizes), list(request.context_lengths), request.repeats
    )
    prefill, prefill_fit = fit_prefill(batches, prefill_s)
    decode, decode_fit = fit_decode(sizes, totals, decode_s)
    bandwidth = measure_gloo_bandwidth()
    dtype_bytes = torch.empty((), dtype=loaded.dtype).element_size()
    device_name = torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else "cpu"
    name = request.name or f"{options.model_name}-{loaded.device.type}"
    profile = PerformanceProfile(
        name=name,
        description=(
            f"measured by dopd profile on {device_name}, {loaded.dtype}, model {request.model}; "
            f"prefill fit mean error {prefill_fit.mean_abs_pct_error:.1%} over {prefill_fit.samples} batches, "
            f"decode fit mean error {decode_fit.mean_abs_pct_error:.1%} over {decode_fit.samples} steps; "
            f"KV transfer bandwidth from a loopback gloo pair"
        ),
        prefill=prefill,
        decode=decode,
        kv_capacity_tokens=loaded.cache.allocator.capacity_tokens,
        max_batch_size=request.max_batch_size,
        kv_bytes_per_token=loaded.config.kv_bytes_per_token(dtype_bytes),
        kv_transfer_bytes_per_second=bandwidth,
    )
    write_document(profile.model_dump(mode="json", by_alias=True), out_path)
    return (
        f"wrote {out_path}: prefill a={prefill.a_seconds:.3g}s b={prefill.b_seconds_per_token:.3g}s/token "
        f"c={prefill.c_seconds_per_token2:.3g}s/token^2; decode a={decode.a_seconds:.3g}s "
        f"b={decode.b_seconds_per_context_token:.3g}s/ctx-token c={decode.c_seconds_per_sequence:.3g}s/seq; "
        f"KV capacity {profile.kv_capacity_tokens} tokens"
    )


def write_document(document: dict[str, Any], out_path: Path) -> None:
    """Write a profile document as JSON (`.json`) or YAML (anything else)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".json":
        out_path.write_text(json.dumps(document, indent=2) + "\n")
    else:
        import yaml

        out_path.write_text(yaml.safe_dump(document, sort_keys=False))
