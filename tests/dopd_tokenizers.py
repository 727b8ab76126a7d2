"""A byte-level BPE `tokenizer.json` trained here from a seeded corpus (no model hub at test or bench
time): what a real model directory holds. Shared by the router tests and bench/worker_bench.py."""

from __future__ import annotations

import random
from pathlib import Path

from dopd_worker.tokenizer import HFTokenizer, load_tokenizer


def train_bpe(folder: Path, vocab_size: int = 3000) -> HFTokenizer:
    """Train a byte-level BPE (BOS `<s>`, no EOS) on 300 lines of random words, save it in `folder` as
    `tokenizer.json`, and load it as the worker does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(2000)
    ]
    corpus = [" ".join(rng.choice(words) for _ in range(100)) for _ in range(300)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]", "<s>"])
    tok.train_from_iterator(corpus, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    loaded = load_tokenizer(str(folder), bos_id=tok.token_to_id("<s>"), eos_ids=())
    assert isinstance(loaded, HFTokenizer)
    return loaded
