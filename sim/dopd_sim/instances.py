"""Simulated serving instances: prefill, decode (continuous batching) and colocated (chunked prefill).

The decode instance is the simulator's hot path, so it does not take one event per decode step. Between
two changes of its batch (a sequence joining or finishing) the batch size B is fixed and the summed
context grows by B tokens a step, so the time of n steps is closed-form,
`n*(a + c*B + b*S0) + b*B*n*(n-1)/2` for `T_d = a + b*sum(ctx) + c*B`, and the instance schedules one
event at the next step boundary where something changes. That keeps the cost per request constant
(a handful of events) instead of proportional to its output length, which is what makes an hour of a
production trace replay in seconds. Callers: `cluster.Simulator` only.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from dopd_operator.profile import PerformanceProfile
from dopd_worker.scheduler import Lane

_EPS = 1e-12


class Instance:
    """A replica: GPUs from `created_s` to `removed_s`, taking work from `ready_s` until it drains."""

    __slots__ = ("created_s", "draining", "gpus", "instance_id", "ready", "ready_s", "removed_s", "role")

    def __init__(self, instance_id: int, role: str, gpus: int, created_s: float, ready_s: float) -> None:
        self.instance_id = instance_id
        self.role = role
        self.gpus = gpus
        self.created_s = created_s
        self.ready_s = ready_s
        self.removed_s: float | None = None
        self.ready = False
        self.draining = False


class PrefillInstance(Instance):
    """A prefill worker as the router sees it: the router assigns it prompts while their tokens fit its
    budget (`inflight_tokens`, the running batch included); it runs one batch at a time, of everything
    assigned to it that is not yet running (`held`). Its `name`, `lane`, `inflight_tokens` and
    `inflight_long` are what `dopd_worker.scheduler` reads of a worker."""

    __slots__ = ("batch", "held", "inflight_long", "inflight_tokens", "lane", "name", "version")

    def __init__(self, instance_id: int, gpus: int, created_s: float, ready_s: float) -> None:
        super().__init__(instance_id, "prefill", gpus, created_s, ready_s)
        self.name = f"prefill-{instance_id:07d}"
        self.lane = Lane.SHARED
        self.batch: list[int] = []  # running
        self.held: list[int] = []  # assigned, waiting for the next batch
        self.inflight_tokens = 0
        self.inflight_long = 0
        self.version = 0

    @property
    def busy(self) -> bool:
        return bool(self.batch)


class DecodeInstance(Instance):
    """Continuous batching with KV admission control, advanced in closed-form segments (module doc)."""

    __slots__ = (
        "a_s",
        "b_s",
        "batch_size",
        "c_s",
        "context_sum",
        "finishing",
        "kv_capacity_tokens",
        "kv_reserved_tokens",
        "max_batch_size",
        "pending",
        "scheduled_step",
        "segment_start_s",
        "segment_step",
        "version",
    )

    def __init__(
        self,
        instance_id: int,
        role: str,
        gpus: int,
        created_s: float,
        ready_s: float,
        profile: PerformanceProfile,
    ) -> None:
        super().__init__(instance_id, role, gpus, created_s, ready_s)
        d = profile.decode
        self.a_s = d.a_seconds
        self.b_s = d.b_seconds_per_context_token
        self.c_s = d.c_seconds_per_sequence
        self.kv_capacity_tokens = profile.kv_capacity_tokens
        self.max_batch_size = profile.max_batch_size
        self.kv_reserved_tokens = 0
        self.batch_size = 0
        self.context_sum = 0.0  # summed context of the batch at `segment_step`
        self.segment_start_s = 0.0
        self.segment_step = 0  # decode steps done by this instance at `segment_start_s`
        # (finish step, request, context at finish, KV reserved)
        self.finishing: list[tuple[int, int, int, int]] = []
        self.pending: list[
            tuple[int, int, int, int]
        ] = []  # (request, context, decode steps, KV) joining next
        self.scheduled_step: int | None = None  # step boundary of the one live event, if any
        self.version = 0

    # --------------------------------------------------------------------------------- admission

    def can_admit(self, kv_tokens: int) -> bool:
        members = self.batch_size + len(self.pending)
        return (
            members < self.max_batch_size and self.kv_reserved_tokens + kv_tokens <= self.kv_capacity_tokens
        )

    def kv_usage(self) -> float:
        return self.kv_reserved_tokens / self.kv_capacity_tokens

    @property
    def idle(self) -> bool:
        return self.batch_size == 0 and not self.pending

    # ------------------------------------------------------------------------------- step algebra

    def segment_seconds(self, steps: int) -> float:
        """Seconds for `steps` decode steps from the current segment start with the current batch."""
        batch = self.batch_size
        base = self.a_s + self.c_s * batch + self.b_s * self.context_sum
        return steps * base + self.b_s * batch * steps * (steps - 1) / 2

    def steps_done_by(self, now_s: float) -> int:
        """Whole steps of the current segment finished by `now_s`."""
        elapsed = now_s - self.segment_start_s
        if elapsed <= 0:
            return 0
        batch = self.batch_size
        base = self.a_s + self.c_s * batch + self.b_s * self.context_sum
        half_growth = self.b_s * batch / 2
        if half_growth <= _EPS:
            steps = int(elapsed / base) if base > 0 else 0
        else:
            linear = base - half_growth
            steps = int(
                (-linear + math.sqrt(linear * linear + 4 * half_growth * elapsed)) / (2 * half_growth)
            )
        while steps > 0 and self.segment_seconds(steps) > elapsed + _EPS:
            steps -= 1
        while self.segment_seconds(steps + 1) <= elapsed + _EPS:
            steps += 1
        return steps

    def advance(self, step: int, now_s: float) -> None:
        """Move the segment start to boundary `step`, reached at `now_s`."""
        done = step - self.segment_step
        self.context_sum += self.batch_size * done
        self.segment_step = step
        self.segment_start_s = now_s

    def pop_finished(self) -> list[int]:
        """Requests whose last token was produced at or before the current boundary."""
        done: list[int] = []
        finishing = self.finishing
        while finishing and finishing[0][0] <= self.segment_step:
            _, request, context, kv = heapq.heappop(finishing)
            self.batch_size -= 1
            self.context_sum -= context
            self.kv_reserved_tokens -= kv
            done.append(request)
        if self.batch_size == 0:
            self.context_sum = 0.0
        return done

    def join_pending(self) -> None:
        for request, context, steps, kv in self.pending:
            self.batch_size += 1
            self.context_sum += context
            heapq.heappush(self.finishing, (self.segment_step + steps, request, context + steps, kv))
        self.pending.clear()

    def next_finish_step(self) -> int | None:
        return self.finishing[0][0] if self.finishing else None


class MixedInstance(DecodeInstance):
    """A colocated replica (vLLM-like): each iteration runs every decode sequence plus up to
    `token_budget - B` prompt tokens of chunked prefill; pure-decode stretches use the segment algebra."""

    __slots__ = ("chunk_in_flight", "prefill_a_s", "prefill_b_s", "prefill_c_s", "prefills", "token_budget")

    def __init__(
        self,
        instance_id: int,
        gpus: int,
        created_s: float,
        ready_s: float,
        profile: PerformanceProfile,
        token_budget: int,
    ) -> None:
        super().__init__(instance_id, "mixed", gpus, created_s, ready_s, profile)
        p = profile.prefill
        self.prefill_a_s = p.a_seconds
        self.prefill_b_s = p.b_seconds_per_token
        self.prefill_c_s = p.c_seconds_per_token2
        self.token_budget = token_budget
        # [request, prompt tokens, tokens done, decode steps after the first token, KV reserved]
        self.prefills: deque[list[int]] = deque()
        self.chunk_in_flight: list[tuple[list[int], int]] = []

    @property
    def idle(self) -> bool:
        return self.batch_size == 0 and not self.pending and not self.prefills

    def can_admit(self, kv_tokens: int) -> bool:
        members = self.batch_size + len(self.pending) + len(self.prefills)
        return (
            members < self.max_batch_size and self.kv_reserved_tokens + kv_tokens <= self.kv_capacity_tokens
        )

    def plan_iteration(self) -> float:
        """Choose this iteration's prefill chunks; return its duration in seconds."""
        budget = max(self.token_budget - self.batch_size, 1)
        cost = 0.0
        self.chunk_in_flight = []
        for entry in self.prefills:
            if budget <= 0:
                break
            take = min(entry[1] - entry[2], budget)
            done = entry[2]
            cost += self.prefill_b_s * take + self.prefill_c_s * ((done + take) ** 2 - done * done)
            self.chunk_in_flight.append((entry, take))
            budget -= take
        decode = 0.0
        if self.batch_size:
            decode = self.a_s + self.c_s * self.batch_size + self.b_s * self.context_sum
        overhead = max(self.prefill_a_s - self.a_s, 0.0) if self.batch_size else self.prefill_a_s
        return decode + cost + overhead

    def finish_iteration_prefills(self) -> list[list[int]]:
        """Apply the chunks of the iteration just ended; return the prefills it completed."""
        completed: list[list[int]] = []
        for entry, take in self.chunk_in_flight:
            entry[2] += take
            if entry[2] >= entry[1]:
                completed.append(entry)
        self.chunk_in_flight = []
        if completed:
            done_ids = {id(e) for e in completed}
            self.prefills = deque(e for e in self.prefills if id(e) not in done_ids)
        return completed
