"""The router's SLO-aware admission in simulated time: the same policy (`dopd_worker.admission.decide`
and `expired`), the same prefill rate meter and queued-token index, fed with the simulator's events
instead of HTTP ones, so the overload benchmark measures the router's own rule.

- At arrival (`Simulator._on_arrival`, a marked hook) `SimAdmission.admit` builds the pool state as the
  router does (usable prefill and decode replicas, tokens in flight on prefill, queued tokens the
  policy serves first, KV room on some decode replica, the decode pace) and asks `decide`; a shed
  request is recorded in the request log as rejected (it misses the SLO) and counted here by reason.
- `AdmittingQueue` replaces the simulator's prefill queue: it indexes queued tokens, drops a request
  still queued past its deadline (counted here as expired, rejected in the log), and feeds the rate
  meter with each dispatch (a prompt handed to a replica) and each first token (the log's own record).
Disaggregated runs only (a colocated engine has no prefill queue); not for `stepping` (it appends
requests the queued-token index was not sized for).

Callers: `cluster.Simulator` (`attach_admission` in its constructor, `admit` on arrival), the overload
benchmark and the tests (the counters).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dopd_sim.instances import DecodeInstance, PrefillInstance
from dopd_sim.queues import PrefillQueue
from dopd_worker.admission import AdmissionConfig, PoolState, Priority, Reason, decide
from dopd_worker.admission_queue import AdmissionQueue, room_wait_tokens
from dopd_worker.pool_meters import DecodePaceMeter, PrefillRateMeter
from dopd_worker.scheduler import WorkerLoad

if TYPE_CHECKING:
    from dopd_sim.cluster import Simulator

PRIORITY_ORDER = (Priority.INTERACTIVE, Priority.STANDARD, Priority.BATCH)


@dataclass(frozen=True)
class SimAdmissionConfig:
    """Admission in a simulated run: the router's config, and the share of requests in each class
    (interactive, standard, batch), drawn per request from the run's seed."""

    admission: AdmissionConfig
    priority_shares: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def __post_init__(self) -> None:
        if min(self.priority_shares) < 0 or abs(sum(self.priority_shares) - 1.0) > 1e-9:
            raise ValueError(f"priority_shares must be >= 0 and sum to 1, got {self.priority_shares}")


class AdmittingQueue(PrefillQueue):
    """The simulator's prefill queue with the router's admission bookkeeping around it."""

    def __init__(self, base: PrefillQueue, admission: SimAdmission) -> None:
        super().__init__(base.config, base.input_tokens)
        self.admission = admission

    def push(self, request: int, now_s: float) -> None:
        super().push(request, now_s)
        self.admission.queued_pushed(request)

    def remove(self, request: int) -> None:
        """Drop a queued request unserved (its deadline passed), as the router's queue does."""
        self._router.remove(str(request))

    def next_assignment(self, now_s: float, workers: Sequence[WorkerLoad]) -> tuple[int, str] | None:
        self.admission.catch_up(now_s)
        picked = super().next_assignment(now_s, workers)
        if picked is not None:
            self.admission.dispatched(picked[0], picked[1], now_s)
        return picked


