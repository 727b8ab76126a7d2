"""The two engines: prefill (batches prompts under a token budget, ships KV layer by layer) and decode
(continuous batching over the paged cache). Each runs its step loop on one dedicated thread; the HTTP
adapters (`prefill_server.py`, `decode_server.py`) talk to them through `submit`/`admit` and callbacks.
All writes to a cache's tensors happen on its engine thread; the allocator is shared under a lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dopd_worker.join_order import JoinQueue, join_deadline_s
from dopd_worker.kv_cache import OutOfBlocks, PagedKVCache, SequenceSlice, build_batch
from dopd_worker.metrics import Metrics
from dopd_worker.model import LlamaForCausalLM
from dopd_worker.sampling import SamplingParams, is_stop, sample
from dopd_worker.transfer import PairGroup, TransferError

log = logging.getLogger(__name__)


@dataclass
class PrefillJob:
    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    group: PairGroup
    tag_base: int
    on_done: Callable[[int | BaseException], None]  # first token, or the failure
    arrival_seconds: float = field(default_factory=time.monotonic)


class EngineThread:
    """A step loop on a daemon thread that sleeps on a condition when it has nothing to do."""

    def __init__(self, name: str) -> None:
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        self._thread.join(timeout=10)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def has_work(self) -> bool:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self._stop and not self.has_work():
                    self.cond.wait(timeout=1.0)
                if self._stop:
                    return
            try:
                self.step()
            except Exception:  # a bug in one step must not kill the worker silently; step fails its jobs
                log.exception("engine step failed")


class PrefillEngine(EngineThread):
    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: PagedKVCache,
        token_budget: int,
        metrics: Metrics,
        fault_pause_during_transfer: int | None = None,
    ) -> None:
        super().__init__("prefill-engine")
        self.model = model
        self.cache = cache
        self.token_budget = token_budget
        self.metrics = metrics
        self.lock = threading.Lock()
        self._queue: collections.deque[PrefillJob] = collections.deque()
        self.running = 0
        self.eos_ids = model.config.eos_token_ids
        # Fault injection for the chaos tests: the N-th transfer stops after its first layer, so a test
        # can SIGKILL this process with a transfer genuinely half sent.
        self._fault_pause_during_transfer = fault_pause_during_transfer
        self._jobs_taken = 0
        self._pause_request_id: str | None = None

    def abort_queued(self, error: BaseException) -> int:
        """Fail every job not yet in a batch (the drain timeout); a running batch finishes or fails."""
        with self.cond:
            jobs, self._queue = list(self._queue), collections.deque()
        for job in jobs:
            job.on_done(error)
        self._gauges()
        return len(jobs)

    def submit(self, job: PrefillJob) -> None:
        with self.cond:
            self._queue.append(job)
            self.cond.notify_all()
        self._gauges()

    def waiting(self) -> int:
        return len(self._queue)

    def has_work(self) -> bool:
        return bool(self._queue)

    def _gauges(self) -> None:
        labels = {"role": self.metrics.role, "model": self.metrics.model}
        self.metrics.requests_waiting.labels(**labels).set(len(self._queue))
        self.metrics.requests_running.labels(**labels).set(self.running)
        self.metrics.kv_cache_usage_ratio.labels(**labels).set(self.cache.allocator.usage())

    def _take_batch(self) -> list[tuple[PrefillJob, list[int]]]:
        batch: list[tuple[PrefillJob, list[int]]] = []
        tokens = 0
        with self.cond, self.lock:
            while self._queue:
                job = self._queue[0]
                if batch and tokens + len(job.prompt) > self.token_budget:
                    break
                try:
                    table = self.cache.allocator.allocate(job.request_id, len(job.prompt))
                except OutOfBlocks as exc:
                    if batch or self.cache.allocator.usage() > 0:
                        break
                    self._queue.popleft()
                    job.on_done(exc)
                    continue
                except ValueError as exc:  # the same request id twice: refuse the second
                    self._queue.popleft()
                    job.on_done(exc)
                    continue
                self._queue.popleft()
                batch.append((job, table))
                tokens += len(job.prompt)
                self._jobs_taken += 1
                if self._jobs_taken == self._fault_pause_during_transfer:
                    self._pause_request_id = job.request_id
        return batch

    def step(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        log.debug("prefill batch: %s", [job.request_id for job, _ in batch])
        try:
            self._run_batch(batch)
        except Exception as exc:  # a bug, not a transfer failure: fail the batch, never strand its jobs
            log.exception("prefill batch failed")
            with self.lock:
                for job, _ in batch:
                    self.cache.allocator.free(job.request_id)
            self.running = 0
            for job, _ in batch:
                job.on_done(exc)  # settling twice is harmless: the server side is idempotent

    def _run_batch(self, batch: list[tuple[PrefillJob, list[int]]]) -> None:
        self.running = len(batch)
        self._gauges()
        sends: dict[str, list[tuple[int, object]]] = {job.request_id: [] for job, _ in batch}
        failed: dict[str, BaseException] = {}
        started = time.monotonic()
        labels = {"role": self.metrics.role, "model": self.metrics.model}

        def send(job: PrefillJob, table: list[int], layer: int) -> None:
            try:
                kv = self.cache.read_layer(layer, table, len(job.prompt))
                work = job.group.send(kv, job.tag_base + layer)
                sends[job.request_id].append((kv.numel() * kv.element_size(), work))
            except Exception as exc:
                failed[job.request_id] = TransferError(f"KV send of layer {layer} failed: {exc}")
                return
            if job.request_id == self._pause_request_id and layer == 0:
                log.error("fault injection: transfer of %s paused after layer 0", job.request_id)
                threading.Event().wait()  # until the test kills this process

        def ship_layer(layer: int) -> None:
            # Tagged (gloo) pairs: each layer leaves as soon as it is computed, overlapping the next one.
            for job, table in batch:
                if job.request_id not in failed and not job.group.ordered:
                    send(job, table, layer)

        def ship_ordered() -> None:
            # Ordered (NCCL) pairs: whole transfers, one after another, in the order announced.
            for job, table in batch:
                if job.request_id in failed or not job.group.ordered:
                    continue
                try:
                    job.group.announce(job.tag_base)
                except Exception as exc:
                    failed[job.request_id] = TransferError(f"announcing the KV transfer failed: {exc}")
                    continue
                for layer in range(self.cache.num_layers):
                    send(job, table, layer)

        try:
            slices = [SequenceSlice(table, 0, job.prompt) for job, table in batch]
            logits = self.model.forward_paged(
                build_batch(slices, self.cache.block_size, self.cache.device),
                self.cache.k,
                self.cache.v,
                layer_done=ship_layer,
            )
            ship_ordered()
            firsts = [sample(logits[i], job.sampling, 0) for i, (job, _) in enumerate(batch)]
        except Exception as exc:
            for job, _ in batch:
                failed.setdefault(job.request_id, exc)
            firsts = [-1] * len(batch)
        for job, _ in batch:
            nbytes = 0
            if job.request_id not in failed:
                try:
                    for size, work in sends[job.request_id]:
                        job.group.wait(work, f"KV send of request {job.request_id}")
                        nbytes += size
                except TransferError as exc:
                    failed[job.request_id] = exc
            if job.request_id in failed:
                self.metrics.kv_transfer_failures_total.labels(**labels).inc()
                job.group.broken = True
            else:
                self.metrics.kv_transfer_bytes_total.labels(**labels).inc(nbytes)
                self.metrics.kv_transfer_seconds.labels(**labels).observe(time.monotonic() - started)
        with self.lock:
            for job, _ in batch:
                self.cache.allocator.free(job.request_id)
        self.running = 0
        self._gauges()
        for (job, _), first in zip(batch, firsts, strict=True):
            error = failed.get(job.request_id)
            if error is None:
                self.metrics.ttft_seconds.labels(**labels).observe(time.monotonic() - job.arrival_seconds)
                self.metrics.prompt_tokens_total.labels(**labels).inc(len(job.prompt))
                self.metrics.prefix_cache_queries_total.labels(**labels).inc(len(job.prompt))
                self.metrics.prompt_tokens.labels(**labels).observe(len(job.prompt))
                self.metrics.status("ok")
            else:
                self.metrics.status("error")
            log.debug("prefill %s settled: %s", job.request_id, "ok" if error is None else error)
            job.on_done(first if error is None else error)


@dataclass
class DecodeSequence:
    request_id: str
    prompt_len: int
    first_token: int
    sampling: SamplingParams
    staged_kv: list[torch.Tensor] | None  # per layer [2, prompt_len, kv, D] until written into blocks
    emit: Callable[[int | None, str | None], None]  # (token, finish_reason); token None with reason = failure
    generated: list[int] = field(default_factory=list)
    last_emit_seconds: float = 0.0


class DecodeEngine(EngineThread):
    """Continuous batching: sequences join after their KV arrives and leave when they stop."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: PagedKVCache,
        max_batch_size: int,
        metrics: Metrics,
        tpot_slo_seconds: float | None = None,
    ) -> None:
        super().__init__("decode-engine")
        self.model = model
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.metrics = metrics
        self.tpot_slo_seconds = tpot_slo_seconds  # None: sequences join first come, first served
        self.lock = threading.Lock()
        # sequences whose KV arrived, waiting for room in the batch: timely ones join first (join_order)
        self._joining: JoinQueue[DecodeSequence] = JoinQueue()
        self._cancelled: set[str] = set()
        self.active: list[DecodeSequence] = []
        self.eos_ids = model.config.eos_token_ids
        self.pending_transfers = 0
        self._writing_kv = 0  # taken from _joining by the engine thread, not yet in `active`
        self._aborting: str | None = None

    def admit(self, seq: DecodeSequence) -> None:
        """A sequence whose KV arrived: its first token (the prefill's, which came with the KV) goes out
        now, and the sequence waits for room in the batch. So the user's TTFT is the prefill's (with the
        transfer, a few milliseconds) and a wait for a slot is the gap before the second token, in TPOT,
        as the simulator scores it and as the join order budgets it (`join_deadline_s`: a sequence's
        slack for its wait is its TPOT budget). Emitting at the join put the wait in TTFT instead, where
        the operator read a full decode pool as a slow prefill pool (docs/metrics.md)."""
        reason = self._emit(seq, seq.first_token)
        if reason is not None:  # that token ended it: it never joins
            self._finish(seq, reason)
            self.gauges()
            return
        deadline = join_deadline_s(time.monotonic(), seq.sampling.max_tokens, self.tpot_slo_seconds)
        with self.cond:
            self._joining.append(seq, deadline)
            self.cond.notify_all()

    def cancel(self, request_id: str) -> None:
        with self.cond:
            self._cancelled.add(request_id)
            self.cond.notify_all()

    def in_flight(self) -> int:
        return len(self.active) + len(self._joining) + self._writing_kv + self.pending_transfers

    def abort_all(self, reason: str) -> int:
        """End every sequence (batched or joining) with `error: reason` (the drain timeout); their
        streams end with that error, and their blocks are freed. Runs on the engine thread's lock."""
        with self.cond:
            self._aborting = reason
            count = len(self.active) + len(self._joining)
            self.cond.notify_all()
        return count

    def has_work(self) -> bool:
        return bool(self.active or self._joining or self._cancelled)

    def _abort_pending(self) -> bool:
        """On the engine thread, between steps: end every sequence when an abort was asked for."""
        with self.cond:
            reason, self._aborting = self._aborting, None
            if reason is None:
                return False
            doomed = self.active + list(self._joining)
            self.active = []
            self._joining.clear()
        for seq in doomed:
            with self.lock:
                self.cache.allocator.free(seq.request_id)
            self.metrics.status("error")
            seq.emit(None, f"error: {reason}")
        self.gauges()
        return True

    def gauges(self) -> None:
        labels = {"role": self.metrics.role, "model": self.metrics.model}
        # Waiting for a slot: the sequences whose KV arrived. A transfer in flight is not waiting for a slot
        # (its blocks are taken; `dopd_kv_transfers_pending` counts it): counted here, a slow transfer
        # read as a decode queue, and the planner ordered decode replicas for it.
        self.metrics.requests_waiting.labels(**labels).set(len(self._joining))
        self.metrics.requests_running.labels(**labels).set(len(self.active))
        self.metrics.kv_cache_usage_ratio.labels(**labels).set(self.cache.allocator.usage())
        # How far the residents are into their answers: the planner reads longer answers seated before
        # they finish from it.
        generated = sum(len(seq.generated) for seq in self.active)
        self.metrics.decode_generated_tokens.labels(**labels).set(generated)

    def _finish(self, seq: DecodeSequence, reason: str) -> None:
        labels = {"role": self.metrics.role, "model": self.metrics.model}
        with self.lock:
            self.cache.allocator.free(seq.request_id)
        self.metrics.generation_tokens.labels(**labels).observe(len(seq.generated))
        self.metrics.status("ok" if reason in ("stop", "length") else reason)
        seq.emit(None, reason)

    def _emit(self, seq: DecodeSequence, token: int) -> str | None:
        now = time.monotonic()
        labels = {"role": self.metrics.role, "model": self.metrics.model}
        if seq.generated:
            self.metrics.inter_token_latency_seconds.labels(**labels).observe(now - seq.last_emit_seconds)
        seq.last_emit_seconds = now
        seq.generated.append(token)
        self.metrics.generation_tokens_total.labels(**labels).inc()
        seq.emit(token, None)
        return is_stop(token, len(seq.generated), seq.sampling, self.eos_ids)

    def _join(self) -> None:
        with self.cond:
            room = self.max_batch_size - len(self.active)
            now = time.monotonic()
            joining = [self._joining.pop(now) for _ in range(min(room, len(self._joining)))]
            cancelled, self._cancelled = self._cancelled, set()
            self._writing_kv = len(joining)  # out of the queue, not in the batch: a drain waits for them
        if joining:  # each waited for its slot since its first token went out (`admit`)
            waits = self.metrics.decode_slot_wait_seconds.labels(
                role=self.metrics.role, model=self.metrics.model
            )
            for seq in joining:
                waits.observe(now - seq.last_emit_seconds)
        for seq in joining:
            try:
                self._place(seq)
            finally:
                with self.cond:
                    self._writing_kv -= 1
        for seq in [s for s in self.active if s.request_id in cancelled]:
            self.active.remove(seq)
            self._finish(seq, "cancelled")

    def _place(self, seq: DecodeSequence) -> None:
        """Write a joining sequence's received KV into its blocks and put it in the batch (its first
        token went out at `admit`)."""
        try:
            with self.lock:
                table = self.cache.allocator.table(seq.request_id)
            assert seq.staged_kv is not None
            for layer, kv in enumerate(seq.staged_kv):
                self.cache.write_layer(layer, table, kv.to(self.cache.device))
        except Exception as exc:  # a bug, not a transfer failure: fail this sequence, keep the rest
            log.exception("writing the received KV of %s failed", seq.request_id)
            with self.lock:
                self.cache.allocator.free(seq.request_id)
            seq.emit(None, f"error: writing the received KV failed: {exc}")
            return
        seq.staged_kv = None
        self.active.append(seq)

    def step(self) -> None:
        if self._abort_pending():
            return
        self._join()
        if not self.active:
            self.gauges()
            return
        slices = [
            SequenceSlice(
                self.cache.allocator.table(s.request_id),
                s.prompt_len + len(s.generated) - 1,
                [s.generated[-1]],
            )
            for s in self.active
        ]
        try:
            logits = self.model.forward_paged(
                build_batch(slices, self.cache.block_size, self.cache.device), self.cache.k, self.cache.v
            )
        except Exception as exc:
            log.exception("decode step failed")
            for seq in self.active:
                seq.emit(None, f"error: decode step failed: {exc}")
                with self.lock:
                    self.cache.allocator.free(seq.request_id)
            self.active = []
            return
        still: list[DecodeSequence] = []
        for i, seq in enumerate(self.active):
            token = sample(logits[i], seq.sampling, len(seq.generated))
            reason = self._emit(seq, token)
            if reason is None:
                still.append(seq)
            else:
                self._finish(seq, reason)
        self.active = still
        self.gauges()
