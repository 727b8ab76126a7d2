"""`dopd profile --served`: measure the served system through the router's HTTP API.

The in-process profile (`profiler.py`) times kernels: a prefill forward pass, a decode step. What a
client sees also pays for HTTP, the router's queue and dispatch, the prefill/decode protocol, the
engines' step loops and per-token streaming. This mode starts (or points at) real prefill and decode
workers and a router, and measures end to end:

- prefill: TTFT (the router's `x-dopd-ttft-seconds`, arrival to first token) against prompt length at
  concurrency 1 (requests with the decode probe's output length, lengths interleaved, mean per length), fitted with `fit_prefill` on single-prompt batches, so fixed per-request costs (HTTP,
  routing, the prefill call) land in the prefill `a` coefficient;
- decode: TPOT as a client measures it, `(end - sent - TTFT) / (tokens - 1)`, for B concurrent requests
  of one context length; B is the time-weighted number of requests decoding together over each
  request's decode span (prefills are serial, so the streams start staggered), fitted with
  `fit_decode` against that B and B x (context + tokens/2).

The KV capacity comes from the decode worker's /health, the transfer bandwidth from a loopback gloo
pair, as in the in-process mode. Output: the same `PerformanceProfile` YAML/JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dopd_worker.ports import free_ports


@dataclass(frozen=True)
class ServedProfileRequest:
    model: str
    device: str = "cpu"
    dtype: str = "auto"
    name: str | None = None
    router_url: str | None = None  # None: start a prefill worker, a decode worker and a router
    prompt_lengths: Sequence[int] = (16, 64, 128, 256, 512)
    batch_sizes: Sequence[int] = (1, 2, 4, 8)
    context_lengths: Sequence[int] = (64, 256)
    output_tokens: int = 24
    repeats: int = 3
    kv_cache_tokens: int | None = None
    token_budget: int = 4096
    max_batch_size: int = 64
    served_model_name: str = "profile"


@dataclass
class ServedCluster:
    """A prefill worker, a decode worker and a FIFO router as subprocesses on free 127.0.0.1 ports."""

    router_url: str
    decode_url: str
    prefill_url: str
    served_model_name: str
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{url} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s")


@contextlib.contextmanager
def served_cluster(
    model: str,
    device: str = "cpu",
    dtype: str = "auto",
    kv_cache_tokens: int | None = None,
    token_budget: int = 4096,
    max_batch_size: int = 64,
    served_model_name: str = "profile",
    logs: Path | None = None,
) -> Iterator[ServedCluster]:
    """Start router -> prefill -> decode (one each, single-threaded torch as in the pods); kill at exit."""
    logs = logs or Path(tempfile.mkdtemp(prefix="dopd-served-"))
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    procs: list[subprocess.Popen[bytes]] = []
    # router, prefill, decode and the decode's KV store: picked together, so none repeats another
    ports = iter(free_ports(4))

    def start(name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], str, Path]:
        port = next(ports)
        log = logs / f"{name}.log"
        cmd = [sys.executable, "-m", "dopd_worker", *args, "--port", str(port), "--log-level", "warning"]
        proc = subprocess.Popen(
            cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}", log

    common = ["--model", model, "--device", device, "--dtype", dtype]
    if kv_cache_tokens is not None:
        common += ["--kv-cache-tokens", str(kv_cache_tokens)]
    try:
        prefill = start(
            "prefill", ["worker", "--role", "prefill", *common, "--token-budget", str(token_budget)]
        )
        decode = start(
            "decode",
            [
                *("worker", "--role", "decode", *common),
                *("--max-batch-size", str(max_batch_size), "--kv-port", str(next(ports))),
            ],
        )
        _wait_healthy(prefill[1], prefill[0], prefill[2])
        _wait_healthy(decode[1], decode[0], decode[2])
        router = start(
            "router",
            [
                *("router", "--model", model, "--served-model-name", served_model_name),
                *("--prefill", prefill[1], "--decode", decode[1], "--policy", "fifo"),
                *("--prefill-token-budget", str(token_budget)),
            ],
        )
        _wait_healthy(router[1], router[0], router[2])
        yield ServedCluster(router[1], decode[1], prefill[1], served_model_name, logs, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@dataclass(frozen=True)
class Completion:
    sent_s: float
    ttft_s: float
    done_s: float
    tokens: int

    @property
    def tpot_s(self) -> float:
        return (self.done_s - self.sent_s - self.ttft_s) / max(self.tokens - 1, 1)


async def complete(
    client: httpx.AsyncClient, router_url: str, model: str, prompt: list[int], max_tokens: int
) -> Completion:
    """One non-streaming completion (greedy, ignore_eos); times on the client's perf_counter clock."""
    sent = time.perf_counter()
    response = await client.post(
        f"{router_url}/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
        },
    )
    done = time.perf_counter()
    response.raise_for_status()
    return Completion(sent, float(response.headers["x-dopd-ttft-seconds"]), done, max_tokens)


