"""Which waiting sequence joins a decode batch next: the timely ones first, the newest of them first; the
late ones after them, oldest first. Written once: the decode worker's `engine.DecodeEngine` (sequences
whose KV arrived, waiting for room in its batch) and the simulator's decode queue (`dopd_sim.cluster`:
prefilled sequences waiting for a replica with room) both order by it.

A sequence's TPOT is its decode time over its output tokens, the wait for a slot included. Under a flood
(a jump in load that fills the decode pool's slots while the replicas ordered for it start), first-come
order makes every waiting sequence wait the whole queue and miss; a sequence that has already spent its
slack is lost either way, and letting it go first costs the timely ones behind it their slack too. So a
sequence is timely while its wait leaves it `JOIN_SLACK_SHARE` of its TPOT budget ((tokens - 1) x the
TPOT SLO) for decoding: a full batch's step takes about half the SLO (the capacity model's decode batch
keeps it within), so a sequence that waited longer than the other half cannot make up for it. A late
one still joins, after every timely one: nothing is dropped.

Among the timely ones the newest joins first (last come, first served, as adaptive LIFO serves an
overloaded queue): the oldest timely sequence has spent most of its slack, and while the queue outgrows
the slots a sequence that waits its turn in arrival order reaches the batch with too little of its budget
left for the steps, and misses anyway, one after another. Served newest first, the sequences that get a
slot get it with their slack intact and meet the SLO, and only those the pool has no room for are late.
When the slots keep up the queue is short and the order moves a wait by a step or two. On the simulator's
traces (dopd alone, five seeds, at 4f33cb3): steps 94.91% -> 97.01% at 2% fewer GPU-hours, bursts 94.86%
-> 96.86%, reasoning 99.63% -> 99.92%; every other trace the same or within 0.01 points
(docs/benchmarks/sim.md). Without a TPOT SLO every deadline is infinite, nothing is late, and the order
is first come, first served.

Measured before and not taken: putting last every sequence whose first token came after the TTFT SLO
(it is a miss whatever its TPOT); dopd's attainment did not move (steps seed 1 92.23% -> 92.26%).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

JOIN_SLACK_SHARE = 0.5  # of a sequence's TPOT budget its wait for a slot may take and still be timely

T = TypeVar("T")


def join_deadline_s(first_token_s: float, output_tokens: int, tpot_slo_seconds: float | None) -> float:
    """Until when a sequence whose first token came at `first_token_s` and which generates up to
    `output_tokens` tokens (the first included) is timely; infinite without a TPOT SLO."""
    if tpot_slo_seconds is None:
        return math.inf
    return first_token_s + JOIN_SLACK_SHARE * max(output_tokens - 1, 0) * tpot_slo_seconds


class JoinQueue(Generic[T]):
    """Sequences waiting to join, each with its join deadline. `peek(now)` / `pop(now)` give the newest
    timely one (the oldest where no deadline is finite: no SLO), else the oldest late one. A sequence
    found late stays late (deadlines do not move), so it is moved aside once, from either end of the
    timely ones as it is met there; the late ones are kept by arrival (a heap), so every operation is
    amortized O(log n)."""

    def __init__(self) -> None:
        # arrival order: (deadline, arrival number, item); may hold some now late between its ends
        self._timely: deque[tuple[float, int, T]] = deque()
        self._late: list[tuple[int, T]] = []  # a heap by arrival number: the oldest first
        self._arrivals = itertools.count()

    def append(self, item: T, deadline_s: float) -> None:
        self._timely.append((deadline_s, next(self._arrivals), item))

    def __len__(self) -> int:
        return len(self._timely) + len(self._late)

    def __bool__(self) -> bool:
        return bool(self._timely or self._late)

    def __iter__(self) -> Iterator[T]:
        """Every waiting sequence (in no particular order): for cancelling or counting them."""
        for _, item in self._late:
            yield item
        for _, _, item in self._timely:
            yield item

    def _settle(self, now_s: float) -> None:
        """Move aside the late sequences at both ends of the timely ones."""
        timely, late = self._timely, self._late
        while timely and timely[0][0] < now_s:
            _, arrival, item = timely.popleft()
            heapq.heappush(late, (arrival, item))
        while timely and timely[-1][0] < now_s:
            _, arrival, item = timely.pop()
            heapq.heappush(late, (arrival, item))

    def _oldest_first(self) -> bool:
        """Whether the timely sequence that joins next is the oldest: only where no deadline is finite
        (no SLO: first come, first served); else the newest."""
        return self._timely[-1][0] == math.inf

    def peek(self, now_s: float) -> T:
        """The sequence that joins next (IndexError when none waits)."""
        self._settle(now_s)
        timely = self._timely
        if timely:
            return timely[0 if self._oldest_first() else -1][2]
        return self._late[0][1]

    def pop(self, now_s: float) -> T:
        """Remove and return the sequence that joins next (the one `peek(now_s)` gives)."""
        self._settle(now_s)
        timely = self._timely
        if timely:
            return (timely.popleft() if self._oldest_first() else timely.pop())[2]
        return heapq.heappop(self._late)[1]

    def clear(self) -> None:
        self._timely.clear()
        self._late.clear()
