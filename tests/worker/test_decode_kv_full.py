"""A decode pool whose KV cache is full: the router makes requests wait for room instead of failing them
(the decode worker reserves prompt + max_tokens of KV before it asks for the prefill, and answers 503
`decode_kv_full` when it has none), and a request no decode worker could ever hold fails at once with a
400 that names the sizes. Real router, prefill and decode processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dopd_worker.router import WorkerState, decode_room_tokens

from .procs import Cluster, Proc

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.timeout(300)]

KV_TOKENS = 512  # 32 blocks of 16 tokens: four sequences of 16 + 112 tokens at once
PROMPT = list(range(1, 17))
MAX_TOKENS = 112


@pytest.fixture(scope="module")
def small_decode(cluster: Cluster, tiny_checkpoint: Path) -> Iterator[Proc]:
    *_, router = cluster.start_serving(
        "kv-full",
        str(tiny_checkpoint),
        (4096, KV_TOKENS),
        *("--max-model-len", "1024", "--max-retries", "0", "--queue-timeout-seconds", "120"),
    )
    yield router


async def test_requests_beyond_the_decode_kv_wait_for_room_and_all_complete(small_decode: Proc) -> None:
    # Twelve at once where four fit: with no retries allowed, every one past the fourth used to get a 503
    # from the full decode worker. Now each waits for a finished sequence's blocks and completes in full.
    async with httpx.AsyncClient(timeout=200) as client:

        async def one() -> httpx.Response:
            return await client.post(
                f"{small_decode.url}/v1/completions",
                json={
                    "model": "tiny-test",
                    "prompt": PROMPT,
                    "max_tokens": MAX_TOKENS,
                    "ignore_eos": True,
                    "return_token_ids": True,
                },
            )

        responses = await asyncio.gather(*(one() for _ in range(12)))
    assert [r.status_code for r in responses] == [200] * 12, [
        r.text for r in responses if r.status_code != 200
    ]
    assert all(len(r.json()["choices"][0]["token_ids"]) == MAX_TOKENS for r in responses)


def test_a_request_larger_than_every_decode_kv_cache_fails_at_once_naming_the_sizes(
    small_decode: Proc,
) -> None:
    body = {"model": "tiny-test", "prompt": PROMPT, "max_tokens": 600}  # 616 tokens > 512, < max-model-len
    resp = httpx.post(f"{small_decode.url}/v1/completions", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert "616 tokens of KV cache, more than any decode worker holds (512)" in message
    assert "lower max_tokens" in message


def test_room_is_what_neither_the_last_poll_nor_this_routers_reservations_took() -> None:
    state = WorkerState("http://127.0.0.1:1", "decode", capacity_tokens=1000, free_tokens=700)
    assert decode_room_tokens(state) == 700
    state.inflight_tokens = 450  # reserved by this router since the poll: more than the poll saw taken
    assert decode_room_tokens(state) == 550
    state.free_tokens = None  # a worker that reports only its usage ratio
    state.kv_usage = 0.6
    assert decode_room_tokens(state) == 400
