"""NCCL matches sends to receives by order, not tag, so NCCL pairs use the ordered protocol (transfers
announced in the pair's store, received one after another). It is forced here on gloo, where it can
run, with concurrent requests whose transfers would interleave: tokens must still be exact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import Cluster, Proc, router_args
from .test_e2e_serving import PROMPTS, _complete_ids, _reference

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ordered_router(cluster: Cluster, tiny_checkpoint: Path) -> Iterator[Proc]:
    ckpt, env = str(tiny_checkpoint), {"DOPD_KV_ORDERED_TRANSFERS": "1"}
    prefill = cluster.start("prefill", ["worker", "--role", "prefill", "--model", ckpt], env=env, wait=False)
    decode = cluster.start("decode", ["worker", "--role", "decode", "--model", ckpt], env=env, wait=False)
    cluster.wait_healthy(prefill)
    cluster.wait_healthy(decode)
    router = cluster.start(
        "router",
        router_args(ckpt, "--prefill", prefill.url, "--decode", decode.url, "--max-retries", "0"),
    )
    cluster.wait_router_sees(router, {prefill.url, decode.url})
    yield router


async def test_ordered_transfers_give_exact_tokens_under_concurrency(
    ordered_router: Proc, cluster: Cluster, tiny_checkpoint: Path
) -> None:
    got = await _complete_ids(ordered_router, PROMPTS * 2, max_tokens=12, temperature=0)
    assert got == _reference(tiny_checkpoint, PROMPTS, 12, 0.0, None) * 2
    decode_log = next(p for p in cluster.procs if p.name == "decode").log()
    assert "backend gloo, ordered True" in decode_log  # the ordered protocol really ran