class SimAdmission:
    """Admission state and counters of one simulated run."""

    def __init__(self, sim: Simulator, config: SimAdmissionConfig) -> None:
        self.sim = sim
        self.config = config.admission
        scheduler = sim.prefill_queue.config
        self.meter = PrefillRateMeter()
        self.pace = DecodePaceMeter()
        self._paced_s = 0.0
        self.queue_index = AdmissionQueue(
            scheduler.policy, scheduler.aging_seconds, max(max(sim.input_tokens, default=1), 1)
        )
        rng = np.random.default_rng(sim.config.seed)
        classes = rng.choice(3, size=len(sim.input_tokens), p=list(config.priority_shares))
        self.priority_of: list[Priority] = [PRIORITY_ORDER[c] for c in classes.tolist()]
        self.queue = AdmittingQueue(sim.prefill_queue, self)
        self._deadlines: list[tuple[float, int]] = []
        self._waiting: set[int] = set()
        self._worker_of: dict[int, str] = {}
        self._first_tokens_seen = 0
        self.admitted = 0
        self.shed: Counter[Reason] = Counter()
        self.shed_by_priority: Counter[Priority] = Counter()
        self.expired = 0
        self.expired_by_priority: Counter[Priority] = Counter()

    # --------------------------------------------------------------------------- the router's view

    def pool(self, request: int, now_s: float) -> PoolState:
        sim = self.sim
        prefill = [
            i for i in sim.pools["prefill"] if isinstance(i, PrefillInstance) and i.ready and not i.draining
        ]
        decode = [
            i for i in sim.pools["decode"] if isinstance(i, DecodeInstance) and i.ready and not i.draining
        ]
        kv = sim._kv_tokens(request)
        tokens = sim.input_tokens[request]
        return PoolState(
            prefill_workers=len(prefill),
            decode_workers=len(decode),
            tokens_per_second_per_worker=self.meter.tokens_per_second(now_s),
            service_seconds=self.meter.service_seconds(tokens, now_s),
            inflight_tokens=sum(i.inflight_tokens for i in prefill),
            room_wait_tokens=room_wait_tokens(
                [i.inflight_tokens for i in prefill], tokens, self.queue.config.token_budget
            ),
            queue=self.queue_index.view(tokens, now_s),
            decode_fill=min((_fill(i, kv) for i in decode), default=None),
            decode_itl_seconds=self._decode_pace(decode, now_s),
        )

    def _decode_pace(self, decode: list[DecodeInstance], now_s: float) -> float | None:
        """The router's token-gap meter, fed with what each decode replica produced since the last
        arrival: its batch at its current step time (the simulator times no single token)."""
        elapsed = now_s - self._paced_s
        if elapsed > 0:
            for instance in decode:
                batch = instance.batch_size
                if batch:
                    step_s = instance.a_s + instance.c_s * batch + instance.b_s * instance.context_sum
                    self.pace.observe(step_s, batch * elapsed / step_s, now_s)
            self._paced_s = now_s
        return self.pace.itl_seconds(now_s)

    def admit(self, request: int, now_s: float) -> bool:
        """The router's decision for a request arriving now; a shed one is logged as rejected."""
        self.catch_up(now_s)
        priority = self.priority_of[request]
        verdict = decide(
            self.sim.input_tokens[request], priority, now_s, self.pool(request, now_s), self.config
        )
        if not verdict.admitted:
            assert verdict.reason is not None
            self.shed[verdict.reason] += 1
            self.shed_by_priority[priority] += 1
            self.sim.log.reject(request, now_s)
            return False
        self.admitted += 1
        self.queue_index.admitted.add(self.sim.input_tokens[request], now_s)
        assert verdict.queue_deadline_seconds is not None
        heapq.heappush(self._deadlines, (verdict.queue_deadline_seconds, request))
        return True

    # ------------------------------------------------------------------------------ queue events

    def queued_pushed(self, request: int) -> None:
        self.queue_index.queued.add(self.sim.input_tokens[request])
        self._waiting.add(request)

    def dispatched(self, request: int, worker: str, now_s: float) -> None:
        self._waiting.discard(request)
        self.queue_index.queued.remove(self.sim.input_tokens[request])
        self._worker_of[request] = worker
        self.meter.started(worker, str(request), now_s)

    def catch_up(self, now_s: float) -> None:
        """Feed the meter the first tokens logged since the last call (each at its own time, all <= now),
        then drop what is still queued past its deadline (expired at the deadline, as the router's wait
        times out there)."""
        log = self.sim.log
        index = log.first_token_index
        while self._first_tokens_seen < len(index):
            request = index[self._first_tokens_seen]
            worker = self._worker_of.pop(request)
            self.meter.finished(
                worker,
                str(request),
                self.sim.input_tokens[request],
                True,
                log.first_token_times[self._first_tokens_seen],
            )
            self._first_tokens_seen += 1
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] < now_s:
            _, request = heapq.heappop(deadlines)
            if request not in self._waiting:
                continue  # dispatched in time
            self._waiting.discard(request)
            self.queue.remove(request)
            tokens = self.sim.input_tokens[request]
            self.queue_index.queued.remove(tokens)
            priority = self.priority_of[request]
            self.expired += 1
            self.expired_by_priority[priority] += 1
            self.sim.log.reject(request, now_s)


def _fill(instance: DecodeInstance, kv_tokens: int) -> float:
    """A decode replica's fill with one more sequence: the larger of its KV and batch-slot shares (its
    `can_admit` limits)."""
    members = instance.batch_size + len(instance.pending)
    return max(
        (instance.kv_reserved_tokens + kv_tokens) / instance.kv_capacity_tokens,
        (members + 1) / instance.max_batch_size,
    )


def attach_admission(sim: Simulator) -> SimAdmission | None:
    """Admission for a disaggregated run whose config asks for it (the queue is swapped for the
    admitting one); None otherwise."""
    config = sim.config.admission
    if config is None or sim.aggregated:
        return None
    admission = SimAdmission(sim, config)
    sim.prefill_queue = admission.queue
    return admission
