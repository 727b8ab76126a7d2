"""Pure and in-process parts: block allocator, paged attention against the dense reference, checkpoint
loading, config parsing, tokenizers, sampling, discovery parsing, the device/dtype choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_worker.config import PRESETS, ModelConfig, config_from_hf, load_model_config
from dopd_worker.discovery import parse_workers_file
from dopd_worker.kv_cache import BlockAllocator, OutOfBlocks, PagedKVCache, SequenceSlice, build_batch
from dopd_worker.model import build_model, greedy_reference, load_safetensors, save_checkpoint
from dopd_worker.runtime import pick_dtype
from dopd_worker.sampling import SamplingParams, is_stop, sample
from dopd_worker.tokenizer import ByteTokenizer, IncrementalDecoder, load_tokenizer

CPU = torch.device("cpu")


def test_allocator_usage_and_capacity() -> None:
    a = BlockAllocator(num_blocks=8, block_size=16)
    assert a.capacity_tokens == 128
    assert a.allocate("x", 17) and len(a.table("x")) == 2  # 17 tokens need 2 blocks of 16
    assert a.usage() == pytest.approx(2 / 8)
    a.ensure("x", 33)
    assert len(a.table("x")) == 3
    a.free("x")
    a.free("x")  # idempotent
    assert a.usage() == 0.0 and a.free_blocks == 8


def test_allocator_refusal_leaves_state_unchanged() -> None:
    a = BlockAllocator(num_blocks=4, block_size=16)
    a.allocate("x", 48)
    with pytest.raises(OutOfBlocks, match="need 2 KV blocks"):
        a.allocate("y", 20)
    assert not a.has("y") and a.free_blocks == 1
    with pytest.raises(ValueError, match="already holds"):
        a.allocate("x", 1)


def test_paged_batch_with_mixed_lengths_matches_dense_logits() -> None:
    model = build_model(PRESETS["tiny"], torch.float32, CPU, seed=3)
    cache = PagedKVCache(PRESETS["tiny"], 32, 8, torch.float32, CPU)
    prompts = [[256, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [256, 42], [256, *range(60, 90)]]
    tables = [cache.allocator.allocate(str(i), len(p)) for i, p in enumerate(prompts)]
    # Prefill the first half of each prompt, then the rest in a second pass that reads the cached half.
    halves = [len(p) // 2 for p in prompts]
    parts = list(zip(tables, prompts, halves, strict=True))
    model.forward_paged(
        build_batch([SequenceSlice(t, 0, p[:h]) for t, p, h in parts], 8, CPU), cache.k, cache.v
    )
    logits = model.forward_paged(
        build_batch([SequenceSlice(t, h, p[h:]) for t, p, h in parts], 8, CPU), cache.k, cache.v
    )
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[i], model.dense_logits(prompt)[-1], atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip_and_clear_errors(tmp_path: Path) -> None:
    model = build_model(PRESETS["tiny"], torch.float32, CPU, seed=5)
    save_checkpoint(model, tmp_path / "ok")
    loaded = build_model(load_model_config(str(tmp_path / "ok")), torch.float32, CPU, tmp_path / "ok")
    assert greedy_reference(loaded, [256, 1, 2], 5) == greedy_reference(model, [256, 1, 2], 5)

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "ok" / "model.safetensors"))
    del tensors["model.norm.weight"]
    (tmp_path / "missing").mkdir()
    save_file(tensors, str(tmp_path / "missing" / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks tensors"):
        load_safetensors(build_model(PRESETS["tiny"], torch.float32, CPU), tmp_path / "missing")
    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, str(tmp_path / "missing" / "model.safetensors"))
    with pytest.raises(ValueError, match="has shape"):
        load_safetensors(build_model(PRESETS["tiny"], torch.float32, CPU), tmp_path / "missing")


def test_config_parsing() -> None:
    raw = {
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "eos_token_id": 7,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    config = config_from_hf(raw)
    assert config.eos_token_ids == (7,) and config.head_dim == 8 and config.rope_scaling is not None
    model = build_model(config, torch.float32, CPU)
    assert model.dense_logits([1, 2, 3]).shape == (3, 100)
    with pytest.raises(ValueError, match="only Llama"):
        config_from_hf({**raw, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ValueError, match="not a multiple"):
        ModelConfig(
            vocab_size=10,
            hidden_size=30,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    with pytest.raises(ValueError, match="neither a preset"):
        load_model_config("/nonexistent/model")
    # Real shapes for GPU measurements: about 8.0e9 parameters, 128 KiB of bf16 KV per token.
    assert PRESETS["llama3-8b"].parameter_count() == pytest.approx(8.03e9, rel=0.01)
    assert PRESETS["llama3-8b"].kv_bytes_per_token(2) == 131072


def test_tokenizers(tmp_path: Path) -> None:
    byte = ByteTokenizer()
    ids = byte.encode("héllo")
    assert ids[0] == 256 and byte.decode(ids) == "héllo"
    decoder = IncrementalDecoder(byte)
    pieces = [decoder.push(i) for i in "é".encode()]
    assert pieces == ["", "é"]  # the first byte of a two-byte character is held back

    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "<s>": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = load_tokenizer(str(tmp_path), bos_id=3, eos_ids=())
    assert hf.encode("hello world") == [3, 1, 2]
    assert isinstance(load_tokenizer(str(tmp_path / "none"), None, ()), ByteTokenizer)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(0, 400), st.sampled_from(list("é€😀".encode())), st.just(300)), max_size=60
    )
)
def test_streamed_text_adds_up_to_the_decoded_reply(ids: list[int]) -> None:
    # Any ids (split multi-byte characters, invalid bytes, BOS/EOS and ids past the byte range that
    # decode to nothing, in runs): the deltas a client receives, then the flush, are exactly the
    # reply's text.
    byte = ByteTokenizer()
    decoder = IncrementalDecoder(byte)
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == byte.decode(ids)


class _CountingTokenizer(ByteTokenizer):
    def __init__(self) -> None:
        self.decoded_ids = 0

    def decode(self, ids: list[int]) -> str:
        self.decoded_ids += len(ids)
        return super().decode(ids)


def test_ids_that_decode_to_nothing_do_not_grow_what_each_push_decodes() -> None:
    """A random llama3-8b preset behind the byte tokenizer emits ids that almost all decode to nothing
    (128,256 ids, 256 of them bytes): streaming its reply costs a few ids decoded per token, not the
    whole reply at every token (4,000 tokens would decode 16 million ids)."""
    counting = _CountingTokenizer()
    decoder = IncrementalDecoder(counting)
    ids = [1000 + i if i % 50 else ord("a") for i in range(4000)]
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == "a" * 80
    assert counting.decoded_ids <= 8 * len(ids)


def test_streamed_text_keeps_the_spaces_a_tokenizer_puts_between_tokens(tmp_path: Path) -> None:
    # A word-level tokenizer joins tokens with a space: each delta after the first starts with it, as
    # the decoded whole has it, though each push decodes only the tokens since the last delta.
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = load_tokenizer(str(tmp_path), bos_id=None, eos_ids=())
    ids = [1, 2, 2, 1, 2] * 40
    decoder = IncrementalDecoder(hf)
    pieces = [decoder.push(i) for i in ids]
    assert pieces[:3] == ["hello", " world", " world"]
    assert "".join(pieces) + decoder.flush() == hf.decode(ids)


def test_sampling() -> None:
    logits = torch.tensor([0.1, 2.0, 0.3, 1.9])
    assert sample(logits, SamplingParams(temperature=0.0), 0) == 1
    hot = SamplingParams(temperature=1.5, seed=11)
    draws = [sample(logits, hot, i) for i in range(40)]
    assert draws == [sample(logits, hot, i) for i in range(40)]  # a function of (seed, index)
    assert len(set(draws)) > 1
    assert all(sample(logits, SamplingParams(temperature=1.0, top_p=0.01, seed=s), 0) == 1 for s in range(10))
    assert is_stop(5, 1, SamplingParams(max_tokens=4), eos_ids=(5,)) == "stop"
    assert is_stop(5, 1, SamplingParams(max_tokens=4, ignore_eos=True), eos_ids=(5,)) is None
    assert is_stop(6, 4, SamplingParams(max_tokens=4), eos_ids=(5,)) == "length"
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_workers_file() -> None:
    ws = parse_workers_file(json.dumps({"prefill": ["http://a:1/"], "decode": ["http://b:2"]}))
    assert ws.prefill == ("http://a:1",) and ws.decode == ("http://b:2",) and ws.prefill_long == ()
    with pytest.raises(ValueError, match="JSON object"):
        parse_workers_file("[]")


def test_dtype_choice_is_fp32_on_cpu_unless_asked() -> None:
    assert pick_dtype("auto", CPU) is torch.float32
    assert pick_dtype("bf16", CPU) is torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        pick_dtype("int3", CPU)
