"""The router parses a long request off its event loop: tokenizing a long prompt with a tokenizer.json
takes a tenth of a second and more, and on the loop every stream the router relays would stall for it."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from dopd_tokenizers import train_bpe
from dopd_worker.metrics import create_metrics
from dopd_worker.openai_api import PARSE_OFF_LOOP_BYTES, OpenAIServer
from dopd_worker.router import Router
from dopd_worker.scheduler import SchedulerConfig
from dopd_worker.tokenizer import HFTokenizer

MODEL = "bpe-test"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    return train_bpe(tmp_path_factory.mktemp("bpe"))


def _server(tokenizer: HFTokenizer) -> OpenAIServer:
    metrics = create_metrics("router", MODEL)
    return OpenAIServer(Router(SchedulerConfig(), metrics, 1), tokenizer, MODEL, 1 << 22, metrics, 3000)


def _text(words: int) -> str:
    rng = random.Random(1)
    return " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8))) for _ in range(words))


def test_the_tokenizer_gives_the_ids_its_library_gives(bpe: HFTokenizer) -> None:
    from tokenizers import Tokenizer

    library = Tokenizer.from_str(bpe._tok.to_str())
    for text in ("", "abc def", _text(500), "héllo wörld ✓"):
        assert bpe.encode(text) == [bpe.bos_id, *library.encode(text).ids]


async def _ticks_while_parsing(server: OpenAIServer, text: str) -> tuple[int, int]:
    """(ticks another coroutine made while the body was parsed, prompt tokens)."""
    raw = json.dumps({"model": MODEL, "prompt": text, "max_tokens": 1}).encode()
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running
    before = ticks
    _, parsed = await server.parse_body(raw, chat=False)
    during = ticks - before
    done = True
    await task
    return during, len(parsed.prompt_ids)


async def test_a_long_prompt_is_tokenized_while_the_loop_serves_others(bpe: HFTokenizer) -> None:
    server = _server(bpe)
    long_text = _text(60_000)  # ~400 KB: well over the threshold
    assert len(long_text) > PARSE_OFF_LOOP_BYTES
    during, tokens = await _ticks_while_parsing(server, long_text)
    assert tokens > 50_000 and during > 0  # the loop ran other work while the prompt was tokenized
    # a short body is parsed in place (a thread hop would cost more than it): nothing else runs meanwhile
    during, tokens = await _ticks_while_parsing(server, _text(50))
    assert tokens > 0 and during == 0
