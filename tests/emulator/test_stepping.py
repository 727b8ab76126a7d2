"""The simulator's stepping API (dopd_sim.stepping): the engine emulator's clock, replicas and load."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from sim_helpers import make_trace, toy_config, toy_profile

from dopd_sim.cluster import Simulator
from dopd_sim.config import SimConfig
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.stepping import FloatArray, SteppedSimulator
from dopd_sim.workload import load_workload


@dataclass
class Heard:
    """Every event a SteppedSimulator reports, in order."""

    events: list[tuple[str, str, int, float]] = field(default_factory=list)
    tokens: float = 0.0
    step_seconds: float = 0.0

    def arrived(self, request: int, now_s: float) -> None:
        self.events.append(("arrived", "", request, now_s))

    def rejected(self, request: int, now_s: float) -> None:
        self.events.append(("rejected", "", request, now_s))

    def prefill_started(self, instance: str, requests: Sequence[int], now_s: float) -> None:
        for request in requests:
            self.events.append(("prefill_started", instance, request, now_s))

    def first_token(self, instance: str, request: int, now_s: float) -> None:
        self.events.append(("first_token", instance, request, now_s))

    def kv_arrived(self, request: int, now_s: float) -> None:
        self.events.append(("kv_arrived", "", request, now_s))

    def decode_admitted(self, instance: str, request: int, now_s: float) -> None:
        self.events.append(("decode_admitted", instance, request, now_s))

    def decode_joined(self, instance: str, request: int, now_s: float) -> None:
        self.events.append(("decode_joined", instance, request, now_s))

    def decode_steps(self, instance: str, step_seconds: FloatArray, sequences: int) -> None:
        self.tokens += len(step_seconds) * sequences
        self.step_seconds += float(step_seconds.sum()) * sequences

    def finished(self, instance: str, request: int, now_s: float) -> None:
        self.events.append(("finished", instance, request, now_s))

    def removed(self, instance: str, now_s: float) -> None:
        self.events.append(("removed", instance, -1, now_s))

    def of(self, kind: str) -> list[tuple[str, int, float]]:
        return [(where, request, at) for k, where, request, at in self.events if k == kind]


@pytest.mark.parametrize("queue", ["fifo", "length-aware"])
def test_stepping_with_a_static_layout_reproduces_run_request_for_request(queue: str) -> None:
    trace = load_workload("synthetic:poisson,rate_rps=30,duration_s=200", seed=5)
    config = SimConfig(prefill_queue="fifo" if queue == "fifo" else "length-aware")
    reference = Simulator(trace, StaticPolicy(2, 2), config)
    reference.run()

    stepped = SteppedSimulator(trace, config)
    stepped.listener = Heard()  # listening must not change what happens
    for name, role in (("p0", "prefill"), ("p1", "prefill"), ("d0", "decode"), ("d1", "decode")):
        stepped.add_ready_instance(role, name)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    time_s = 0.0
    while time_s < reference.end_s + 1.0:  # uneven steps, as a wall clock gives them
        time_s += float(rng.uniform(0.005, 0.4))
        stepped.advance_to(time_s)

    assert reference.log.completed == len(trace) == stepped.log.completed
    np.testing.assert_array_equal(np.asarray(stepped.log.ttft_s), np.asarray(reference.log.ttft_s))
    np.testing.assert_array_equal(np.asarray(stepped.log.tpot_s), np.asarray(reference.log.tpot_s))
    # The listener hears every step; the log keeps no stretches of them, which only the simulator's
    # observer reads (kept, they grew a long-running emulator's memory with every decode boundary).
    assert reference.log.steps_end_s and not stepped.log.steps_end_s


def test_decode_steps_are_reported_once_each_however_the_clock_is_stepped() -> None:
    # Decode steps of 10 ms (a = 0.01 s, nothing per token or sequence): outputs of 101, 51 and 11
    # tokens need 100 + 50 + 10 decode steps after the prefill's token.
    trace = make_trace([0.0, 0.05, 0.3], [10, 10, 10], [101, 51, 11])
    config = toy_config(toy_profile(prefill_a=0.1, decode_a=0.01))
    for steps in ([5.0], [0.013 * i for i in range(1, 385)]):
        sim = SteppedSimulator(trace, config)
        heard = sim.listener = Heard()
        sim.add_ready_instance("prefill", "p0")
        sim.add_ready_instance("decode", "d0")
        for time_s in steps:
            sim.advance_to(time_s)
        sim.advance_to(5.0)
        assert heard.tokens == 160  # counted twice (boundary + clock step) would give more
        assert heard.step_seconds == pytest.approx(1.6)
        assert [r for _, r, _ in heard.of("decode_joined")] == [0, 1, 2]
        assert sorted(r for _, r, _ in heard.of("finished")) == [0, 1, 2]


def drain_scenario(drain_at_s: float | None) -> tuple[SteppedSimulator, Heard]:
    """Four prompts at t=0 and two at t=2 s over p0 and d0/d1 (100 decode steps of 10 ms each);
    d0 drains at `drain_at_s` (never with None)."""
    trace = make_trace([0.0, 0.0, 0.0, 0.0, 2.0, 2.0], [10] * 6, [101] * 6)
    sim = SteppedSimulator(trace, toy_config(toy_profile(prefill_a=0.1, decode_a=0.01)))
    heard = sim.listener = Heard()
    sim.add_ready_instance("prefill", "p0")
    sim.add_ready_instance("decode", "d0")
    sim.add_ready_instance("decode", "d1")
    if drain_at_s is not None:
        sim.advance_to(drain_at_s)
        sim.drain_instance("d0")
        assert sim.instances()["d0"].draining  # still there: it holds sequences
    sim.advance_to(5.0)
    return sim, heard


def test_draining_a_named_replica_finishes_what_it_holds_and_takes_nothing_new() -> None:
    kept, kept_heard = drain_scenario(None)
    drained, heard = drain_scenario(0.5)
    # The first four alternate over d0/d1 by least KV reserved, drain or not.
    admitted = {r: where for where, r, _ in heard.of("decode_admitted")}
    assert {r: admitted[r] for r in range(4)} == {0: "d0", 1: "d1", 2: "d0", 3: "d1"}
    # d0's sequences finish exactly when they would have without the drain (dropped ones would be NaN)...
    assert [drained.log.finish_s[r] for r in (0, 2)] == [kept.log.finish_s[r] for r in (0, 2)]
    assert not any(math.isnan(drained.log.finish_s[r]) for r in (0, 2))
    # ...then d0 is released, right after its last completion.
    d0_events = [(k, r) for k, where, r, _ in heard.events if where == "d0"]
    assert d0_events[-3:] == [("finished", 0), ("finished", 2), ("removed", -1)]
    assert heard.of("removed") == [("d0", -1, max(drained.log.finish_s[r] for r in (0, 2)))]
    assert "d0" not in drained.instances()
    # The requests of t=2 s go to d1 only; without the drain the first of them went to the idle d0.
    assert {r: admitted[r] for r in (4, 5)} == {4: "d1", 5: "d1"}
    assert {r: w for w, r, _ in kept_heard.of("decode_admitted") if r >= 4} == {4: "d0", 5: "d1"}
    assert drained.log.completed == 6


def test_a_drained_replica_whose_pod_is_ready_again_takes_work_again() -> None:
    trace = make_trace([0.0, 3.0], [10, 10], [101, 101])
    sim = SteppedSimulator(trace, toy_config(toy_profile(prefill_a=0.1, decode_a=0.01)))
    heard = sim.listener = Heard()
    sim.add_ready_instance("prefill", "p0")
    sim.add_ready_instance("decode", "d0")
    sim.add_ready_instance("decode", "d1")
    sim.advance_to(0.5)
    busy = heard.of("decode_admitted")[0][0]
    sim.drain_instance(busy)
    sim.advance_to(0.6)
    sim.add_ready_instance("decode", busy)  # Ready again before its drain finished
    assert not sim.instances()[busy].draining
    sim.advance_to(5.0)
    assert heard.of("removed") == []
    with pytest.raises(ValueError, match="already exists"):
        sim.add_ready_instance("prefill", busy)
    with pytest.raises(KeyError, match="no replica named 'gone'"):
        sim.drain_instance("gone")


def test_appended_requests_extend_every_per_request_column() -> None:
    trace = make_trace([0.0, 1.0], [10, 10], [5, 5])
    sim = SteppedSimulator(trace, toy_config(toy_profile(), prefill_queue="length-aware"))
    before = {name: len(v) for name, v in vars(sim.log).items() if isinstance(v, list) and len(v) == 2}
    assert {"first_token_s", "finish_s", "ttft_s", "tpot_s", "rejected"} <= set(before)
    sim.append_requests([2.0, 2.5, 3.0], [20, 10, 30], [5, 5, 5])
    # A per-request column RequestLog gains later must be extended too, or appended requests break it.
    assert {name: len(getattr(sim.log, name)) for name in before} == dict.fromkeys(before, 5)
    sim.add_ready_instance("prefill", "p0")
    sim.add_ready_instance("decode", "d0")
    sim.advance_to(10.0)
    assert sim.log.completed == 5
    assert not any(math.isnan(t) for t in sim.log.ttft_s)
    with pytest.raises(ValueError, match="sorted"):
        sim.append_requests([1.0], [10], [5])
