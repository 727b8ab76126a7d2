"""The router's prefill scheduling policy (DOPD's length-aware scheduling), pure: no clock, no I/O.

Requests wait in one queue and are handed to prefill workers as they have room. Under `length-aware`:
- shortest prompt first, so short prompts are not stuck behind long ones (prefill time is convex in
  length, so SJF minimizes mean TTFT);
- an aging bound: a request that has waited `aging_seconds` jumps ahead of every younger one (oldest
  first) and, when it finds no room, reserves the workers it may use, so long prompts cannot starve;
- long prompts (> `long_prompt_tokens`) never block short ones: they go to dedicated long-lane prefill
  workers when there are any, else they may occupy at most all but one of the prefill workers.
Under `fifo` (the baseline): arrival order, head of line, no lanes.

A worker has room when it holds no in-flight prompt or the in-flight tokens plus this prompt fit its
token budget (the prefill worker batches what it holds under the same budget).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Policy(enum.Enum):
    LENGTH_AWARE = "length-aware"
    FIFO = "fifo"


class Lane(enum.Enum):
    SHARED = "shared"
    LONG = "long"


@dataclass(frozen=True)
class QueuedPrompt:
    request_id: str
    prompt_tokens: int
    arrival_seconds: float


@dataclass(frozen=True)
class PrefillWorkerLoad:
    """What the policy needs to know about one prefill worker."""

    name: str
    lane: Lane
    inflight_tokens: int
    inflight_long: int


@dataclass(frozen=True)
class Assignment:
    request_id: str
    worker: str


@dataclass(frozen=True)
class SchedulerConfig:
    policy: Policy = Policy.LENGTH_AWARE
    aging_seconds: float = 5.0
    long_prompt_tokens: int = 1024
    token_budget: int = 4096

    def __post_init__(self) -> None:
        if self.aging_seconds <= 0 or self.long_prompt_tokens < 1 or self.token_budget < 1:
            raise ValueError("aging_seconds, long_prompt_tokens and token_budget must be positive")


class PrefillQueue:
    """The waiting prompts and the policy that picks the next (prompt, worker) pair."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._waiting: dict[str, QueuedPrompt] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def push(self, item: QueuedPrompt) -> None:
        self._waiting[item.request_id] = item

    def remove(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def is_long(self, prompt_tokens: int) -> bool:
        return prompt_tokens > self.config.long_prompt_tokens

    def ordered(self, now_seconds: float) -> list[QueuedPrompt]:
        """Waiting prompts in the order the policy serves them."""
        items = list(self._waiting.values())
        if self.config.policy is Policy.FIFO:
            return sorted(items, key=lambda q: q.arrival_seconds)

        def key(q: QueuedPrompt) -> tuple[int, float, float]:
            aged = now_seconds - q.arrival_seconds >= self.config.aging_seconds
            return (0, q.arrival_seconds, 0.0) if aged else (1, float(q.prompt_tokens), q.arrival_seconds)

        return sorted(items, key=key)

    def _fits(self, item: QueuedPrompt, worker: PrefillWorkerLoad) -> bool:
        return (
            worker.inflight_tokens == 0
            or worker.inflight_tokens + item.prompt_tokens <= self.config.token_budget
        )

    def _pool(
        self, item: QueuedPrompt, workers: Sequence[PrefillWorkerLoad], aged: bool
    ) -> list[PrefillWorkerLoad]:
        """Workers this prompt may use right now (lanes and the long-prompt limit), room aside. An aged long
        prompt may use any shared worker: the aging bound outranks keeping one free for short prompts."""
        if self.config.policy is Policy.FIFO:
            return list(workers)
        long_lane = [w for w in workers if w.lane is Lane.LONG]
        shared = [w for w in workers if w.lane is Lane.SHARED]
        if not self.is_long(item.prompt_tokens):
            return shared or long_lane
        if long_lane:
            return long_lane
        # No dedicated long workers: keep at least one shared worker free of long prompts.
        long_busy = sum(1 for w in shared if w.inflight_long > 0)
        if aged or long_busy < max(1, len(shared) - 1):
            return shared
        return [w for w in shared if w.inflight_long > 0]

    def next_assignment(self, now_seconds: float, workers: Sequence[PrefillWorkerLoad]) -> Assignment | None:
        """The next prompt to dispatch and where, or None when nothing can go now. Removes it from the queue.

        An aged prompt that finds no room reserves the workers it may use: younger prompts cannot take
        them, so it gets the first one that frees up (the aging bound), while other workers keep serving.
        """
        reserved: set[str] = set()
        for item in self.ordered(now_seconds):
            aged = now_seconds - item.arrival_seconds >= self.config.aging_seconds
            pool = [w for w in self._pool(item, workers, aged) if w.name not in reserved]
            candidates = [w for w in pool if self._fits(item, w)]
            if candidates:
                best = min(candidates, key=lambda w: (w.inflight_tokens, w.name))
                del self._waiting[item.request_id]
                return Assignment(item.request_id, best.name)
            if self.config.policy is Policy.FIFO:
                return None  # head of line: nobody overtakes
            if aged:
                reserved.update(w.name for w in pool)
        return None