def _prompt(length: int, salt: int) -> list[int]:
    return [3 + (salt * 31 + i * 7) % 240 for i in range(length)]


def effective_batch(runs: Sequence[Completion]) -> list[float]:
    """For each request, the time-weighted number of requests decoding during its decode span."""
    spans = [(r.sent_s + r.ttft_s, r.done_s) for r in runs]
    out = []
    for start, end in spans:
        length = max(end - start, 1e-9)
        overlap = sum(max(0.0, min(end, e) - max(start, s)) for s, e in spans)
        out.append(overlap / length)
    return out


def prefill_points(samples: Mapping[int, Sequence[float]]) -> tuple[list[list[int]], list[float]]:
    """Per prompt length, its rounds' median TTFT: (single-prompt batches, seconds) for `fit_prefill`."""
    return [[length] for length in samples], [statistics.median(ttfts) for ttfts in samples.values()]


def decode_points(
    points: Mapping[tuple[int, int], Sequence[tuple[float, float]]], output_tokens: int
) -> tuple[list[float], list[float], list[float]]:
    """Per (B, context) point, its rounds' (effective batch, mean TPOT) medians: the batch sizes, summed
    context (each sequence at its context plus half its output) and seconds for `fit_decode`."""
    sizes = [statistics.median(e for e, _ in rounds) for rounds in points.values()]
    totals = [b * (ctx + output_tokens / 2) for b, (_, ctx) in zip(sizes, points, strict=True)]
    return sizes, totals, [statistics.median(t for _, t in rounds) for rounds in points.values()]


@dataclass(frozen=True)
class ServedSamples:
    """What `measure` timed through the router, in the shapes `fit_prefill` and `fit_decode` take."""

    prefill_batches: list[list[int]]  # one single-prompt batch per prompt length
    ttft_seconds: list[float]  # the median over rounds, per prompt length
    decode_batch_sizes: list[float]  # the effective batch, per (B, context) point
    decode_context_tokens: list[float]  # the batch's summed context, per point
    tpot_seconds: list[float]  # the median over rounds of the mean TPOT, per point


async def measure(router_url: str, model: str, request: ServedProfileRequest) -> ServedSamples:
    """Prefill samples (batches, TTFT) and decode samples (B, summed context, TPOT), medians of rounds."""
    n = request.output_tokens
    async with httpx.AsyncClient(timeout=300.0) as client:
        # Warm-up: the first requests build the KV pair group and touch fresh cache blocks.
        for salt, length in enumerate(request.prompt_lengths):
            await complete(client, router_url, model, _prompt(length, salt), n)
        # Prefill: served requests (n output tokens, as a trace sends them) one at a time; the lengths
        # round-robin so drift in a busy machine's speed spreads over all of them. The median per length,
        # as the in-process profiler takes: one request slowed by a neighbour's burst does not move the fit.
        samples: dict[int, list[float]] = {length: [] for length in request.prompt_lengths}
        for k in range(request.repeats):
            for length in request.prompt_lengths:
                run = await complete(client, router_url, model, _prompt(length, 100 + k), n)
                samples[length].append(run.ttft_s)
        batches, ttfts = prefill_points(samples)
        # Decode: `repeats` rounds over every (B, context) point, each round one batch per point; the
        # median per point of its rounds' effective batch and mean TPOT.
        points: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for k in range(request.repeats):
            for batch in request.batch_sizes:
                for ctx in request.context_lengths:
                    runs = list(
                        await asyncio.gather(
                            *(
                                complete(client, router_url, model, _prompt(ctx, 1000 * k + j), n)
                                for j in range(batch)
                            )
                        )
                    )
                    effective = statistics.mean(effective_batch(runs))
                    points.setdefault((batch, ctx), []).append(
                        (effective, statistics.mean(r.tpot_s for r in runs))
                    )
        sizes, totals, tpots = decode_points(points, n)
    return ServedSamples(batches, ttfts, sizes, totals, tpots)


