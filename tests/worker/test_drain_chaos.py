"""Chaos: a worker SIGKILLed in the middle of a KV transfer fails only its own requests; the router retries
a request once where that is safe (before its first token reached the client), and never duplicates a
token. The kill is a real SIGKILL from outside; fault injection (`DOPD_FAULT_PAUSE_DURING_TRANSFER=N`)
only holds the N-th transfer open after its first layer, so the kill lands inside a transfer every time.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx
import pytest

from .procs import SERVED_MODEL_NAME, Proc
from .test_drain import Pool, _burst, _health, _prompt, _until, pool_fixture  # noqa: F401 (fixture `pool`)
from .test_e2e_serving import _reference

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.timeout(300)]


def _paused(proc: Proc) -> bool:
    return "fault injection: " in proc.log_path.read_text(errors="replace")


def _samples(proc: Proc, name: str) -> tuple[list[float], str]:
    """The values of every labelled series of `name` on the worker's /metrics, and the page."""
    text = httpx.get(f"{proc.url}/metrics", timeout=5).text
    return [float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE)], text


def _metric(proc: Proc, name: str) -> float:
    values, text = _samples(proc, name)
    assert len(values) == 1, f"{name} in:\n{text}"
    return values[0]


def _tokens_generated(proc: Proc) -> float:
    """Tokens the worker has emitted (0 before its first: the labelled counter appears with it)."""
    return sum(_samples(proc, "dopd_generation_tokens_total")[0])


async def test_a_prefill_worker_killed_mid_transfer_fails_no_request(
    pool: Pool, tiny_checkpoint: Path
) -> None:
    victim = pool.worker("p-victim", "prefill", env={"DOPD_FAULT_PAUSE_DURING_TRANSFER": "2"})
    p2 = pool.worker("p2", "prefill")
    d1, d2 = pool.worker("d1", "decode"), pool.worker("d2", "decode")
    router = pool.router("router", [victim, p2], [d1, d2], max_retries=1)
    running = asyncio.create_task(_burst(router, 16, 200, 12, ignore_eos=False))
    await _until(lambda: _paused(victim), "the victim's second transfer to stop after layer 0")
    await _until(lambda: _health(d1)["pending_transfers"] + _health(d2)["pending_transfers"] > 0, "a receive")
    victim.popen.send_signal(signal.SIGKILL)
    results = await running
    # Every request the victim held was before its first token: retried on p2, none failed ...
    assert [r.status for r in results] == [200] * 16, [r.error for r in results if r.status != 200]
    assert all(r.prefill == p2.url for r in results if r.prefill != victim.url)
    # ... and each got exactly the tokens a single process computes: nothing lost, nothing twice.
    prompts = [_prompt(i, 200) for i in range(16)]
    expected = await asyncio.to_thread(_reference, tiny_checkpoint, prompts, 12, 0.0, None)
    assert [r.tokens for r in results] == expected
    # the decode workers freed what the broken transfers had reserved, and serve on
    for decode in (d1, d2):
        await _until(lambda d=decode: _health(d)["kv_usage"] == 0.0, f"{decode.name} to free its blocks")
        assert _health(decode)["pending_transfers"] == 0
    again = await _burst(router, 4, 16, 4)
    assert all(r.status == 200 and r.prefill == p2.url for r in again), again


async def test_a_decode_worker_killed_mid_transfer_fails_only_the_streams_it_was_sending(pool: Pool) -> None:
    import openai

    p1 = pool.worker("p1", "prefill")
    victim = pool.worker("d-victim", "decode", env={"DOPD_FAULT_PAUSE_DURING_TRANSFER": "4"})
    d2 = pool.worker("d2", "decode")
    router = pool.router("router", [p1], [victim, d2], max_retries=1)
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)

    async def stream(i: int) -> str:
        finish = None
        chunks = await client.completions.create(
            model=SERVED_MODEL_NAME,
            prompt=[256, *range(1, 20 + i)],
            # long enough that the kill lands while the victim streams (a fast machine ran 600 out)
            max_tokens=3000,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        try:
            async for chunk in chunks:
                finish = chunk.choices[0].finish_reason or finish
        except openai.APIError as exc:
            return str(exc)
        return f"finished: {finish}"

    streams = [asyncio.create_task(stream(i)) for i in range(8)]
    await _until(lambda: _paused(victim), "the victim's fourth transfer to stop after layer 0")
    # only that transfer hangs: the engine steps on, and the sequences whose transfers finished join its
    # batch (a loaded CI machine once read the health between the pause and their joining: running 0)
    await _until(lambda: _health(victim)["running"] >= 1, "the victim to decode what it received")
    # a sequence in the batch may not have sent its first token yet (the router would still retry it):
    # wait until the victim has emitted tokens, which it writes to the router as it makes them
    await _until(lambda: _tokens_generated(victim) >= 8, "the victim to stream tokens to the router")
    held = _health(victim)
    assert held["pending_transfers"] >= 1 and held["running"] >= 1, held  # mid-transfer, and streaming
    victim.popen.send_signal(signal.SIGKILL)
    outcomes = await asyncio.gather(*streams)
    failed = {i: o for i, o in enumerate(outcomes) if not o.startswith("finished")}
    # Only what the victim was already streaming fails (at most the sequences in its batch at the kill),
    # visibly and naming it; every request that had no token yet (among them the transfer the kill cut
    # in half) was retried on d2 and ran to its full length.
    assert 1 <= len(failed) <= held["running"], (outcomes, held)
    assert all(victim.url in o for o in failed.values()), failed
    assert all(o == "finished: length" for i, o in enumerate(outcomes) if i not in failed), outcomes
    # The prefill worker sent that transfer whole and never got its receipt: it says so, then moves on.
    # (A transfer the victim had received but not yet confirmed when it died counts too, hence >= 1.)
    await _until(lambda: _health(p1)["pending_transfers"] == 0, "p1 to give up the unconfirmed transfer", 30)
    assert _metric(p1, "dopd_kv_transfers_unconfirmed_total") >= 1.0
    assert _health(d2)["kv_usage"] == 0.0
