"""Which waiting sequence joins a decode batch next (`dopd_worker.join_order`), the one policy the decode
worker and the simulator share: timely sequences first, the newest of them first, then the late ones,
oldest first; nothing dropped; first come, first served without a TPOT SLO; a sequence on its way into the
batch is in flight all the way; its first token leaves when its KV is admitted, so a wait for a slot is
the gap after it (TPOT), as the simulator scores it."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_worker.engine import DecodeEngine, DecodeSequence
from dopd_worker.join_order import JOIN_SLACK_SHARE, JoinQueue, join_deadline_s
from dopd_worker.metrics import create_metrics
from dopd_worker.runtime import WorkerOptions, load
from dopd_worker.sampling import SamplingParams


def test_the_deadline_leaves_a_share_of_the_tpot_budget() -> None:
    # 201 tokens at 50 ms: a 10 s budget for 200 gaps, of which the wait for a slot may take half
    assert join_deadline_s(100.0, 201, 0.05) == pytest.approx(100.0 + JOIN_SLACK_SHARE * 10.0)
    assert join_deadline_s(100.0, 1, 0.05) == 100.0  # one token: no gap to spend
    assert join_deadline_s(100.0, 201, None) == math.inf  # no SLO: never late


def test_timely_sequences_join_newest_first_before_late_ones_and_late_ones_oldest_first() -> None:
    queue: JoinQueue[str] = JoinQueue()
    queue.append("late-a", 1.0)
    queue.append("timely-b", 10.0)
    queue.append("late-c", 2.0)
    queue.append("timely-d", 10.0)
    queue.append("late-e", 3.0)  # the newest, but late: it waits behind the timely ones
    assert queue.peek(5.0) == "timely-d"
    assert [queue.pop(5.0) for _ in range(len(queue))] == [
        "timely-d",
        "timely-b",
        "late-a",
        "late-c",
        "late-e",
    ]
    assert not queue


def test_under_a_flood_the_sequences_that_join_keep_their_slack() -> None:
    """A flood: a sequence a second, each timely for 5 s after it arrives (half of a 10 s TPOT budget);
    a slot frees every 1.25 s (the pool turns over 80% of the arrivals), for 200 s. Served oldest timely
    first, the queue grows by 0.2 s a second and from the 17th join on each sequence reaches the batch
    with its wait near 5 s, too little of its budget left for steps at about half the SLO: a miss, one
    after another. Served newest first, each joins within a slot's time, and the late ones are only
    those the pool had no room for."""
    queue: JoinQueue[float] = JoinQueue()
    waits_s: list[float] = []
    next_arrival_s, next_slot_s = 0.0, 1.25
    while next_slot_s < 200.0:
        if next_arrival_s <= next_slot_s:
            queue.append(next_arrival_s, next_arrival_s + 5.0)
            next_arrival_s += 1.0
            continue
        if queue:
            waits_s.append(next_slot_s - queue.pop(next_slot_s))
        next_slot_s += 1.25
    assert len(waits_s) == 159  # the pool's turnover, whatever the order
    assert max(waits_s) < 1.25  # each joined with its slack intact
    assert len(queue) == next_arrival_s - 159 == 40  # the excess waits, late, and is not dropped


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(0.0, 50.0), st.floats(0.0, 5.0)),
        min_size=1,
        max_size=60,
    )
)
def test_the_queue_loses_nothing_and_always_gives_the_newest_timely_else_the_oldest(
    ops: list[tuple[bool, float, float]],
) -> None:
    """Random appends (a deadline each) and pops at a clock that only moves forward."""
    queue: JoinQueue[int] = JoinQueue()
    model: list[tuple[int, float]] = []  # arrival order: (item, deadline)
    now, next_item = 0.0, 0
    for is_append, deadline_offset, advance in ops:
        now += advance
        if is_append or not model:
            queue.append(next_item, now + deadline_offset)
            model.append((next_item, now + deadline_offset))
            next_item += 1
            continue
        timely = [entry for entry in model if entry[1] >= now]
        expected = timely[-1] if timely else model[0]
        assert queue.peek(now) == expected[0]
        assert queue.pop(now) == expected[0]
        model.remove(expected)
        assert len(queue) == len(model)
    assert sorted(queue) == sorted(item for item, _ in model)


def test_without_an_slo_the_order_is_first_come_first_served() -> None:
    queue: JoinQueue[int] = JoinQueue()
    for item in range(10):
        queue.append(item, join_deadline_s(float(item), 50, None))
    assert [queue.pop(1e9) for _ in range(10)] == list(range(10))


def _decode_engine(tpot_slo_seconds: float | None) -> DecodeEngine:
    options = WorkerOptions(role="decode", model="tiny", device="cpu", kv_cache_tokens=4096)
    loaded = load(options)
    metrics = create_metrics("decode", "tiny")
    return DecodeEngine(loaded.model, loaded.cache, 1, metrics, tpot_slo_seconds)


def _admit(engine: DecodeEngine, request_id: str, events: list[tuple[str, int | None]]) -> None:
    prompt = 8
    sampling = SamplingParams(max_tokens=3, ignore_eos=True)
    engine.cache.allocator.allocate(request_id, prompt + sampling.max_tokens)
    staged = [torch.zeros(engine.cache.layer_shape(prompt)) for _ in range(len(engine.cache.k))]

    def emit(token: int | None, reason: str | None) -> None:
        events.append((request_id, token))

    engine.admit(DecodeSequence(request_id, prompt, 5, sampling, staged, emit))


@pytest.mark.parametrize(("slo", "first"), [(0.01, "b-timely"), (None, "a-waited")])
def test_the_decode_worker_lets_a_timely_sequence_join_before_one_past_its_slack(
    slo: float | None, first: str
) -> None:
    """A batch of one: `a` (3 tokens, TPOT SLO 10 ms: 10 ms of slack for its wait) waits 50 ms before `b`
    arrives; the batch takes `b` first, and `a` joins after it. Without an SLO, `a` goes first. Both
    finish either way."""
    engine = _decode_engine(slo)
    events: list[tuple[str, int | None]] = []
    _admit(engine, "a-waited", events)
    time.sleep(0.05)
    _admit(engine, "b-timely", events)
    for _ in range(20):
        if not engine.has_work():
            break
        engine.step()
    # the prefill's token leaves with the KV, before any wait for the slot: both at once, in arrival order
    assert events[:2] == [("a-waited", 5), ("b-timely", 5)]
    assert events[2][0] == first  # the one that joined first decodes first
    for request_id in ("a-waited", "b-timely"):
        assert [token for rid, token in events if rid == request_id][-1] is None  # it finished
        assert len([token for rid, token in events if rid == request_id]) == 4  # 3 tokens, then the end


def test_a_sequence_joining_the_batch_is_in_flight_while_its_kv_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine thread takes a sequence off the join queue, writes its received KV into its blocks,
    then puts it in the batch. A drain polls `in_flight()` from another thread: it must not read 0 in
    between, or the worker exits under a request it has not finished."""
    engine = _decode_engine(None)
    events: list[tuple[str, int | None]] = []
    seen_while_writing: list[int] = []
    write_layer = engine.cache.write_layer

    def watched(layer: int, table: list[int], kv: torch.Tensor) -> None:
        seen_while_writing.append(engine.in_flight())
        write_layer(layer, table, kv)

    monkeypatch.setattr(engine.cache, "write_layer", watched)
    _admit(engine, "only", events)
    assert engine.in_flight() == 1  # queued
    engine.step()
    assert seen_while_writing and set(seen_while_writing) == {1}
    assert engine.in_flight() == 1  # in the batch
    while engine.has_work():
        engine.step()
    assert engine.in_flight() == 0 and events[-1] == ("only", None)


