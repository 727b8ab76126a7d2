"""The discrete-event simulator of a P/D-disaggregated (or colocated) serving cluster.

One heap of timed events (prefill batch done, KV transfer done, decode step boundary, replica ready,
controller tick); arrivals are merged in from the sorted trace instead of being pushed. Ties are broken
by insertion order, so a run is a pure function of (trace, policy, config): no wall clock, no unseeded
randomness. A request's life: arrival -> the router's prefill queue (`dopd_worker.scheduler`: FIFO or
length-aware), which assigns it to a prefill replica with room under its token budget -> that replica's
next batch (a cached prefix, when the trace carries block hashes, is not recomputed) -> KV transfer
(bytes/token x tokens / bandwidth) -> first token (TTFT: the decode worker emits the prefill's token as
the KV arrives, `dopd_worker.engine.DecodeEngine.admit`) -> a decode replica with KV room (else the
shared decode wait queue, timely sequences first: `dopd_worker.join_order`) -> last token. A one-token
output ends at its prefill (no KV is shipped). Scaling up
creates replicas that take work only after their startup delay; scaling down cancels starting replicas
first, then drains the least-loaded ready ones, which finish everything they hold before their GPUs are
released.

Callers: `run.simulate`. Metrics are gathered by `metrics.RequestLog`; observations by `observe`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from itertools import count
from typing import Any

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_sim.admission import attach_admission  # issue 13
from dopd_sim.config import SimConfig
from dopd_sim.instances import DecodeInstance, Instance, MixedInstance, PrefillInstance
from dopd_sim.metrics import RequestLog, TimelinePoint, interval_averages
from dopd_sim.observe import ObservationBuilder
from dopd_sim.policies.base import Layout, Policy, TickInput
from dopd_sim.policies.sizing import warm_start_layout
from dopd_sim.prefix_cache import PrefixCache, PrefixTrace
from dopd_sim.queues import PrefillQueue, scheduler_config
from dopd_worker.join_order import JoinQueue, join_deadline_s

_PREFILL_DONE, _KV_ARRIVED, _DECODE_BOUNDARY, _READY, _TICK = range(5)
MAX_DRAIN_SECONDS = 6 * 3600.0  # after the last arrival, give up on requests no replica will ever serve


class Simulator:
    """Replays one trace under one policy. Use `run()` once."""

    def __init__(self, trace: Trace, policy: Policy, config: SimConfig) -> None:
        self.trace = trace
        self.policy = policy
        self.config = config
        self.spec = config.spec
        self.profile = config.resolved_profile()
        self.aggregated = policy.architecture == "aggregated"
        self.now_s = 0.0
        self._events: list[tuple[Any, ...]] = []
        self._sequence = count()
        self._ids = count()
        self.arrival_s: list[float] = trace.arrival_s.tolist()
        self.last_arrival_s = trace.duration_s
        self.input_tokens: list[int] = trace.input_tokens.tolist()
        self.output_tokens: list[int] = trace.output_tokens.tolist()
        self.log = RequestLog(len(trace))
        queue_policy = getattr(policy, "prefill_queue", None) or config.prefill_queue
        self.prefill_queue = PrefillQueue(scheduler_config(config, queue_policy), self.input_tokens)
        # --- admission (issue 13): the router's admission in simulated time; swaps in its queue ---
        self.admission = attach_admission(self)
        self._prefill_startable: list[PrefillInstance] = []  # idle replicas just given work (dispatch)
        self.prefix_cache: PrefixCache | None = None
        self.prefix_blocks: tuple[tuple[int, ...], ...] = ()
        if isinstance(trace, PrefixTrace):
            self.prefix_blocks = trace.prefix_blocks
            self.prefix_cache = PrefixCache(
                trace.block_tokens, self.profile.kv_capacity_tokens // trace.block_tokens
            )
        # prefilled sequences no decode replica has room for: timely ones join first (`join_order`)
        self.decode_waiting: JoinQueue[int] = JoinQueue()
        self.mixed_waiting: deque[int] = deque()
        self.pools: dict[str, list[Instance]] = {"prefill": [], "decode": [], "mixed": []}
        self.retired: list[Instance] = []
        self.gpus_in_use = 0
        self.prefill_busy_seconds = 0.0  # summed prefill batch time started so far (utilization signal)
        self._last_tick_s = 0.0
        self._last_busy_seconds = 0.0
        self.scale_actions = 0
        self.timeline: list[TimelinePoint] = []
        self.observer = ObservationBuilder(trace, config, self.log)
        p = self.profile.prefill
        self._prefill_coeffs = (p.a_seconds, p.b_seconds_per_token, p.c_seconds_per_token2)
        self._kv_seconds_per_token = self.profile.kv_transfer_seconds_per_token

    # ----------------------------------------------------------------------------------- helpers

    def _push(self, time_s: float, kind: int, *payload: Any) -> None:
        heapq.heappush(self._events, (time_s, next(self._sequence), kind, *payload))

    def _kv_tokens(self, request: int) -> int:
        if self.config.kv_reserve_output:
            return self.input_tokens[request] + self.output_tokens[request]
        return self.input_tokens[request]

    def _gpus_for(self, role: str) -> int:
        return self.spec.decode.gpus_per_replica if role == "decode" else self.spec.prefill.gpus_per_replica

    def _startup_for(self, role: str) -> float:
        return self.spec.decode.startup_seconds if role == "decode" else self.spec.prefill.startup_seconds

    def current_layout(self) -> Layout:
        counts = {role: sum(1 for i in pool if not i.draining) for role, pool in self.pools.items()}
        return Layout(prefill=counts["prefill"], decode=counts["decode"], mixed=counts["mixed"])

    def running_decode_steps(self, now_s: float) -> list[tuple[float, float, int, int]]:
        """The steps each decode replica has run by `now_s` in the stretch not yet logged (start, end,
        batch, steps): the worker has observed those gaps, the log will at the stretch's end."""
        running: list[tuple[float, float, int, int]] = []
        for instance in self.pools["decode"]:
            assert isinstance(instance, DecodeInstance)
            if not instance.batch_size:
                continue
            steps = instance.steps_done_by(now_s)
            if steps:
                start_s = instance.segment_start_s
                running.append(
                    (start_s, start_s + instance.segment_seconds(steps), instance.batch_size, steps)
                )
        return running

    # ------------------------------------------------------------------------------------- run

    def run(self) -> None:
        total = len(self.arrival_s)
        first = self._tick_input(0.0, warm_start=True)
        initial = getattr(self.policy, "initial_layout", None)
        layout = initial(first) if callable(initial) else None
        if layout is None:
            layout = warm_start_layout(first.observation, self.profile, self.config, self.aggregated)
        self._apply(layout, warm=True)
        self._push(self.config.interval_seconds, _TICK)
        arrivals = self.arrival_s
        events = self._events
        index = 0
        pop = heapq.heappop
        while True:
            if index < total and (not events or arrivals[index] <= events[0][0]):
                self.now_s = arrivals[index]
                self._on_arrival(index)
                index += 1
                continue
            if not events:
                break
            event = pop(events)
            kind = event[2]
            if kind == _TICK and self.log.finished >= total and index >= total:
                continue  # nothing left to serve: the run ends at the last real event
            self.now_s = event[0]
            if kind == _DECODE_BOUNDARY:
                self._on_decode_boundary(event[3], event[4], event[5])
            elif kind == _PREFILL_DONE:
                self._on_prefill_done(event[3], event[4])
            elif kind == _KV_ARRIVED:
                self._route_decode(event[3])
            elif kind == _READY:
                self._on_ready(event[3])
            elif self.now_s - self.last_arrival_s > MAX_DRAIN_SECONDS:
                break  # a policy that never provides capacity: stop, leaving the rest unfinished
            else:
                self._on_tick()
        self.end_s = self.now_s
        for pool in self.pools.values():
            for instance in pool:
                self._release(instance)

    # --------------------------------------------------------------------------------- arrivals

    def _on_arrival(self, request: int) -> None:
        kv = self._kv_tokens(request)
        if kv > self.profile.kv_capacity_tokens:
            self.log.reject(request, self.now_s)
            return
        if self.aggregated:
            self.mixed_waiting.append(request)
            self._dispatch_mixed()
            return
        # --- admission (issue 13): shed before queueing, as the router does (dopd_sim.admission) ---
        if self.admission is not None and not self.admission.admit(request, self.now_s):
            return
        self.prefill_queue.push(request, self.now_s)
        self._dispatch_prefill()

    # ---------------------------------------------------------------------------------- prefill

    def _dispatch_prefill(self) -> None:
        """Assign queued prompts to prefill replicas as the router's policy picks them, then start a batch
        on every idle replica holding assigned prompts (a worker batches what it holds)."""
        queue, startable = self.prefill_queue, self._prefill_startable
        if queue:
            workers = [
                i
                for i in self.pools["prefill"]
                if isinstance(i, PrefillInstance) and i.ready and not i.draining
            ]
            by_name = {i.name: i for i in workers}
            while workers:
                picked = queue.next_assignment(self.now_s, workers)
                if picked is None:
                    break
                request, name = picked
                instance = by_name[name]
                tokens = self.input_tokens[request]
                instance.held.append(request)
                instance.inflight_tokens += tokens
                instance.inflight_long += queue.is_long(tokens)
                if not instance.batch:
                    startable.append(instance)
        while startable:
            replica = startable.pop()
            if replica.held and not replica.batch:
                self._start_prefill_batch(replica)

    def _start_prefill_batch(self, instance: PrefillInstance) -> None:
        """Run everything the replica holds as one batch: the fixed cost once per token budget's worth of
        new tokens (chunked prefill), then each prompt's new tokens (a cached prefix is not recomputed)."""
        a, b, c = self._prefill_coeffs
        batch, instance.held = instance.held, []
        new_tokens, squares = 0, 0
        for request in batch:
            length = self.input_tokens[request]
            cached = 0
            if self.prefix_cache is not None:
                cached = self.prefix_cache.cached_tokens(self.prefix_blocks[request], length, self.now_s)
            new_tokens += length - cached
            squares += length * length - cached * cached
        chunks = max(1, math.ceil(new_tokens / self.config.prefill_token_budget))
        seconds = a * chunks + b * new_tokens + c * squares
        instance.batch = batch
        instance.version += 1
        self.prefill_busy_seconds += seconds
        self._push(self.now_s + seconds, _PREFILL_DONE, instance, instance.version)

    def _on_prefill_done(self, instance: PrefillInstance, version: int) -> None:
        if version != instance.version:
            return
        now = self.now_s
        for request in instance.batch:
            tokens = self.input_tokens[request]
            instance.inflight_tokens -= tokens
            instance.inflight_long -= self.prefill_queue.is_long(tokens)
            if self.prefix_cache is not None:
                self.prefix_cache.insert(self.prefix_blocks[request], tokens)
            if self.output_tokens[request] <= 1:
                self.log.first_token(request, now, self.arrival_s[request])
                self.log.finish(request, now, 0.0)
                continue
            self._push(now + tokens * self._kv_seconds_per_token, _KV_ARRIVED, request)
        instance.batch = []
        if instance.held:
            self._prefill_startable.append(instance)
        elif instance.draining:
            self._remove(instance)
        self._dispatch_prefill()

    # ----------------------------------------------------------------------------------- decode

    def _route_decode(self, request: int) -> None:
        """The request's KV arrived: its first token goes out now (as the decode worker emits it), then it
        joins a decode replica with room, or the decode wait queue."""
        self.log.first_token(request, self.now_s, self.arrival_s[request])
        if self.decode_waiting:
            self._wait_for_decode(request)
            self._drain_decode_waiting()
            return
        if not self._place_decode(request):
            self._wait_for_decode(request)

    def _wait_for_decode(self, request: int) -> None:
        deadline = join_deadline_s(
            self.log.first_token_s[request],
            int(self.output_tokens[request]),
            self.config.spec.slo.tpot_seconds,
        )
        self.decode_waiting.append(request, deadline)

    def _least_reserved(self, role: str, kv_tokens: int) -> DecodeInstance | None:
        """The ready, non-draining instance of `role` that can admit `kv_tokens` with the least KV
        reserved (the router's least-KV-usage choice); None when none can."""
        best: DecodeInstance | None = None
        for instance in self.pools[role]:
            assert isinstance(instance, DecodeInstance)
            if not instance.ready or instance.draining or not instance.can_admit(kv_tokens):
                continue
            if best is None or instance.kv_reserved_tokens < best.kv_reserved_tokens:
                best = instance
        return best

    def _place_decode(self, request: int) -> bool:
        kv = self._kv_tokens(request)
        best = self._least_reserved("decode", kv)
        if best is None:
            return False
        self._join(best, request, kv, self.input_tokens[request] + 1, self.output_tokens[request] - 1)
        return True

    def _drain_decode_waiting(self) -> None:
        waiting, now = self.decode_waiting, self.now_s
        while waiting and self._place_decode(waiting.peek(now)):
            waiting.pop(now)

    def _join(self, instance: DecodeInstance, request: int, kv: int, context: int, steps: int) -> None:
        """Admit a sequence; it joins the batch at the next step boundary."""
        instance.kv_reserved_tokens += kv
        instance.pending.append((request, context, steps, kv))
        self._wake(instance)

    def _wake(self, instance: DecodeInstance) -> None:
        """Make sure an event exists at the next step boundary for work waiting to join."""
        if instance.batch_size == 0 and instance.scheduled_step is None:
            instance.segment_start_s = self.now_s
            self._schedule_decode(instance, instance.segment_step, self.now_s)
            return
        if isinstance(instance, MixedInstance) and instance.chunk_in_flight:
            return  # an iteration is running; the newcomer is picked up when it ends
        if instance.scheduled_step is None:
            return
        boundary = instance.segment_step + instance.steps_done_by(self.now_s) + 1
        if instance.scheduled_step > boundary:
            self._schedule_decode(instance, boundary, None)

    def _schedule_decode(self, instance: DecodeInstance, step: int, at_s: float | None) -> None:
        instance.version += 1
        instance.scheduled_step = step
        when = (
            at_s
            if at_s is not None
            else instance.segment_start_s + instance.segment_seconds(step - instance.segment_step)
        )
        self._push(when, _DECODE_BOUNDARY, instance, instance.version, step)

    def _log_decode_steps(self, start_s: float, end_s: float, batch: int, steps: int) -> None:
        """A stretch of decode steps with one batch ended: logged for the observer's inter-token gaps
        (`observe._inter_token_gaps`)."""
        self.log.decode_steps(start_s, end_s, batch, steps)

    def _on_decode_boundary(self, instance: DecodeInstance, version: int, step: int) -> None:
        if version != instance.version:
            return
        now = self.now_s
        instance.scheduled_step = None
        if step > instance.segment_step and instance.batch_size:
            self._log_decode_steps(
                instance.segment_start_s, now, instance.batch_size, step - instance.segment_step
            )
        instance.advance(step, now)
        mixed = isinstance(instance, MixedInstance)
        if mixed:
            assert isinstance(instance, MixedInstance)
            for entry in instance.finish_iteration_prefills():
                request, steps = entry[0], entry[3]
                self.log.first_token(request, now, self.arrival_s[request])
                if steps <= 0:
                    instance.kv_reserved_tokens -= entry[4]
                    self.log.finish(request, now, 0.0)
                else:
                    instance.pending.append((request, entry[1] + 1, steps, entry[4]))
        for request in instance.pop_finished():
            tokens = int(self.output_tokens[request])
            self.log.finish(request, now, (now - self.log.first_token_s[request]) / (tokens - 1))
        self._join_pending(instance, now)
        if mixed:
            self._dispatch_mixed()
        elif not instance.draining:
            self._drain_decode_waiting()
        self._join_pending(instance, now)  # sequences admitted at this boundary start with the next step
        self._reschedule(instance)

    def _join_pending(self, instance: DecodeInstance, now: float) -> None:
        for request, *_ in instance.pending:
            self.log.join(request, now)
        instance.join_pending()

    def _reschedule(self, instance: DecodeInstance) -> None:
        if isinstance(instance, MixedInstance) and instance.prefills:
            seconds = instance.plan_iteration()
            self._schedule_decode(instance, instance.segment_step + 1, self.now_s + seconds)
            return
        if instance.pending:
            self._schedule_decode(instance, instance.segment_step + 1, None)
            return
        finish = instance.next_finish_step()
        if finish is not None:
            self._schedule_decode(instance, finish, None)
            return
        instance.version += 1
        if instance.draining:
            self._remove(instance)

    # ------------------------------------------------------------------------------- aggregated

    def _dispatch_mixed(self) -> None:
        waiting = self.mixed_waiting
        while waiting:
            request = waiting[0]
            kv = self._kv_tokens(request)
            best = self._least_reserved("mixed", kv)
            if best is None:
                return
            assert isinstance(best, MixedInstance)
            waiting.popleft()
            best.kv_reserved_tokens += kv
            best.prefills.append(
                [request, self.input_tokens[request], 0, self.output_tokens[request] - 1, kv]
            )
            self._wake(best)

    # ---------------------------------------------------------------------------------- scaling

    def _tick_input(self, now_s: float, warm_start: bool = False) -> TickInput:
        observation = self.observer.observe(now_s, self, warm_start=warm_start)
        stamps, rates = self.observer.arrival_history(now_s)
        return TickInput(
            now_s,
            observation,
            stamps,
            rates,
            self.current_layout(),
            self.config,
            self.profile,
            self._prefill_utilization(now_s),
            lambda seconds: interval_averages(self.log, self.trace, now_s - seconds, now_s),
        )

    def _prefill_utilization(self, now_s: float) -> float | None:
        elapsed = now_s - self._last_tick_s
        ready = self.ready_counts()["prefill"]
        busy = self.prefill_busy_seconds - self._last_busy_seconds
        self._last_tick_s, self._last_busy_seconds = now_s, self.prefill_busy_seconds
        if elapsed <= 0 or ready == 0 or self.aggregated:
            return None
        return min(busy / (elapsed * ready), 1.0)

    def _on_tick(self) -> None:
        tick = self._tick_input(self.now_s)
        target = self.policy.decide(tick)
        self._apply(target, warm=False)
        self.timeline.append(self.observer.timeline_point(self.now_s, tick.observation, target, self))
        self._push(self.now_s + self.config.interval_seconds, _TICK)

    def _apply(self, target: Layout, warm: bool) -> None:
        current = self.current_layout()
        for role, want in (("prefill", target.prefill), ("decode", target.decode), ("mixed", target.mixed)):
            have = getattr(current, role)
            if want == have:
                continue
            if not warm:
                self.scale_actions += 1
            if want > have:
                for _ in range(want - have):
                    self._add(role, warm)
            else:
                self._shrink(role, have - want)

    def _add(self, role: str, warm: bool) -> None:
        gpus = self._gpus_for(role)
        ready_s = self.now_s if warm else self.now_s + self._startup_for(role)
        instance_id = next(self._ids)
        instance: Instance
        if role == "prefill":
            instance = PrefillInstance(instance_id, gpus, self.now_s, ready_s)
        elif role == "decode":
            instance = DecodeInstance(instance_id, "decode", gpus, self.now_s, ready_s, self.profile)
        else:
            instance = MixedInstance(
                instance_id, gpus, self.now_s, ready_s, self.profile, self.config.aggregated_token_budget
            )
        self.pools[role].append(instance)
        self.gpus_in_use += gpus
        if ready_s <= self.now_s:
            self._on_ready(instance)
        else:
            self._push(ready_s, _READY, instance)

    def _on_ready(self, instance: Instance) -> None:
        if instance.removed_s is not None:
            return  # cancelled while starting
        instance.ready = True
        if instance.role == "prefill":
            self._resize_prefix_cache()
            self._dispatch_prefill()
        elif instance.role == "decode":
            self._drain_decode_waiting()
        else:
            self._dispatch_mixed()

    def _shrink(self, role: str, count_to_remove: int) -> None:
        active = [i for i in self.pools[role] if not i.draining]
        starting = sorted((i for i in active if not i.ready), key=lambda i: -i.instance_id)
        for instance in starting[:count_to_remove]:
            instance.draining = True
            self._remove(instance)
        remaining = count_to_remove - min(count_to_remove, len(starting))
        ready = sorted((i for i in active if i.ready), key=lambda i: (_load(i), -i.instance_id))
        for instance in ready[:remaining]:
            instance.draining = True
            if _load(instance) == 0:
                self._remove(instance)

    def _remove(self, instance: Instance) -> None:
        self.pools[instance.role].remove(instance)
        self._release(instance)
        self.retired.append(instance)
        if instance.role == "prefill":
            self._resize_prefix_cache()

    def _resize_prefix_cache(self) -> None:
        """The cache holds what the ready prefill replicas' KV memory holds (draining ones included)."""
        if self.prefix_cache is not None:
            self.prefix_cache.resize(sum(1 for i in self.pools["prefill"] if i.ready))

    def prefix_cache_hit_rate(self, start_s: float, end_s: float) -> float | None:
        """Prompt tokens served from the prefix cache over those looked up in [start_s, end_s); None when
        the trace carries no block hashes or nothing was looked up."""
        return None if self.prefix_cache is None else self.prefix_cache.hit_rate(start_s, end_s)

    def _release(self, instance: Instance) -> None:
        if instance.removed_s is None:
            instance.removed_s = self.now_s
            self.gpus_in_use -= instance.gpus

    # ---------------------------------------------------------------------------------- results

    def _held(self, since_s: float, until_s: float) -> list[tuple[float, float, int]]:
        """(start, end, GPUs) of every replica's time from creation to release (now, if not yet
        released), clipped to [since_s, until_s]; replicas held for none of it are left out."""
        spans = []
        for i in self.retired + [i for pool in self.pools.values() for i in pool]:
            start = max(i.created_s, since_s)
            end = min(i.removed_s if i.removed_s is not None else self.now_s, until_s)
            if end > start:
                spans.append((start, end, i.gpus))
        return spans

    def peak_gpus_within(self, since_s: float, until_s: float) -> int:
        """The most GPUs held at once within [since_s, until_s] (as `gpu_seconds` counts them): the
        benchmark's peak over the span it scores and pays for, not a history replayed before it or the
        drain after the last arrival."""
        changes = [
            c for start, end, gpus in self._held(since_s, until_s) for c in ((start, gpus), (end, -gpus))
        ]
        held = peak = 0
        for _, delta in sorted(changes):  # at one instant a release counts before a creation
            held += delta
            peak = max(peak, held)
        return peak

    def gpu_seconds(self, until_s: float | None = None, since_s: float = 0.0) -> float:
        """GPU-seconds held by every replica from creation to release, counted from `since_s` up to
        `until_s` (default: the end of the run; the benchmark counts the trace's span, not the drain
        after its last arrival)."""
        end = self.now_s if until_s is None else until_s
        return float(sum(gpus * (stop - start) for start, stop, gpus in self._held(since_s, end)))

    def ready_counts(self) -> dict[str, int]:
        return {role: sum(1 for i in pool if i.ready and not i.draining) for role, pool in self.pools.items()}

    def _ready_decode(self) -> list[DecodeInstance]:
        """The ready replicas that decode (the colocated ones when aggregated)."""
        return [
            i
            for i in self.pools["mixed" if self.aggregated else "decode"]
            if i.ready and isinstance(i, DecodeInstance)
        ]

    def decode_kv_usage(self) -> float | None:
        pool = self._ready_decode()
        if not pool:
            return None
        return float(np.mean([i.kv_usage() for i in pool]))

    def decode_generated_tokens_mean(self) -> float | None:
        """Mean tokens generated by now by the sequences decoding on the ready decode replicas, as the
        workers' `dopd_decode_generated_tokens` gauges over their running counts read it; None with none
        decoding."""
        pool = self._ready_decode()
        running = sum(i.batch_size for i in pool)
        if running == 0:
            return None
        return sum(i.generated_tokens(self.now_s) for i in pool) / running

    def decode_running(self) -> float:
        pool = self.pools["mixed" if self.aggregated else "decode"]
        return float(sum(i.batch_size for i in pool if isinstance(i, DecodeInstance)))

    def queue_depth(self) -> float:
        if self.aggregated:
            queued = sum(len(i.prefills) for i in self.pools["mixed"] if isinstance(i, MixedInstance))
            return float(len(self.mixed_waiting) + queued)
        return float(len(self.prefill_queue))

    def decode_queue_depth(self) -> float:
        """Sequences waiting for a decode slot; none in the aggregated layout (its one queue is
        `queue_depth`)."""
        return float(len(self.decode_waiting))

    # ------------------------------------------------- driven from outside (dopd_sim.stepping)
    # Additive: run() never calls these two. `stepping.SteppedSimulator` (the engine emulator's clock and
    # replica follower) builds its stepping API on them.

    def _handle_engine_event(self, event: tuple[Any, ...]) -> None:
        """One popped heap event other than a controller tick, handled exactly as run() handles it
        (run() keeps its own inlined copy of this dispatch: it is the simulator's hot loop)."""
        self.now_s = event[0]
        kind = event[2]
        if kind == _DECODE_BOUNDARY:
            self._on_decode_boundary(event[3], event[4], event[5])
        elif kind == _PREFILL_DONE:
            self._on_prefill_done(event[3], event[4])
        elif kind == _KV_ARRIVED:
            self._route_decode(event[3])
        elif kind == _READY:
            self._on_ready(event[3])
        else:
            raise ValueError(f"not an engine event: kind {kind} at {event[0]} s")

    def _drain_instance(self, instance: Instance) -> None:
        """Scale down exactly this replica, as `_shrink` does for the ones it picks: a starting one is
        cancelled, a ready one takes no new work and is released once it has finished what it holds."""
        instance.draining = True
        if not instance.ready or _load(instance) == 0:
            self._remove(instance)


def _load(instance: Instance) -> int:
    if isinstance(instance, PrefillInstance):
        return len(instance.batch) + len(instance.held)
    if isinstance(instance, MixedInstance):
        return instance.batch_size + len(instance.pending) + len(instance.prefills)
    if isinstance(instance, DecodeInstance):
        return instance.batch_size + len(instance.pending)
    return 0


def gpu_hours(seconds: float) -> float:
    return seconds / 3600.0 if math.isfinite(seconds) else math.inf
