"""The simulator's engines driven from outside, one clock step at a time: what the engine emulator
(`dopd emulate`) runs in wall-clock time.

`SteppedSimulator` is the discrete-event `Simulator` without a policy and without controller ticks:
- `advance_to(t)` processes arrivals and engine events up to `t` in exactly the order `run()` would;
- `add_ready_instance(role, name)` and `drain_instance(name)` change the replicas at the current time,
  named by the caller (the emulator names them after the Ready pods it follows); draining a replica
  finishes what it holds before it is released, as a scale-down in `run()` does;
- `append_requests(...)` extends the load (the emulator loops a trace this way);
- its `listener` (an `EngineObserver`) hears, per named replica, what a real engine's metrics are made
  of: arrivals, prefill batch starts, first tokens, KV arrivals and admissions on the decode side,
  sequences joining a decode batch, the decode steps themselves (each step's duration and how many
  sequences it advanced), and completions. Decode steps are reported as they happen in simulated time:
  at every decode boundary and, for the steps of a segment still running, at the end of `advance_to`.

Stepped with the replicas a static layout keeps (all added at time 0), it reproduces `run()` under
`StaticPolicy` request for request (tests/emulator/test_stepping.py). Callers: dopd_emulator, tests.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from dopd_forecaster.traces import Trace
from dopd_operator.api import Role
from dopd_sim.cluster import Simulator
from dopd_sim.config import SimConfig
from dopd_sim.instances import DecodeInstance, Instance, PrefillInstance
from dopd_sim.policies.base import Architecture, Layout, TickInput

FloatArray = npt.NDArray[np.float64]


class EngineObserver(Protocol):
    """What a stepped simulation reports. `instance` is the caller's name for the replica; requests are
    indices into the simulator's arrays (`arrival_s`, `input_tokens`, `output_tokens`)."""

    def arrived(self, request: int, now_s: float) -> None: ...

    def rejected(self, request: int, now_s: float) -> None:
        """The prompt cannot fit any decode replica's KV cache: refused at arrival."""

    def prefill_started(self, instance: str, requests: Sequence[int], now_s: float) -> None: ...

    def first_token(self, instance: str, request: int, now_s: float) -> None: ...

    def kv_arrived(self, request: int, now_s: float) -> None:
        """The prompt's KV reached the decode side; it waits for a decode replica with room."""

    def decode_admitted(self, instance: str, request: int, now_s: float) -> None: ...

    def decode_joined(self, instance: str, request: int, now_s: float) -> None:
        """The sequence joined the decode batch (its first decode step starts now)."""

    def decode_steps(self, instance: str, step_seconds: FloatArray, sequences: int) -> None:
        """Consecutive decode steps, each advancing `sequences` sequences by one token."""

    def finished(self, instance: str, request: int, now_s: float) -> None: ...

    def removed(self, instance: str, now_s: float) -> None:
        """The replica was released (a drain finished, or it was cancelled)."""


class _NoController:
    """The policy slot of a stepped simulation: replicas come from outside, so nothing ever decides."""

    name = "external"
    architecture: Architecture = "disaggregated"

    def decide(self, tick: TickInput) -> Layout:
        raise RuntimeError("a SteppedSimulator has no controller ticks")