def test_the_first_token_leaves_with_the_kv_and_a_wait_for_a_slot_is_the_gap_after_it() -> None:
    """A batch of one, busy with `a`: `b`'s first token (the prefill's) goes out the moment its KV is
    admitted, and `b` waits for the slot after it. The wait is then in `b`'s first inter-token gap (its
    TPOT, as the simulator scores it and as the join order budgets it), not in its time to first token,
    where the operator read a full decode pool as a slow prefill pool."""
    engine = _decode_engine(None)
    events: list[tuple[str, int | None]] = []
    _admit(engine, "a", events)
    engine.step()  # `a` joins the batch of one and decodes its second token
    _admit(engine, "b", events)
    assert events[-1] == ("b", 5)  # out at once, though the batch is full
    assert engine.in_flight() == 2 and [s.request_id for s in engine.active] == ["a"]
    time.sleep(0.05)  # `b` waits for the slot
    while engine.has_work():
        engine.step()
    b = [token for rid, token in events if rid == "b"]
    assert len(b) == 4 and b[-1] is None  # 3 tokens, then the end
    itl = engine.metrics.inter_token_latency_seconds.labels(role="decode", model="tiny")
    gaps = {s.name: s.value for s in itl.collect()[0].samples}
    assert gaps["dopd_inter_token_latency_seconds_count"] == 4  # two gaps each
    assert gaps["dopd_inter_token_latency_seconds_sum"] >= 0.05  # `b`'s first gap holds its wait
    # and the wait is counted apart, once per sequence joining: the router's gaps less it are the
    # decode steps the operator's decode correction learns the engine's speed from
    slot = engine.metrics.decode_slot_wait_seconds.labels(role="decode", model="tiny")
    waits = {(s.name, s.labels.get("le")): s.value for s in slot.collect()[0].samples}
    assert waits[("dopd_decode_slot_wait_seconds_count", None)] == 2
    assert waits[("dopd_decode_slot_wait_seconds_bucket", "0.025")] == 1  # `a` found its slot free
    waited_s = waits[("dopd_decode_slot_wait_seconds_sum", None)]
    assert waited_s >= 0.05  # `b` waited
    assert waited_s < gaps["dopd_inter_token_latency_seconds_sum"]  # within its gap, a step after it


