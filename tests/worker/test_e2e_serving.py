"""Router -> prefill -> KV transfer -> decode, as real processes on 127.0.0.1: exact tokens against a
single-process generation, the official openai client, bad input, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dopd_worker.ports import free_ports

from .procs import Cluster, Proc

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.timeout(300)]

MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def serving(cluster: Cluster, tiny_checkpoint: Path) -> Iterator[Proc]:
    *_, router = cluster.start_serving(
        "serving",
        str(tiny_checkpoint),
        (4096, 4096),
        *("--max-model-len", str(MAX_MODEL_LEN), "--max-retries", "0"),
    )
    yield router


def _reference(
    ckpt: Path, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int | None
) -> list[list[int]]:
    """Single-process generation by full recomputation (no cache, no batching, no transfer)."""
    import torch

    from dopd_worker.config import load_model_config
    from dopd_worker.model import build_model
    from dopd_worker.sampling import SamplingParams, is_stop, sample

    config = load_model_config(str(ckpt))
    model = build_model(config, torch.float32, torch.device("cpu"), ckpt)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    outputs = []
    for prompt in prompts:
        ids, out = list(prompt), list[int]()
        while True:
            token = sample(model.dense_logits(ids)[-1], params, len(out))
            out.append(token)
            ids.append(token)
            if is_stop(token, len(out), params, config.eos_token_ids):
                break
        outputs.append(out)
    return outputs


PROMPTS = [
    [256, *b"Hello, world"],
    [256, *b"The quick brown fox jumps over the lazy dog, twice over"],
    [256, 7],
    [256, *b"disaggregated prefill and decode"],
    [256, *(b"abc" * 40)],
    [256, *b"DOPD"],
]


async def _complete_ids(router: Proc, prompts: list[list[int]], **extra: object) -> list[list[int]]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(prompt: list[int]) -> list[int]:
            resp = await client.post(
                f"{router.url}/v1/completions",
                json={"model": "tiny-test", "prompt": prompt, "return_token_ids": True, **extra},
            )
            assert resp.status_code == 200, resp.text
            return list(resp.json()["choices"][0]["token_ids"])

        return list(await asyncio.gather(*(one(p) for p in prompts)))


async def test_greedy_tokens_through_disaggregated_path_equal_single_process(
    serving: Proc, tiny_checkpoint: Path
) -> None:
    # All six requests are sent at once, so the decode worker runs them in one continuous batch.
    got = await _complete_ids(serving, PROMPTS, max_tokens=24, temperature=0)
    want = _reference(tiny_checkpoint, PROMPTS, 24, 0.0, None)
    assert got == want
    assert any(len(t) == 24 for t in got)  # not all stopped early: decode really ran many steps


async def test_seeded_sampling_continues_across_the_transfer(serving: Proc, tiny_checkpoint: Path) -> None:
    # The first token is sampled on the prefill worker, the rest on the decode worker: same seed stream.
    got = await _complete_ids(serving, PROMPTS[:3], max_tokens=16, temperature=0.9, seed=1234)
    want = _reference(tiny_checkpoint, PROMPTS[:3], 16, 0.9, 1234)
    assert got == want


def test_openai_client_completions_chat_and_streams(serving: Proc) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{serving.url}/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-test"]

    completion = client.completions.create(
        model="tiny-test", prompt="Once upon", max_tokens=10, temperature=0
    )
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert completion.usage is not None and completion.usage.prompt_tokens == len("Once upon") + 1
    assert 1 <= completion.usage.completion_tokens <= 10

    stream = client.completions.create(
        model="tiny-test", prompt="Once upon", max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == completion.choices[0].text
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason

    chat = client.chat.completions.create(
        model="tiny-test", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    chat_stream = client.chat.completions.create(
        model="tiny-test",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chat_stream if c.choices)
    assert streamed == chat.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        pytest.param(b"{not json", 400, "invalid JSON", id="bad-json"),
        pytest.param({"model": "gpt-4", "prompt": "x"}, 404, "does not exist", id="unknown-model"),
        pytest.param(
            {"model": "tiny-test", "prompt": "x", "max_tokens": -3},
            400,
            "max_tokens",
            id="negative-max-tokens",
        ),
        pytest.param(
            {"model": "tiny-test", "prompt": "x" * MAX_MODEL_LEN, "max_tokens": 4},
            400,
            "maximum context length",
            id="over-long-prompt",
        ),
        pytest.param({"model": "tiny-test", "prompt": 12}, 400, "'prompt'", id="prompt-not-text"),
        pytest.param(
            {"model": "tiny-test", "prompt": [1, 99999]}, 400, "token ids", id="token-id-out-of-vocab"
        ),
        pytest.param(
            {"model": "tiny-test", "prompt": "x", "temperature": 9},
            400,
            "temperature",
            id="temperature-out-of-range",
        ),
    ],
)
def test_bad_input_gets_clear_4xx(serving: Proc, body: object, status: int, needle: str) -> None:
    if isinstance(body, bytes):
        resp = httpx.post(
            f"{serving.url}/v1/completions",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
    else:
        resp = httpx.post(f"{serving.url}/v1/completions", json=body, timeout=30)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]["message"]


def test_bad_chat_messages_get_400(serving: Proc) -> None:
    resp = httpx.post(
        f"{serving.url}/v1/chat/completions", json={"model": "tiny-test", "messages": "hi"}, timeout=30
    )
    assert resp.status_code == 400
    assert "messages" in resp.json()["error"]["message"]


def _router_value(url: str, sample: str) -> float:
    """The router's one `sample` (a series name with its `{`), 0 when it has none yet."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample)]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def test_metrics_have_the_names_the_operator_reads(serving: Proc, cluster: Cluster) -> None:
    per_request = "dopd_request_time_per_output_token_seconds_count{"
    gaps = "dopd_inter_token_latency_seconds_count{"
    before = _router_value(serving.url, per_request), _router_value(serving.url, gaps)
    resp = httpx.post(
        f"{serving.url}/v1/completions",
        json={"model": "tiny-test", "prompt": "metrics", "max_tokens": 3, "ignore_eos": True},
        timeout=60,
    )
    resp.raise_for_status()
    assert resp.json()["usage"]["completion_tokens"] == 3
    # one finished request of 3 tokens: its TPOT once (what the dopd preset's attainment reads), 2 gaps
    after = _router_value(serving.url, per_request), _router_value(serving.url, gaps)
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 2.0)
    router_text = httpx.get(f"{serving.url}/metrics", timeout=10).text
    for name in (
        "dopd_requests_waiting",
        "dopd_requests_running",
        "dopd_time_to_first_token_seconds_bucket",
        "dopd_inter_token_latency_seconds_bucket",
        "dopd_request_time_per_output_token_seconds_bucket",
        "dopd_prompt_tokens_bucket",
        "dopd_prompt_tokens_total",
        "dopd_generation_tokens_bucket",
        "dopd_generation_tokens_total",
        "dopd_requests_total",
    ):
        assert f"{name}{{" in router_text, name
    assert 'role="router"' in router_text and 'model="tiny-test"' in router_text
    by_name = {p.name: p for p in cluster.procs}
    decode_text = httpx.get(f"{by_name['serving-decode'].url}/metrics", timeout=10).text
    assert 'dopd_kv_transfer_bytes_total{model="tiny-test"' not in decode_text  # workers name the model dir
    assert "dopd_kv_cache_usage_ratio{" in decode_text and 'role="decode"' in decode_text
    transferred = [
        line for line in decode_text.splitlines() if line.startswith("dopd_kv_transfer_bytes_total{")
    ]
    assert transferred and float(transferred[0].split()[-1]) > 0
    prefill_text = httpx.get(f"{by_name['serving-prefill'].url}/metrics", timeout=10).text
    assert "dopd_time_to_first_token_seconds_count{" in prefill_text and 'role="prefill"' in prefill_text
    # the prefix-cache counters the operator's hit rate reads: every prompt token looked up, none hit
    counters = {
        line.split("{")[0]: float(line.split()[-1])
        for line in prefill_text.splitlines()
        if line.startswith(("dopd_prefix_cache_queries_total{", "dopd_prefix_cache_hits_total{"))
    }
    assert counters["dopd_prefix_cache_queries_total"] > 0, prefill_text
    assert counters["dopd_prefix_cache_hits_total"] == 0.0, prefill_text


def test_request_no_prefill_worker_takes_fails_with_503_after_the_queue_timeout(cluster: Cluster) -> None:
    # taken together: a router port picked after the dead one could be that port, and it would route to itself
    dead_port, router_port = free_ports(2)
    dead = f"http://127.0.0.1:{dead_port}"  # nothing listens there: never healthy
    router = cluster.start(
        "router-no-prefill",
        ["router", "--model", "tiny", "--prefill", dead, "--decode", dead, "--queue-timeout-seconds", "1"],
        port=router_port,
    )
    resp = httpx.post(f"{router.url}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=30)
    assert resp.status_code == 503
    assert "no prefill worker took the request within 1s (0 usable)" in resp.json()["error"]["message"]
