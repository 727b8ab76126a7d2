"""The prefill queue as admission sees it: which queued work goes before a new prompt, and how fast
newer prompts arrive that will overtake it. Pure: no clock, no I/O; times come in as arguments.

Under length-aware scheduling (`scheduler.py`: shortest prompt first, with an aging bound) a prompt
waits for the queued prompts no longer than it and also for every shorter prompt admitted while it
waits, until it ages. So besides the queued tokens by length (`QueuedTokens`) admission needs the rate
at which shorter prompts are admitted (`AdmittedTokenRate`, decayed), and the wait of a prompt of
length l is the busy period `ahead(l) / (R - rate(< l))` at pool rate R, capped by the aging bound
(`admission.predict_ttft_seconds`). Under FIFO only the queued tokens count. Both indexes are Fenwick
trees over prompt length, so an arrival costs O(log max_prompt_tokens).

Callers: `router_admission.RouterAdmission` and `dopd_sim.admission` (each keeps one
`AdmissionQueue`), tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dopd_worker.scheduler import Policy


class _Fenwick:
    """Prefix sums over lengths 1..size."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("max_prompt_tokens must be positive")
        self.size = size
        self._tree = [0.0] * (size + 1)

    def add(self, index: int, value: float) -> None:
        if not 1 <= index <= self.size:
            raise ValueError(f"prompt of {index} tokens is outside [1, {self.size}]")
        tree = self._tree
        while index <= self.size:
            tree[index] += value
            index += index & -index

    def prefix(self, index: int) -> float:
        index = min(index, self.size)
        total = 0.0
        tree = self._tree
        while index > 0:
            total += tree[index]
            index -= index & -index
        return total

    def scale(self, factor: float) -> None:
        self._tree = [value * factor for value in self._tree]


class QueuedTokens:
    """Tokens of the prompts waiting for prefill, by prompt length."""

    def __init__(self, max_prompt_tokens: int) -> None:
        self._index = _Fenwick(max_prompt_tokens)
        self.total_tokens = 0

    def add(self, prompt_tokens: int) -> None:
        self._index.add(prompt_tokens, prompt_tokens)
        self.total_tokens += prompt_tokens

    def remove(self, prompt_tokens: int) -> None:
        self._index.add(prompt_tokens, -prompt_tokens)
        self.total_tokens -= prompt_tokens

    def up_to(self, prompt_tokens: int) -> int:
        """Tokens of the queued prompts of at most `prompt_tokens` tokens."""
        return round(self._index.prefix(prompt_tokens))


class AdmittedTokenRate:
    """Prompt tokens admitted per second, by prompt length, exponentially weighted with a time constant.

    Weights are stored as `tokens * exp((t - base) / tau)` so that decaying every entry is one multiply
    at query time; the base moves (rescaling the tree) before the exponent grows large."""

    def __init__(self, max_prompt_tokens: int, time_constant_seconds: float = 10.0) -> None:
        if not time_constant_seconds > 0:
            raise ValueError("time_constant_seconds must be positive")
        self._index = _Fenwick(max_prompt_tokens)
        self.tau = time_constant_seconds
        self._base_seconds: float | None = None

    def _rebase(self, now_seconds: float) -> float:
        if self._base_seconds is None:
            self._base_seconds = now_seconds
        exponent = (now_seconds - self._base_seconds) / self.tau
        if exponent > 50.0:
            self._index.scale(math.exp(-exponent))
            self._base_seconds, exponent = now_seconds, 0.0
        return exponent

    def add(self, prompt_tokens: int, now_seconds: float) -> None:
        self._index.add(prompt_tokens, prompt_tokens * math.exp(self._rebase(now_seconds)))

    def below(self, prompt_tokens: int, now_seconds: float) -> float:
        """Tokens per second of recently admitted prompts shorter than `prompt_tokens`."""
        exponent = self._rebase(now_seconds)
        return self._index.prefix(prompt_tokens - 1) * math.exp(-exponent) / self.tau


def room_wait_tokens(inflight_tokens: list[int], prompt_tokens: int, token_budget: int) -> int:
    """Tokens the least-loaded of these prefill workers must finish before a prompt of `prompt_tokens`
    fits on it (the scheduler's room rule: an empty worker, or in-flight tokens plus the prompt within
    the token budget); 0 when one has room now (or there is none, which admission answers first)."""
    return min(
        (0 if held == 0 else max(held + prompt_tokens - token_budget, 0) for held in inflight_tokens),
        default=0,
    )


@dataclass(frozen=True)
class QueueView:
    """What the queue means for one new prompt (fields of `admission.PoolState`)."""

    tokens_ahead: int  # queued tokens the policy serves before it
    tokens_total: int  # every queued token
    overtaking_tokens_per_second: float  # admitted prompts that will go before it while it waits
    aging_seconds: float | None  # the wait after which it goes before every younger prompt


@dataclass
class AdmissionQueue:
    """The queue indexes of one router (or simulated run) under one scheduling policy."""

    policy: Policy
    aging_seconds: float
    max_prompt_tokens: int
    queued: QueuedTokens = field(init=False)
    admitted: AdmittedTokenRate = field(init=False)

    def __post_init__(self) -> None:
        self.queued = QueuedTokens(self.max_prompt_tokens)
        self.admitted = AdmittedTokenRate(self.max_prompt_tokens)

    def view(self, prompt_tokens: int, now_seconds: float) -> QueueView:
        total = self.queued.total_tokens
        if self.policy is Policy.FIFO:  # arrival order: everything queued goes first, nothing overtakes
            return QueueView(total, total, 0.0, None)
        return QueueView(
            # shortest first; an equal length queued earlier goes first, one admitted later does not
            self.queued.up_to(prompt_tokens),
            total,
            self.admitted.below(prompt_tokens, now_seconds),
            self.aging_seconds,
        )