def test_a_first_token_that_ends_the_sequence_finishes_it_without_a_slot() -> None:
    engine = _decode_engine(None)
    events: list[tuple[str, int | None]] = []
    sampling = SamplingParams(max_tokens=1, ignore_eos=True)
    engine.cache.allocator.allocate("one", 8 + 1)
    staged = [torch.zeros(engine.cache.layer_shape(8)) for _ in range(len(engine.cache.k))]
    engine.admit(
        DecodeSequence("one", 8, 5, sampling, staged, lambda token, reason: events.append(("one", token)))
    )
    assert events == [("one", 5), ("one", None)]  # its token, then the end: nothing joins
    assert engine.in_flight() == 0 and not engine.has_work()
    assert engine.cache.allocator.usage() == 0.0  # its blocks went back


def test_the_waiting_gauge_counts_sequences_waiting_for_a_slot_not_transfers_in_flight() -> None:
    """The planner reads `dopd_requests_waiting` on decode as the sequences waiting for a decode slot
    (`Observation.decode_queue_depth`), as the simulator counts them: those whose KV has arrived. A
    transfer still in flight has its blocks and no wait for a slot; it is counted apart, and a drain
    still waits for it."""
    engine = _decode_engine(None)
    events: list[tuple[str, int | None]] = []
    _admit(engine, "a", events)
    engine.step()  # `a` takes the batch of one
    _admit(engine, "b", events)  # `b` waits for the slot
    engine.pending_transfers += 2  # two receives under way (as the decode server counts them)
    engine.gauges()
    waiting = engine.metrics.requests_waiting.labels(role="decode", model="tiny")
    assert waiting.collect()[0].samples[0].value == 1
    assert engine.in_flight() == 4  # a drain waits for all of them


def test_the_generated_tokens_gauge_counts_how_far_the_running_sequences_are_into_their_answers() -> None:
    """`dopd_decode_generated_tokens`: the tokens the sequences in the batch have generated, the
    prefill's first included, summed after each step; a sequence waiting for a slot is not in it. The
    planner divides it by `dopd_requests_running` to read longer answers seated before they finish
    (`planner_lengths.seated_output_lengths`)."""
    engine = _decode_engine(None)
    events: list[tuple[str, int | None]] = []
    generated = engine.metrics.decode_generated_tokens.labels(role="decode", model="tiny")
    _admit(engine, "a", events)
    engine.step()  # `a` joins the batch of one with its first token and decodes its second
    _admit(engine, "b", events)  # `b` waits for the slot: nothing generated in the batch
    assert generated.collect()[0].samples[0].value == 2
    engine.step()  # `a`'s third and last token: it leaves, and `b` joins at the next step
    assert generated.collect()[0].samples[0].value == 0
    engine.step()  # `b` joins and decodes its second token
    assert generated.collect()[0].samples[0].value == 2
    while engine.has_work():
        engine.step()
    assert generated.collect()[0].samples[0].value == 0
