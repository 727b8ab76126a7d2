"""The router counts a request in `dopd_requests_arrived_total` when it admits it, before any work, so
the operator's arrival rate does not lag behind completions; requests it rejects are not arrivals."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dopd_worker.ports import free_ports

from .procs import Cluster, metric_sample, router_args

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]

ARRIVED = 'dopd_requests_arrived_total{model="tiny-test",role="router"}'


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def test_a_queued_request_is_counted_on_arrival_and_a_rejected_one_is_not(cluster: Cluster) -> None:
    # taken together: a router port picked after the dead one could be that port, and it would route to itself
    dead_port, router_port = free_ports(2)
    dead = f"http://127.0.0.1:{dead_port}"  # no worker there: an admitted request waits in the queue
    router = cluster.start(
        "router-arrivals",
        router_args("tiny", "--prefill", dead, "--decode", dead, "--queue-timeout-seconds", "30"),
        port=router_port,
    )
    start = _metrics(router.url)
    # at zero from the start: a series born with its first increment would lose it to increase(), and
    # the operator reads a missing series as unknown
    assert metric_sample(start, ARRIVED) == 0.0
    # the shed counters the operator's served rate subtracts, every reason and class at zero
    for priority in ("interactive", "standard", "batch"):
        expired = f'dopd_requests_expired_total{{model="tiny-test",priority="{priority}",role="router"}}'
        assert metric_sample(start, expired) == 0.0, expired
        for reason in (
            "predicted_ttft",
            "decode_full",
            "decode_slow",
            "no_prefill_worker",
            "no_decode_worker",
        ):
            rejected = (
                f'dopd_requests_rejected_total{{model="tiny-test",priority="{priority}",'
                f'reason="{reason}",role="router"}}'
            )
            assert metric_sample(start, rejected) == 0.0, rejected
    rejected = httpx.post(
        f"{router.url}/v1/completions",
        json={"model": "tiny-test", "prompt": "x", "max_tokens": 0},
        timeout=10,
    )
    assert rejected.status_code == 400
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            httpx.post, f"{router.url}/v1/completions", json={"model": "tiny-test", "prompt": "x"}, timeout=60
        )
        deadline = time.monotonic() + 25
        text = _metrics(router.url)
        while metric_sample(text, 'dopd_requests_waiting{model="tiny-test",role="router"}') != 1.0:
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
            text = _metrics(router.url)
        # admitted and still queued: counted (the completion counter has nothing yet)
        assert metric_sample(text, ARRIVED) == 1.0
        assert 'dopd_requests_total{model="tiny-test",role="router",status="ok"}' not in text
        assert waiting.result().status_code == 503
    assert metric_sample(_metrics(router.url), ARRIVED) == 1.0  # the 400 was never an arrival


def test_requests_served_through_the_real_router_are_counted(cluster: Cluster, tiny_checkpoint: Path) -> None:
    ckpt = str(tiny_checkpoint)
    prefill = cluster.start(
        "prefill-arrivals",
        ["worker", "--role", "prefill", "--model", ckpt, "--kv-cache-tokens", "2048"],
        wait=False,
    )
    decode = cluster.start(
        "decode-arrivals",
        ["worker", "--role", "decode", "--model", ckpt, "--kv-cache-tokens", "2048"],
        wait=False,
    )
    cluster.wait_healthy(prefill)
    cluster.wait_healthy(decode)
    router = cluster.start(
        "router-served", router_args(ckpt, "--prefill", prefill.url, "--decode", decode.url)
    )
    cluster.wait_router_sees(router, {prefill.url, decode.url})
    for prompt in ("one", "two", "three"):
        httpx.post(
            f"{router.url}/v1/completions",
            json={"model": "tiny-test", "prompt": prompt, "max_tokens": 2},
            timeout=120,
        ).raise_for_status()
    text = _metrics(router.url)
    assert metric_sample(text, ARRIVED) == 3.0
    assert metric_sample(text, 'dopd_requests_total{model="tiny-test",role="router",status="ok"}') == 3.0
    # only the router counts arrivals: the workers see each request too, and must not double it
    assert "dopd_requests_arrived_total{" not in _metrics(prefill.url)
    assert "dopd_requests_arrived_total{" not in _metrics(decode.url)
