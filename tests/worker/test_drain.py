"""Draining with real processes: SIGTERM (what the kubelet sends after the pod's preStop hook) on a prefill
or a decode worker under load loses no request, a prefill worker exits only once the decode side has
confirmed every KV transfer, and a drain timeout ends what is left with an error the client sees.

The router keeps listing the drained worker here (as it would until the endpoint removal reaches it):
its refusals must be re-routed without using a retry (`--max-retries 0`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .procs import SERVED_MODEL_NAME, Cluster, Proc, router_args, write_workers_file

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.timeout(300)]

EXIT_DRAIN_ABORTED = 3  # serving.EXIT_DRAIN_ABORTED, written out: a changed code is a changed contract


@pytest.fixture(autouse=True)
def _info_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOPD_TEST_LOG_LEVEL", "info")  # the drain summary is an info line when clean


@dataclass
class Pool:
    cluster: Cluster
    ckpt: str
    workers_file: Path

    def worker(
        self, name: str, role: str, *flags: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> Proc:
        args = ["worker", "--role", role, "--model", self.ckpt, "--kv-cache-tokens", "16384", *flags]
        return self.cluster.start(name, args, env=env, wait=False, port=port)

    def router(self, name: str, prefill: list[Proc], decode: list[Proc], max_retries: int) -> Proc:
        for proc in [*prefill, *decode]:
            self.cluster.wait_healthy(proc)
        write_workers_file(self.workers_file, [p.url for p in prefill], [d.url for d in decode])
        router = self.cluster.start(
            name,
            router_args(
                self.ckpt, "--workers-file", str(self.workers_file), "--max-retries", str(max_retries)
            ),
        )
        self.cluster.wait_router_sees(router, {p.url for p in [*prefill, *decode]})
        return router


@pytest.fixture(name="pool")
def pool_fixture(cluster: Cluster, tiny_checkpoint: Path, tmp_path: Path) -> Iterator[Pool]:
    yield Pool(cluster, str(tiny_checkpoint), tmp_path / "workers.json")
    cluster.kill_all()  # each test's processes go with it


@dataclass
class Result:
    status: int
    tokens: list[int]
    prefill: str
    decode: str
    error: str


async def _complete(
    client: httpx.AsyncClient, router: Proc, prompt: list[int], max_tokens: int, ignore_eos: bool
) -> Result:
    resp = await client.post(
        f"{router.url}/v1/completions",
        json={
            "model": SERVED_MODEL_NAME,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": ignore_eos,
            "return_token_ids": True,
        },
    )
    if resp.status_code != 200:
        return Result(resp.status_code, [], "", "", resp.json()["error"]["message"])
    return Result(
        200,
        resp.json()["choices"][0]["token_ids"],
        resp.headers["x-dopd-prefill-worker"],
        resp.headers["x-dopd-decode-worker"],
        "",
    )


def _prompt(i: int, length: int) -> list[int]:
    return [256, *((i * 7 + j) % 250 for j in range(length - 1))]


async def _burst(
    router: Proc, n: int, prompt_tokens: int, max_tokens: int, ignore_eos: bool = True
) -> list[Result]:
    async with httpx.AsyncClient(timeout=120) as client:
        return list(
            await asyncio.gather(
                *(
                    _complete(client, router, _prompt(i, prompt_tokens), max_tokens, ignore_eos)
                    for i in range(n)
                )
            )
        )


def _health(proc: Proc) -> dict[str, Any]:
    resp = httpx.get(f"{proc.url}/health", timeout=5)
    return dict(resp.json())


async def _until(probe: Any, what: str, timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not await asyncio.to_thread(probe):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def drain_summary(proc: Proc) -> dict[str, Any]:
    """The `drain summary: {json}` line the worker logs as it exits."""
    lines = [ln for ln in proc.log_path.read_text(errors="replace").splitlines() if "drain summary: " in ln]
    assert len(lines) == 1, f"{proc.name} logged {len(lines)} drain summaries:\n{proc.log()}"
    return dict(json.loads(lines[0].split("drain summary: ", 1)[1]))


async def test_sigterm_on_a_prefill_worker_finishes_its_prompts_and_kv_transfers_then_exits(
    pool: Pool,
) -> None:
    p1, p2 = pool.worker("p1", "prefill"), pool.worker("p2", "prefill")
    d1 = pool.worker("d1", "decode")
    router = pool.router("router", [p1, p2], [d1], max_retries=0)
    # prompts under the router's long-prompt threshold (1024), so both prefill workers take them
    running = asyncio.create_task(_burst(router, 40, 1000, 8))
    # SIGTERM while p1 holds KV transfers not yet confirmed (so its drain has work to finish)
    await _until(lambda: _health(p1)["pending_transfers"] > 0, "p1 to take prompts")
    p1.popen.send_signal(signal.SIGTERM)
    results = await running
    assert [r.status for r in results] == [200] * 40, [r.error for r in results if r.status != 200]
    assert all(len(r.tokens) == 8 for r in results)
    assert await asyncio.to_thread(p1.popen.wait, 60) == 0  # drained cleanly
    summary = drain_summary(p1)
    served_by_p1 = sum(r.prefill == p1.url for r in results)
    assert summary["in_flight_at_start"] > 0 and served_by_p1 > 0
    # Every transfer p1 made was acknowledged by the decode side before p1 exited: none pending, none
    # unconfirmed, none failed (p1 refused what came after SIGTERM; the router sent it to p2).
    assert summary["kv_transfers_confirmed"] == served_by_p1, summary
    assert (summary["kv_transfers_pending"], summary["kv_transfers_unconfirmed"], summary["aborted"]) == (
        0,
        0,
        0,
    )
    assert summary["kv_transfers_failed"] == 0, summary
    assert _health(d1)["pending_transfers"] == 0 and _health(d1)["kv_usage"] == 0.0


async def test_sigterm_on_a_decode_worker_finishes_its_sequences_and_new_requests_go_elsewhere(
    pool: Pool,
) -> None:
    p1 = pool.worker("p1", "prefill")
    d1, d2 = pool.worker("d1", "decode"), pool.worker("d2", "decode")
    router = pool.router("router", [p1], [d1, d2], max_retries=0)
    first = asyncio.create_task(_burst(router, 12, 64, 300))
    await _until(lambda: _health(d1)["running"] > 0, "d1 to decode")
    d1.popen.send_signal(signal.SIGTERM)
    # the router still lists d1 (no endpoint change here): it refuses, and they go to d2 at no retry cost
    later = await _burst(router, 8, 64, 4)
    results = await first
    assert all(r.status == 200 and len(r.tokens) == 300 for r in results), [r.error for r in results]
    assert any(r.decode == d1.url for r in results)  # d1 finished what it held
    assert all(r.status == 200 and r.decode == d2.url for r in later), later
    assert await asyncio.to_thread(d1.popen.wait, 60) == 0
    summary = drain_summary(d1)
    assert summary["in_flight_at_start"] > 0 and summary["aborted"] == 0
    assert summary["kv_acks_failed"] == 0 and summary["kv_transfers_pending"] == 0, summary


async def test_a_drain_timeout_ends_unfinished_streams_with_an_error_the_client_sees(pool: Pool) -> None:
    import openai

    p1 = pool.worker("p1", "prefill")
    d1 = pool.worker("d1", "decode", "--drain-timeout-seconds", "3")
    router = pool.router("router", [p1], [d1], max_retries=1)
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    received = [0, 0]

    async def stream(i: int) -> str:
        chunks = await client.completions.create(
            model=SERVED_MODEL_NAME,
            prompt=f"request {i}",
            max_tokens=4000,  # far more than 3 s of decoding on these cores
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        try:
            async for chunk in chunks:
                if chunk.choices[0].text:
                    received[i] += 1
        except openai.APIError as exc:
            return str(exc)
        return "finished"

    streams = [asyncio.create_task(stream(i)) for i in range(2)]
    await _until(lambda: min(received) >= 5, "both streams to have tokens")
    d1.popen.send_signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*streams)
    for outcome in outcomes:  # never a silently short completion: the error says why
        assert "drain timeout of 3s passed" in outcome, outcomes
    assert min(received) >= 5 and max(received) < 4000
    assert await asyncio.to_thread(d1.popen.wait, 30) == EXIT_DRAIN_ABORTED
    summary = drain_summary(d1)
    assert summary["aborted"] == 2 and summary["exit_code"] == EXIT_DRAIN_ABORTED, summary


async def test_a_new_prefill_process_at_a_reused_address_is_not_taken_for_the_old_one(pool: Pool) -> None:
    # Kubernetes hands a deleted pod's address to a new pod: the decode worker, which knows the old
    # process's KV pair group, must not use it with the new one (it would wait out the transfer timeout).
    p1 = pool.worker("p1", "prefill")
    d1 = pool.worker("d1", "decode")
    router = pool.router("router", [p1], [d1], max_retries=0)
    before = await _burst(router, 4, 32, 4)
    assert all(r.status == 200 for r in before), before
    p1.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(p1.popen.wait, 60) == 0
    again = pool.worker("p1-again", "prefill", port=int(p1.url.rsplit(":", 1)[1]))
    pool.cluster.wait_healthy(again)
    assert again.url == p1.url
    after = await _burst(router, 4, 32, 4)
    # served by the new process with no retry to spare: its refusal of the stale pair (409) made the decode
    # worker ask its /info again and form a new group, and the router re-routed the refused request
    assert all(r.status == 200 and r.prefill == p1.url for r in after), after
    new_id = httpx.get(f"{again.url}/info", timeout=5).json()["worker_id"]
    assert f"/{p1.url}/{new_id}: backend gloo" in d1.log_path.read_text()