class SteppedSimulator(Simulator):
    """A disaggregated cluster whose clock, replicas and load are driven by the caller (module doc)."""

    def __init__(self, trace: Trace, config: SimConfig) -> None:
        super().__init__(trace, _NoController(), config)
        self.listener: EngineObserver | None = None
        self.arrivals_processed = 0
        self._by_name: dict[str, Instance] = {}
        self._names: dict[int, str] = {}  # instance_id -> name
        self._admitted: dict[int, list[int]] = {}  # decode instance_id -> admitted, not yet in the batch
        self._steps_reported: dict[int, int] = {}  # decode instance_id -> absolute step reported so far
        self._removals: list[str] = []  # released during the current hook, reported at its end

    # ------------------------------------------------------------------------------- the caller's API

    def instances(self) -> dict[str, Instance]:
        """Every replica not yet released (ready or draining), by name."""
        return dict(self._by_name)

    def add_ready_instance(self, role: Role, name: str) -> None:
        """A replica of `role` that takes work from now on. A draining replica of the same name (its pod
        came back to Ready before it finished draining) simply takes work again."""
        known = self._by_name.get(name)
        if known is not None:
            if not known.draining or known.role != role:
                raise ValueError(f"a {known.role} replica named {name!r} already exists")
            known.draining = False
            self._on_ready(known)
            return
        # Built here rather than by Simulator._add: the name must be known before the replica is ready,
        # since becoming ready dispatches work to it at once and the listener hears it by name.
        gpus = self._gpus_for(role)
        instance_id = next(self._ids)
        instance: Instance
        if role == "prefill":
            instance = PrefillInstance(instance_id, gpus, self.now_s, self.now_s)
        else:
            instance = DecodeInstance(instance_id, "decode", gpus, self.now_s, self.now_s, self.profile)
        self._by_name[name] = instance
        self._names[instance_id] = name
        self.pools[role].append(instance)
        self.gpus_in_use += gpus
        self._on_ready(instance)

    def drain_instance(self, name: str) -> None:
        """Take exactly this replica out: no new work; released once it has finished what it holds."""
        instance = self._by_name.get(name)
        if instance is None:
            raise KeyError(f"no replica named {name!r}")
        if instance.draining:
            raise ValueError(f"replica {name!r} is already draining")
        self._drain_instance(instance)
        self._report_removals()

    def append_requests(
        self,
        arrival_s: Sequence[float],
        input_tokens: Sequence[int],
        output_tokens: Sequence[int],
    ) -> None:
        """More requests, arriving in order at or after the last known arrival."""
        count = len(arrival_s)
        if len(input_tokens) != count or len(output_tokens) != count:
            raise ValueError("arrival_s, input_tokens and output_tokens differ in length")
        if count == 0:
            return
        last = self.arrival_s[-1] if self.arrival_s else -math.inf
        if arrival_s[0] < last or any(b < a for a, b in itertools.pairwise(arrival_s)):
            raise ValueError("appended arrivals must be sorted and not before the last known arrival")
        if arrival_s[0] < self.now_s:
            raise ValueError(
                f"appended arrivals start at {arrival_s[0]} s, before the clock ({self.now_s} s)"
            )
        self.arrival_s.extend(float(a) for a in arrival_s)
        self.input_tokens.extend(int(t) for t in input_tokens)  # the prefill queue shares this list
        self.output_tokens.extend(int(t) for t in output_tokens)
        self.log.grow(count)
        self.prefill_queue.grow(count)

    def advance_to(self, time_s: float) -> None:
        """Process every arrival and engine event up to `time_s` (in run()'s order), then set the clock."""
        if not math.isfinite(time_s) or time_s < self.now_s:
            raise ValueError(f"cannot advance from {self.now_s} s to {time_s} s")
        arrivals, events = self.arrival_s, self._events
        while True:
            index = self.arrivals_processed
            next_arrival = arrivals[index] if index < len(arrivals) else math.inf
            next_event = events[0][0] if events else math.inf
            if next_arrival <= next_event:  # run()'s tie rule: an arrival goes before an event at its time
                if next_arrival > time_s:
                    break
                self.now_s = next_arrival
                self.arrivals_processed = index + 1
                self._on_arrival(index)
            else:
                if next_event > time_s:
                    break
                self._handle_engine_event(heapq.heappop(events))
        self.now_s = time_s
        for instance in self.pools["decode"]:
            assert isinstance(instance, DecodeInstance)
            if instance.batch_size:
                self._report_steps(instance, instance.segment_step + instance.steps_done_by(time_s))

    # -------------------------------------------------------------------- hooks around the engine

    def _name(self, instance: Instance) -> str:
        return self._names[instance.instance_id]

    def _report_steps(self, instance: DecodeInstance, up_to_step: int) -> None:
        """Report the steps of the current segment from the last reported one up to `up_to_step`."""
        reported = max(self._steps_reported.get(instance.instance_id, 0), instance.segment_step)
        first, last = reported - instance.segment_step, up_to_step - instance.segment_step
        if last <= first:
            return
        self._steps_reported[instance.instance_id] = up_to_step
        batch = instance.batch_size
        if batch == 0 or self.listener is None:
            return
        # Step j of a segment takes a + c*B + b*(S0 + j*B): the context grows by B tokens a step.
        base = instance.a_s + instance.c_s * batch + instance.b_s * instance.context_sum
        steps = base + instance.b_s * batch * np.arange(first, last, dtype=np.float64)
        self.listener.decode_steps(self._name(instance), steps, batch)

    def _on_arrival(self, request: int) -> None:
        if self.listener is None:
            super()._on_arrival(request)
            return
        # Heard before the engine sees it, so a batch it starts finds the request already known.
        refused = self._kv_tokens(request) > self.profile.kv_capacity_tokens  # Simulator's rejection rule
        if refused:
            self.listener.rejected(request, self.now_s)
        else:
            self.listener.arrived(request, self.now_s)
        super()._on_arrival(request)
        assert self.log.rejected[request] == refused, "the rejection rule drifted from Simulator._on_arrival"

    def _dispatch_prefill(self) -> None:
        before = [(i, i.version) for i in self.pools["prefill"] if isinstance(i, PrefillInstance)]
        super()._dispatch_prefill()
        if self.listener is None:
            return
        for instance, version in before:
            if instance.version != version:
                self.listener.prefill_started(self._name(instance), list(instance.batch), self.now_s)

    def _on_prefill_done(self, instance: PrefillInstance, version: int) -> None:
        if version != instance.version or self.listener is None:
            super()._on_prefill_done(instance, version)
            self._report_removals()
            return
        name, batch, finished = self._name(instance), list(instance.batch), len(self.log.finish_output_index)
        for request in batch:
            self.listener.first_token(name, request, self.now_s)
        super()._on_prefill_done(instance, version)
        for request in self.log.finish_output_index[finished:]:  # one-token outputs end at prefill
            self.listener.finished(name, request, self.now_s)
        self._report_removals()

    def _route_decode(self, request: int) -> None:
        if self.listener is not None:
            self.listener.kv_arrived(request, self.now_s)
        super()._route_decode(request)

    def _join(self, instance: DecodeInstance, request: int, kv: int, context: int, steps: int) -> None:
        super()._join(instance, request, kv, context, steps)
        self._admitted.setdefault(instance.instance_id, []).append(request)
        if self.listener is not None:
            self.listener.decode_admitted(self._name(instance), request, self.now_s)

    def _log_decode_steps(self, start_s: float, end_s: float, batch: int, steps: int) -> None:
        """Not logged: the listener observes every step as it runs (`_report_steps`), and the simulator's
        observer, the only reader of the log's stretches, does not run here. Logged, they grew the
        emulator's memory by four entries a decode boundary for as long as it ran."""

    def _on_decode_boundary(self, instance: DecodeInstance, version: int, step: int) -> None:
        if version != instance.version:
            return  # superseded (as in Simulator)
        self._report_steps(instance, step)  # the steps up to this boundary ran with the old batch
        name, finished = self._name(instance), len(self.log.finish_output_index)
        super()._on_decode_boundary(instance, version, step)
        # Everything admitted before or at this boundary joined the batch here (two join_pending calls).
        joined = self._admitted.pop(instance.instance_id, [])
        if self.listener is not None:
            for request in joined:
                self.listener.decode_joined(name, request, self.now_s)
            for request in self.log.finish_output_index[finished:]:
                self.listener.finished(name, request, self.now_s)
        self._report_removals()

    def _remove(self, instance: Instance) -> None:
        """Released replicas are reported after the events of the hook that released them."""
        super()._remove(instance)
        name = self._names.pop(instance.instance_id)
        del self._by_name[name]
        self._steps_reported.pop(instance.instance_id, None)
        self._removals.append(name)

    def _report_removals(self) -> None:
        removals, self._removals = self._removals, []
        if self.listener is not None:
            for name in removals:
                self.listener.removed(name, self.now_s)
