"""The router's prefill scheduling policy (DOPD's length-aware scheduling), pure: no clock, no I/O.

One implementation, two callers: the router (`router.Router.dispatch`, workers are HTTP endpoints) and
the simulator (`dopd_sim.queues`, workers are simulated prefill replicas, request ids their trace
indices as strings), so a simulated run schedules prompts exactly as the router would.

Requests wait in one queue and are handed to prefill workers as they have room. Under `length-aware`:
- shortest prompt first, so short prompts are not stuck behind long ones (prefill time is convex in
  length, so SJF minimizes mean TTFT);
- an aging bound: a request that has waited `aging_seconds` jumps ahead of every younger one (oldest
  first) and, when it finds no room, reserves the workers it may use, so long prompts cannot starve;
- long prompts (> `long_prompt_tokens`) never block short ones: they go to dedicated long-lane prefill
  workers when there are any, else they may occupy at most all but one of the prefill workers;
- with a dispatch deadline (`late_seconds`; the router's `--dispatch-deadline-seconds`, in the
  simulator `DISPATCH_DEADLINE_SHARE_OF_TTFT` of the TTFT SLO), a prompt that has waited past it can
  no longer meet the SLO (dispatched now, it still waits for the batch in progress and its own) and goes
  after every prompt that still can (late prompts oldest first). In an overload (the minutes before
  new replicas start) the pool then serves on time what it can, instead of serving every request a
  little late in arrival order; the late ones are served as soon as the pool has room no timely prompt
  needs. A late prompt counts as aged (it may use
  any shared worker and reserves the ones it may use).
Under `fifo` (the baseline): arrival order, head of line, no lanes, no deadline.

A worker has room when it holds no in-flight prompt or the in-flight tokens plus this prompt fit its
token budget (the prefill worker batches what it holds under the same budget).

`next_assignment` costs O(workers) per call plus O(log n) per prompt it looks at, not O(n log n): the
order above is kept in four heaps (arrival order, short prompts by length, long prompts by length, late
prompts by arrival; a prompt moves to the last when its deadline passes and leaves the others for good).
Only aged prompts and one prompt per class are looked at, because a prompt that finds no room means
every longer prompt of its class finds none either (the same workers, room being monotone in length).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from typing import Protocol


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


class WorkerLoad(Protocol):
    """What the policy needs to know about one prefill worker (the router's snapshot, or a simulated
    replica's live fields)."""

    @property
    def name(self) -> str: ...
    @property
    def lane(self) -> Lane: ...
    @property
    def inflight_tokens(self) -> int: ...
    @property
    def inflight_long(self) -> int: ...


@dataclass(frozen=True)
class PrefillWorkerLoad:
    """The router's snapshot of one prefill worker."""

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
    # Waited this long, a prompt can no longer meet its TTFT SLO and goes last (length-aware only);
    # None: no deadline, every prompt is served in the order above however late it already is.
    late_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.aging_seconds <= 0 or self.long_prompt_tokens < 1 or self.token_budget < 1:
            raise ValueError("aging_seconds, long_prompt_tokens and token_budget must be positive")
        if self.late_seconds is not None and not self.late_seconds > 0:
            raise ValueError(f"late_seconds must be positive (or None: no deadline), got {self.late_seconds}")


# The dispatch deadline as a share of the TTFT SLO: the rest is left for the batch a worker is running
# when the prompt reaches it and for the prompt's own batch. Attainment is flat for shares 1/3 to 2/3
# (steps, bursts and code shapes, seed 0, in the simulator) and falls above; 2/3 keeps the most slack for
# short bursts in a pool that is not overloaded.
DISPATCH_DEADLINE_SHARE_OF_TTFT = 2.0 / 3.0


# Heap entries: (key..., insertion number, prompt); the insertion number makes ties deterministic.
_ArrivalEntry = tuple[float, int, QueuedPrompt]
_LengthEntry = tuple[int, float, int, QueuedPrompt]


def _least_loaded(worker: WorkerLoad) -> tuple[int, str]:
    return (worker.inflight_tokens, worker.name)


class PrefillQueue:
    """The waiting prompts and the policy that picks the next (prompt, worker) pair."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._waiting: dict[str, QueuedPrompt] = {}
        self._by_arrival: list[_ArrivalEntry] = []
        self._short: list[_LengthEntry] = []
        self._long: list[_LengthEntry] = []
        self._late: list[_ArrivalEntry] = []  # past the deadline, by arrival; gone from the heaps above
        self._inserted = count()

    def __len__(self) -> int:
        return len(self._waiting)

    def push(self, item: QueuedPrompt) -> None:
        self._waiting[item.request_id] = item
        number = next(self._inserted)
        heapq.heappush(self._by_arrival, (item.arrival_seconds, number, item))
        if self.config.policy is Policy.LENGTH_AWARE:
            by_length = self._long if self.is_long(item.prompt_tokens) else self._short
            heapq.heappush(by_length, (item.prompt_tokens, item.arrival_seconds, number, item))

    def remove(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)  # the heaps drop it lazily

    def is_long(self, prompt_tokens: int) -> bool:
        return prompt_tokens > self.config.long_prompt_tokens

    def _live(self, item: QueuedPrompt) -> bool:
        return self._waiting.get(item.request_id) is item

    def _is_late(self, item: QueuedPrompt, now_seconds: float) -> bool:
        late = self.config.late_seconds
        return late is not None and now_seconds - item.arrival_seconds >= late

    def _aged(self, item: QueuedPrompt, now_seconds: float) -> bool:
        waited = now_seconds - item.arrival_seconds
        return waited >= self.config.aging_seconds or self._is_late(item, now_seconds)

    def ordered(self, now_seconds: float) -> list[QueuedPrompt]:
        """Waiting prompts in the order the policy serves them (for inspection; dispatch does not sort):
        aged ones oldest first, then the others shortest first, then the late ones oldest first."""
        items = list(self._waiting.values())
        if self.config.policy is Policy.FIFO:
            return sorted(items, key=lambda q: q.arrival_seconds)

        def key(q: QueuedPrompt) -> tuple[int, float, float]:
            if self._is_late(q, now_seconds):
                return (2, q.arrival_seconds, 0.0)
            if self._aged(q, now_seconds):
                return (0, q.arrival_seconds, 0.0)
            return (1, float(q.prompt_tokens), q.arrival_seconds)

        return sorted(items, key=key)

    def _fits(self, item: QueuedPrompt, worker: WorkerLoad) -> bool:
        return (
            worker.inflight_tokens == 0
            or worker.inflight_tokens + item.prompt_tokens <= self.config.token_budget
        )

    def _pool(self, item: QueuedPrompt, workers: Sequence[WorkerLoad], aged: bool) -> list[WorkerLoad]:
        """Workers this prompt may use right now (lanes and the long-prompt limit), room aside. An aged long
        prompt may use any shared worker: the aging bound outranks keeping one free for short prompts."""
        if self.config.policy is Policy.FIFO:
            return list(workers)
        long_lane = [w for w in workers if w.lane is Lane.LONG]
        if not long_lane and not self.is_long(item.prompt_tokens):
            return list(workers)  # the common case: every worker is shared
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

    def _place(
        self, item: QueuedPrompt, workers: Sequence[WorkerLoad], aged: bool, reserved: set[str]
    ) -> tuple[WorkerLoad | None, list[WorkerLoad]]:
        """The worker this prompt goes to (least in-flight tokens among those with room), or None, and
        the pool it may use. The least-loaded worker of the pool has room if any has: room is monotone
        in the in-flight tokens."""
        pool = self._pool(item, workers, aged)
        if reserved:
            pool = [w for w in pool if w.name not in reserved]
        if not pool:
            return None, pool
        best = min(pool, key=_least_loaded)
        return (best if self._fits(item, best) else None), pool

    def _assign(self, item: QueuedPrompt, worker: WorkerLoad) -> Assignment:
        del self._waiting[item.request_id]
        return Assignment(item.request_id, worker.name)

    def next_assignment(self, now_seconds: float, workers: Sequence[WorkerLoad]) -> Assignment | None:
        """The next prompt to dispatch and where, or None when nothing can go now. Removes it from the queue.

        Equivalent to walking `ordered(now)` and taking the first prompt some worker has room for. An aged
        prompt that finds no room reserves the workers it may use: younger prompts cannot take them, so it
        gets the first one that frees up (the aging bound), while other workers keep serving.
        """
        if not self._waiting or not workers:
            return None
        if self.config.policy is Policy.FIFO:
            head = self._head(self._by_arrival)
            if head is None:
                return None
            worker, _ = self._place(head, workers, False, set())
            return None if worker is None else self._assign(head, worker)
        self._move_late(now_seconds)
        reserved: set[str] = set()
        # Aged prompts first, oldest first; each one that finds no room reserves its workers (once every
        # worker is reserved, nothing else can go).
        found = self._oldest_placeable(self._by_arrival, now_seconds, workers, reserved)
        if found is not None or len(reserved) >= len(workers):
            return found
        # Then the shortest young prompt of each class; if it has no room, no longer one of its class has.
        for by_length in (self._short, self._long):
            item_or_none = self._shortest_young(by_length, now_seconds)
            if item_or_none is None:
                continue
            worker, _ = self._place(item_or_none, workers, False, reserved)
            if worker is not None:
                return self._assign(item_or_none, worker)
        # Last, the prompts past their deadline, oldest first, on the room no timely prompt could use.
        return self._oldest_placeable(self._late, now_seconds, workers, reserved)

    def _move_late(self, now_seconds: float) -> None:
        """Move the prompts whose deadline has passed from the arrival heap to the late heap (they become
        late in arrival order, so they are the arrival heap's head); the length heaps drop them lazily."""
        late = self.config.late_seconds
        if late is None:
            return
        while self._by_arrival and now_seconds - self._by_arrival[0][0] >= late:
            entry = heapq.heappop(self._by_arrival)
            if self._live(entry[2]):
                heapq.heappush(self._late, entry)

    def _oldest_placeable(
        self, heap: list[_ArrivalEntry], now_seconds: float, workers: Sequence[WorkerLoad], reserved: set[str]
    ) -> Assignment | None:
        """Walk a heap's aged prompts oldest first and dispatch the first that finds room; each one that
        finds none reserves the workers it may use (adding them to `reserved`)."""
        skipped: list[_ArrivalEntry] = []
        found: Assignment | None = None
        while heap and len(reserved) < len(workers):
            entry = heap[0]
            item = entry[2]
            if not self._live(item):
                heapq.heappop(heap)
                continue
            if not self._aged(item, now_seconds):
                break
            worker, pool = self._place(item, workers, True, reserved)
            if worker is not None:
                found = self._assign(item, worker)
                break
            reserved.update(w.name for w in pool)
            skipped.append(heapq.heappop(heap))
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found

    def _head(self, heap: list[_ArrivalEntry]) -> QueuedPrompt | None:
        while heap and not self._live(heap[0][2]):
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def _shortest_young(self, heap: list[_LengthEntry], now_seconds: float) -> QueuedPrompt | None:
        """The shortest live prompt of a class that has not aged (aged ones were served above; late ones
        leave this heap for good)."""
        aged: list[_LengthEntry] = []
        found: QueuedPrompt | None = None
        while heap:
            item = heap[0][3]
            if not self._live(item) or self._is_late(item, now_seconds):
                heapq.heappop(heap)
                continue
            if self._aged(item, now_seconds):
                aged.append(heapq.heappop(heap))
                continue
            found = item
            break
        for entry in aged:
            heapq.heappush(heap, entry)
        return found
