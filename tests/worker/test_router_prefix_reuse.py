"""The router records how far back each admitted prompt's blocks were last used
(`dopd_prompt_reuse_distance_tokens`): the operator's curve of prefix-cache hits against cache size; and
where in its prompt each sampled block sits, and those used before
(`dopd_prompt_reuse_{sampled,reused}_position_ratio`): how the hits fall on prompts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dopd_worker.ports import free_ports

from .procs import Cluster, metric_sample, router_args

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]

LABELS = 'model="tiny-test",role="router"'


def test_a_repeated_prefix_is_recorded_at_its_reuse_distance(cluster: Cluster) -> None:
    """Prompts A, B (two full 512-token blocks each), then A again behind a changed third block: A's two
    blocks come back with three other blocks used since (B's two and each other), so an LRU cache of 4
    blocks (2,048 tokens) or more would serve them; every first use is +Inf. Every block is sampled
    (--prefix-reuse-sample-rate 1); the admitted requests wait for a prefill worker that is not there,
    and are recorded at admission all the same."""
    dead_port, router_port = free_ports(2)
    dead = f"http://127.0.0.1:{dead_port}"
    router = cluster.start(
        "router-reuse",
        router_args(
            "tiny",
            "--prefill",
            dead,
            "--decode",
            dead,
            "--queue-timeout-seconds",
            "1",
            "--prefix-reuse-sample-rate",
            "1",
        ),
        port=router_port,
    )
    start = httpx.get(f"{router.url}/metrics", timeout=10).text
    # at zero from the start: the operator reads a missing series as unknown
    assert metric_sample(start, f'dopd_prompt_reuse_distance_tokens_bucket{{le="+Inf",{LABELS}}}') == 0.0
    assert metric_sample(start, f"dopd_prompt_reuse_expected_samples_total{{{LABELS}}}") == 0.0
    for side in ("sampled", "reused"):
        assert (
            metric_sample(start, f'dopd_prompt_reuse_{side}_position_ratio_bucket{{le="+Inf",{LABELS}}}')
            == 0.0
        )
    a = [i % 250 for i in range(1024)]  # token ids within the tiny model's vocabulary
    b = [(7 * i + 3) % 250 for i in range(1024)]
    a_again = [*a, *([1] * 300)]  # the same two blocks, then 300 tokens of no full block

    def send(prompt: list[int]) -> int:
        body = {"model": "tiny-test", "prompt": prompt, "max_tokens": 1}
        return httpx.post(f"{router.url}/v1/completions", json=body, timeout=60).status_code

    with ThreadPoolExecutor(1) as pool:  # one at a time, in order
        statuses = list(pool.map(send, (a, b, a_again)))
    assert statuses == [503, 503, 503]  # admitted, then no prefill worker within the queue timeout
    text = httpx.get(f"{router.url}/metrics", timeout=10).text

    def within(bound: str) -> float | None:
        return metric_sample(text, f'dopd_prompt_reuse_distance_tokens_bucket{{le="{bound}",{LABELS}}}')

    assert within("65536.0") == 2.0  # A's blocks, 2,048 tokens back
    assert within("+Inf") == 6.0  # and four first uses
    assert metric_sample(text, f"dopd_prompt_reuse_distance_tokens_sum{{{LABELS}}}") == float("inf")
    assert metric_sample(text, f"dopd_prompt_reuse_expected_samples_total{{{LABELS}}}") == 6.0

    def positions(side: str, bound: str) -> float | None:
        return metric_sample(text, f'dopd_prompt_reuse_{side}_position_ratio_bucket{{le="{bound}",{LABELS}}}')

    # each prompt's two blocks sit at a quarter and three quarters of it; only A's, the second time,
    # were used before: the first half of the prompts' blocks and the second half alike
    assert [positions("sampled", bound) for bound in ("0.2", "0.3", "0.7", "0.8", "+Inf")] == [0, 3, 3, 6, 6]
    assert [positions("reused", bound) for bound in ("0.2", "0.3", "0.7", "0.8", "+Inf")] == [0, 1, 1, 2, 2]
