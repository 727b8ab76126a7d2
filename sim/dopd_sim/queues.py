"""The shared prefill queue: FIFO, or length-aware (shortest prompt first, with a starvation bound).

Length-aware is the DOPD paper's scheduling idea in its simplest form: a short prompt should not wait
behind a long one, since prefill time is convex in length. Pure shortest-first would starve long
prompts under load, so a prompt that has waited `starvation_seconds` is served in arrival order before
any shorter newcomer. Callers: `cluster.Simulator`.
"""

from __future__ import annotations

import heapq
from collections import deque

from dopd_sim.config import QueuePolicy


class PrefillQueue:
    """Requests waiting for prefill, by index into the trace."""

    def __init__(self, policy: QueuePolicy, starvation_seconds: float, input_tokens: list[int]) -> None:
        self.policy = policy
        self.starvation_seconds = starvation_seconds
        self.input_tokens = input_tokens
        self._fifo: deque[tuple[float, int]] = deque()  # (enqueued at, request)
        self._shortest: list[tuple[int, int]] = []  # (prompt tokens, request)
        self._taken = bytearray(len(input_tokens))  # 1 once served (lazy deletion from both views)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, request: int, now_s: float) -> None:
        self._fifo.append((now_s, request))
        if self.policy == "length-aware":
            heapq.heappush(self._shortest, (self.input_tokens[request], request))
        self._size += 1

    def pop_batch(self, token_budget: int, now_s: float) -> list[int]:
        """The next batch: requests in queue order while their prompts fit in `token_budget` (one always)."""
        if self.policy == "fifo":
            return self._pop_fifo(token_budget)
        return self._pop_length_aware(token_budget, now_s)

    def _pop_fifo(self, token_budget: int) -> list[int]:
        fifo, tokens = self._fifo, self.input_tokens
        batch: list[int] = []
        used = 0
        while fifo:
            request = fifo[0][1]
            length = tokens[request]
            if batch and used + length > token_budget:
                break
            fifo.popleft()
            batch.append(request)
            used += length
        self._size -= len(batch)
        return batch

    def _drop_taken_heads(self) -> None:
        fifo, taken = self._fifo, self._taken
        while fifo and taken[fifo[0][1]]:
            fifo.popleft()

    def _take(self, request: int, batch: list[int]) -> None:
        self._taken[request] = 1
        batch.append(request)

    def _pop_length_aware(self, token_budget: int, now_s: float) -> list[int]:
        tokens, taken = self.input_tokens, self._taken
        batch: list[int] = []
        used = 0
        self._drop_taken_heads()
        # Starved prompts first, in arrival order.
        fifo = self._fifo
        while fifo and now_s - fifo[0][0] >= self.starvation_seconds:
            request = fifo[0][1]
            if batch and used + tokens[request] > token_budget:
                break
            fifo.popleft()
            self._take(request, batch)
            used += tokens[request]
            self._drop_taken_heads()
        else:
            shortest = self._shortest
            while shortest:
                length, request = shortest[0]
                if taken[request]:
                    heapq.heappop(shortest)
                    continue
                if batch and used + length > token_budget:
                    break
                heapq.heappop(shortest)
                self._take(request, batch)
                used += length
            self._drop_taken_heads()
        self._size -= len(batch)
        return batch
