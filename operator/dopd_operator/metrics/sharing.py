"""One Prometheus query for many models: `SharedReads` lets the ticks of every model in a batch
(`presets.Batch`) share one answer, instead of each model sending its own queries.

    value = await reads.read(batch_key, member, token, fetch, now_s)

- `member` is one model's identity in the batch (its label values); every member that read the batch
  recently is kept, and dropped once it has not asked for `idle_seconds`.
- `token` says which answer is good enough: reads with the same token share one answer (the operator
  uses the time cut into slices of half a scrape interval for observations, and the forecast step's
  end for histories). A read whose member the current answer does not cover (a new model) starts a new
  fetch for every member, so the next ones are served by it.
- `fetch(members)` runs the query for those members and returns a part for each of them (an empty
  part where Prometheus has no series: the readers turn it into unknown, never zero). A fetch that fails fails every read waiting on it, with the same error, and is not cached
  past its token: the next slice asks again.
- A read that is cancelled (its model deleted) leaves the shared fetch running for the others.

No I/O of its own; it runs on the one event loop the operator's ticks run on.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dopd_operator.metrics.promql import Member

T = TypeVar("T")


@dataclass
class _Answer(Generic[T]):
    token: Hashable
    members: frozenset[Member]
    task: asyncio.Future[Mapping[Member, T]]


@dataclass
class _Batch(Generic[T]):
    members: dict[Member, float] = field(default_factory=dict)  # member -> last read (s)
    answer: _Answer[T] | None = None


class SharedReads(Generic[T]):
    """Reads of batches of models, served by one fetch per batch and token."""

    def __init__(self, idle_seconds: float, max_batches: int) -> None:
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds}")
        self._idle_seconds = idle_seconds
        self._max_batches = max_batches
        self._batches: OrderedDict[str, _Batch[T]] = OrderedDict()
        self.fetches = 0  # fetches started, for tests and telemetry

    def members(self, key: str) -> tuple[Member, ...]:
        batch = self._batches.get(key)
        return tuple(batch.members) if batch is not None else ()

    async def read(
        self,
        key: str,
        member: Member,
        token: Hashable,
        fetch: Callable[[tuple[Member, ...]], Awaitable[Mapping[Member, T]]],
        now_s: float,
    ) -> T:
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch()
            while len(self._batches) > self._max_batches:
                self._batches.popitem(last=False)
        self._batches.move_to_end(key)
        batch.members[member] = now_s  # members keep the order they came in: the query text stays put
        answer = batch.answer
        if answer is None or answer.token != token or member not in answer.members:
            members = tuple(m for m, last_s in batch.members.items() if last_s >= now_s - self._idle_seconds)
            batch.members = {m: batch.members[m] for m in members}
            answer = _Answer(token, frozenset(members), asyncio.ensure_future(fetch(members)))
            answer.task.add_done_callback(_retrieve)  # a failure nobody awaits any more is not "lost"
            batch.answer = answer
            self.fetches += 1
        parts = await asyncio.shield(answer.task)
        return parts[member]


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