def _kv_capacity(router_url: str, fallback: int | None) -> int:
    workers = httpx.get(f"{router_url}/workers", timeout=5.0).json()
    capacities = []
    for url, info in workers.items():
        if info.get("role") == "decode":
            health = httpx.get(f"{url}/health", timeout=5.0).json()
            if "capacity_tokens" in health:
                capacities.append(int(health["capacity_tokens"]))
    if capacities:
        return min(capacities)
    if fallback is None:
        raise RuntimeError("no decode worker reports its KV capacity; pass --kv-cache-tokens")
    return fallback


def profile_document(router_url: str, model_name: str, request: ServedProfileRequest) -> dict[str, Any]:
    """Measure through `router_url`, fit, validate as a PerformanceProfile; the camelCase document."""
    import torch

    from dopd_operator.profile import PerformanceProfile
    from dopd_operator.profile_fit import fit_decode, fit_prefill
    from dopd_worker.config import load_model_config
    from dopd_worker.profiler import measure_gloo_bandwidth
    from dopd_worker.runtime import pick_device, pick_dtype

    started = time.perf_counter()
    samples = asyncio.run(measure(router_url, model_name, request))
    prefill, prefill_fit = fit_prefill(samples.prefill_batches, samples.ttft_seconds)
    decode, decode_fit = fit_decode(
        samples.decode_batch_sizes, samples.decode_context_tokens, samples.tpot_seconds
    )
    bandwidth = measure_gloo_bandwidth()
    device = pick_device(request.device)
    dtype_bytes = torch.empty((), dtype=pick_dtype(request.dtype, device)).element_size()
    config = load_model_config(request.model)
    name = request.name or f"{Path(request.model).name}-{device.type}-served"
    profile = PerformanceProfile(
        name=name,
        description=(
            f"measured by dopd profile --served through the router on {device.type}, model {request.model}, "
            f"in {time.perf_counter() - started:.0f} s; TTFT fit mean error {prefill_fit.mean_abs_pct_error:.1%} "
            f"over {prefill_fit.samples} prompt lengths, TPOT fit mean error {decode_fit.mean_abs_pct_error:.1%} "
            f"over {decode_fit.samples} (batch, context) points; KV transfer bandwidth from a loopback gloo pair"
        ),
        prefill=prefill,
        decode=decode,
        kv_capacity_tokens=_kv_capacity(router_url, request.kv_cache_tokens),
        max_batch_size=request.max_batch_size,
        kv_bytes_per_token=config.kv_bytes_per_token(dtype_bytes),
        kv_transfer_bytes_per_second=bandwidth,
    )
    document: dict[str, Any] = profile.model_dump(mode="json", by_alias=True)
    return document


def run_served_profile(request: ServedProfileRequest, out_path: Path) -> str:
    """Start (or use `request.router_url`), measure, write; returns a one-line summary."""
    from dopd_worker.profiler import write_document

    if request.router_url is not None:
        document = profile_document(request.router_url, request.served_model_name, request)
    else:
        with served_cluster(
            request.model,
            request.device,
            request.dtype,
            request.kv_cache_tokens,
            request.token_budget,
            request.max_batch_size,
            request.served_model_name,
        ) as cluster:
            document = profile_document(cluster.router_url, cluster.served_model_name, request)
    write_document(document, out_path)
    p, d = document["prefill"], document["decode"]
    return f"wrote {out_path}: prefill {p}; decode {d}; KV capacity {document['kvCapacityTokens']} tokens"
