"""Tokenizers: the model directory's tokenizer.json through `tokenizers`, or a byte-level fallback.

Used by the router (prompt length for scheduling, detokenization for streaming) and by `dopd profile`.
The byte-level tokenizer maps UTF-8 bytes to ids 0..255 and reserves 256 (BOS) and 257 (EOS), which the
random presets' vocabularies cover; it never fails on any text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from dopd_worker.config import BYTE_BOS_ID, BYTE_EOS_ID


class Tokenizer(Protocol):
    bos_id: int | None
    eos_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens; ids above 255 (BOS, EOS, random-model noise) decode to nothing."""

    bos_id: int | None = BYTE_BOS_ID
    eos_ids: tuple[int, ...] = (BYTE_EOS_ID,)

    def encode(self, text: str) -> list[int]:
        return [BYTE_BOS_ID, *text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A tokenizer.json loaded with the `tokenizers` library (local file only)."""

    def __init__(self, path: Path, bos_id: int | None, eos_ids: tuple[int, ...]) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_file(str(path))
        self.bos_id = bos_id
        self.eos_ids = eos_ids

    def encode(self, text: str) -> list[int]:
        # encode_batch, not encode: the same ids, but it releases the GIL while it runs (encode holds it,
        # 0.5-1.7 us a token here depending on the text, docs/benchmarks/worker.md), so the router can
        # tokenize a long prompt in a thread while its event loop relays other streams
        ids: list[int] = self._tok.encode_batch([text])[0].ids
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


def load_tokenizer(model: str, bos_id: int | None, eos_ids: tuple[int, ...]) -> Tokenizer:
    """tokenizer.json from a model directory when it has one, else the byte-level tokenizer."""
    path = Path(model) / "tokenizer.json"
    if path.is_file():
        return HFTokenizer(path, bos_id, eos_ids)
    return ByteTokenizer()


class IncrementalDecoder:
    """Turns a growing list of ids into text deltas, holding back incomplete UTF-8 / merged pieces.

    Each push decodes only the ids since the last emitted delta, plus the delta's own ids as context
    (`_prefix`..`_read`: a piece's leading space or merge depends on the token before it), as vLLM's
    incremental detokenizer does, so a stream of n tokens costs O(n), not O(n^2) (decoding everything at
    every token took 0.7 s of the router's event loop for a 4096-token reply). The deltas add up to
    `decode(ids)` for the tokenizers here (tests/worker/test_engine_parts.py)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # the context window's start: the last emitted delta's first id
        self._read = 0  # ids before this are emitted

    def _delta(self, final: bool) -> str:
        before = self._tok.decode(self._ids[self._prefix : self._read])
        text = self._tok.decode(self._ids[self._prefix :])
        if text == before:
            # The ids since the last delta add nothing, even in context (the byte tokenizer's ids above
            # 255, special tokens): they are dropped, so a run of them does not grow the window each push
            # decodes. Kept, a random llama3-8b preset behind the byte tokenizer (99.8% of its ids
            # decode to nothing) made every push decode the whole reply so far.
            del self._ids[self._read :]
            return ""
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before) :]

    def push(self, token: int) -> str:
        self._ids.append(token)
        return self._delta(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end, replaced)."""
        return self._delta(final=True)
