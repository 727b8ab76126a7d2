"""Token sampling: greedy, or temperature + top-p with a per-request seed.

The random stream of a request is a pure function of (seed, token index), so the prefill worker (first
token) and the decode worker (the rest) need to share no generator state: the sequence of tokens for a
seed is the same whether it is generated in one process or split across the KV transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks tokens and when it stops. temperature 0 means greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def to_json(self) -> dict[str, object]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop_token_ids": list(self.stop_token_ids),
            "ignore_eos": self.ignore_eos,
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> SamplingParams:
        seed = raw.get("seed")
        stops = raw.get("stop_token_ids") or []
        assert isinstance(stops, list)
        return cls(
            max_tokens=int(str(raw.get("max_tokens", 16))),
            temperature=float(str(raw.get("temperature", 0.0))),
            top_p=float(str(raw.get("top_p", 1.0))),
            seed=None if seed is None else int(str(seed)),
            stop_token_ids=tuple(int(x) for x in stops),
            ignore_eos=bool(raw.get("ignore_eos", False)),
        )


def sample(logits: torch.Tensor, params: SamplingParams, token_index: int) -> int:
    """Pick the token at output index `token_index` from fp32 logits [vocab]."""
    if params.temperature == 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        sorted_probs[(cumulative - sorted_probs) > params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs = probs / probs.sum()
    gen = torch.Generator(device="cpu")
    seed = params.seed if params.seed is not None else int(torch.randint(0, 2**31, (1,)))
    gen.manual_seed((seed * _SEED_STRIDE + token_index) % (2**63))
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def is_stop(token: int, generated: int, params: SamplingParams, eos_ids: tuple[int, ...]) -> str | None:
    """The finish reason after emitting `token` as the `generated`-th token, or None to go on."""
    if token in params.stop_token_ids or (not params.ignore_eos and token in eos_ids):
        return "stop"
    if generated >= params.max_tokens:
        return "length"
    return None
