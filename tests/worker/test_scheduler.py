"""The router's prefill policy in virtual time: SJF, the aging bound, the long-prompt lane, the dispatch
deadline, FIFO."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_worker.scheduler import (
    Assignment,
    Lane,
    Policy,
    PrefillQueue,
    PrefillWorkerLoad,
    QueuedPrompt,
    SchedulerConfig,
)

IDLE = PrefillWorkerLoad("p0", Lane.SHARED, 0, 0)


def queue(
    policy: Policy = Policy.LENGTH_AWARE,
    aging: float = 10.0,
    long_tokens: int = 1000,
    budget: int = 4096,
    late: float | None = None,
) -> PrefillQueue:
    return PrefillQueue(SchedulerConfig(policy, aging, long_tokens, budget, late))


def test_shortest_prompt_first() -> None:
    q = queue()
    q.push(QueuedPrompt("long", 3000, 0.0))
    q.push(QueuedPrompt("mid", 200, 0.1))
    q.push(QueuedPrompt("short", 10, 0.2))
    assert [p.request_id for p in q.ordered(1.0)] == ["short", "mid", "long"]
    # FIFO would serve "long" first.
    assert q.next_assignment(1.0, [IDLE]) == Assignment("short", "p0")


def test_fifo_serves_in_arrival_order_with_head_of_line_blocking() -> None:
    q = queue(Policy.FIFO, budget=100)
    q.push(QueuedPrompt("long", 3000, 0.0))
    q.push(QueuedPrompt("short", 10, 0.1))
    busy = PrefillWorkerLoad("p0", Lane.SHARED, 50, 0)
    # "long" does not fit next to 50 in-flight tokens; "short" would, but FIFO does not let it overtake.
    assert q.next_assignment(1.0, [busy]) is None
    assert q.next_assignment(1.0, [IDLE]) == Assignment("long", "p0")


def test_aged_prompt_jumps_ahead_of_younger_short_ones() -> None:
    q = queue(aging=5.0)
    q.push(QueuedPrompt("long", 3000, 0.0))
    q.push(QueuedPrompt("short", 10, 4.0))
    assert q.next_assignment(4.9, [IDLE]) == Assignment("short", "p0")  # not aged yet: SJF
    q.push(QueuedPrompt("short2", 10, 4.95))
    assert q.next_assignment(5.0, [IDLE]) == Assignment("long", "p0")  # aged: oldest first


def test_aged_prompt_reserves_its_worker_so_a_stream_of_short_prompts_cannot_starve_it() -> None:
    q = queue(aging=5.0, budget=4096)
    q.push(QueuedPrompt("long", 3000, 0.0))
    # The worker is busy with 2000 tokens: "long" does not fit, a short one would.
    busy = PrefillWorkerLoad("p0", Lane.SHARED, 2000, 0)
    q.push(QueuedPrompt("s1", 10, 1.0))
    assert q.next_assignment(2.0, [busy]) == Assignment("s1", "p0")  # before aging: short overtakes
    q.push(QueuedPrompt("s2", 10, 6.0))
    # After aging the long prompt holds the worker: without the reservation s2 would go (and so on forever).
    assert q.next_assignment(6.0, [busy]) is None
    assert q.next_assignment(6.5, [IDLE]) == Assignment("long", "p0")


def test_virtual_time_simulation_no_long_prompt_waits_past_aging_plus_one_service() -> None:
    # One worker, one prompt at a time; shorts arrive every 0.3 s and take 0.4 s (overload), longs take 2 s.
    aging, short_s, long_s = 3.0, 0.4, 2.0
    q = queue(aging=aging, budget=1)  # budget 1: one prompt in flight at a time
    arrivals = [(round(t * 0.3, 10), f"s{t}", 10) for t in range(60)] + [(0.2, "L1", 3000), (7.1, "L2", 3000)]
    arrivals.sort()
    now, busy_until, waits = 0.0, 0.0, {}
    pending = list(arrivals)
    lengths = {rid: n for _, rid, n in arrivals}
    arrived_at = {rid: t for t, rid, _ in arrivals}
    while pending or len(q):
        while pending and pending[0][0] <= now:
            t, rid, n = pending.pop(0)
            q.push(QueuedPrompt(rid, n, t))
        if now >= busy_until:
            a = q.next_assignment(now, [IDLE])
            if a is not None:
                waits[a.request_id] = now - arrived_at[a.request_id]
                busy_until = now + (long_s if lengths[a.request_id] > 1000 else short_s)
        now = round(now + 0.05, 10)
    # Without aging the shorts (always queued, always winning SJF) would hold the longs back until the
    # short stream ends; with it each long waits at most aging + one service time in front of it.
    assert waits["L1"] <= aging + long_s
    assert waits["L2"] <= aging + long_s
    assert waits["L1"] >= aging - 0.5  # and SJF really did put the shorts first until then


def test_long_prompts_keep_one_shared_worker_free_without_a_long_lane() -> None:
    q = queue(long_tokens=1000)
    workers = [PrefillWorkerLoad("p0", Lane.SHARED, 3000, 1), PrefillWorkerLoad("p1", Lane.SHARED, 0, 0)]
    q.push(QueuedPrompt("long", 1500, 0.0))
    assert q.next_assignment(0.5, workers) is None  # p1 stays free for short prompts
    q.push(QueuedPrompt("short", 10, 0.1))
    assert q.next_assignment(0.5, workers) == Assignment("short", "p1")


def test_dedicated_long_lane() -> None:
    q = queue(long_tokens=1000)
    workers = [PrefillWorkerLoad("shared", Lane.SHARED, 0, 0), PrefillWorkerLoad("long", Lane.LONG, 0, 0)]
    q.push(QueuedPrompt("L", 1500, 0.0))
    q.push(QueuedPrompt("S", 10, 0.0))
    assert q.next_assignment(0.0, workers) == Assignment("S", "shared")
    assert q.next_assignment(0.0, workers) == Assignment("L", "long")


@pytest.mark.parametrize(
    ("inflight", "prompt", "fits"),
    [
        pytest.param(0, 9000, True, id="an-idle-worker-takes-even-an-over-budget-prompt"),
        pytest.param(4000, 96, True, id="exactly-the-budget"),
        pytest.param(4000, 97, False, id="one-token-over-the-budget"),
    ],
)
def test_token_budget(inflight: int, prompt: int, fits: bool) -> None:
    q = queue(budget=4096, long_tokens=100000)
    q.push(QueuedPrompt("r", prompt, 0.0))
    got = q.next_assignment(0.0, [PrefillWorkerLoad("p0", Lane.SHARED, inflight, 0)])
    assert (got is not None) is fits


def test_a_late_prompt_goes_after_every_prompt_that_can_still_meet_the_slo() -> None:
    q = queue(aging=5.0, late=1.0)
    q.push(QueuedPrompt("old", 10, 0.0))
    q.push(QueuedPrompt("fresh-long", 900, 1.2))
    q.push(QueuedPrompt("fresh-short", 10, 1.4))
    # At 0.9 s "old" is the shortest prompt and has not missed its deadline: served first, as before.
    assert q.ordered(0.9)[0].request_id == "old"
    # At 1.5 s it waited past the 1 s deadline: the fresh prompts go first, shortest first, then "old".
    assert [p.request_id for p in q.ordered(1.5)] == ["fresh-short", "fresh-long", "old"]
    assert q.next_assignment(1.5, [IDLE]) == Assignment("fresh-short", "p0")
    assert q.next_assignment(1.5, [IDLE]) == Assignment("fresh-long", "p0")
    # Nothing timely is waiting: the late prompt is served, not dropped.
    assert q.next_assignment(1.5, [IDLE]) == Assignment("old", "p0")
    assert len(q) == 0


def test_late_prompts_are_served_oldest_first_and_fifo_has_no_deadline() -> None:
    q = queue(aging=5.0, late=1.0)
    for name, tokens, arrival in (("a", 500, 0.0), ("b", 10, 0.5), ("c", 200, 0.2)):
        q.push(QueuedPrompt(name, tokens, arrival))
    assert [p.request_id for p in q.ordered(3.0)] == ["a", "c", "b"]
    fifo = queue(Policy.FIFO, late=1.0)
    fifo.push(QueuedPrompt("old", 10, 0.0))
    fifo.push(QueuedPrompt("new", 10, 2.0))
    assert fifo.next_assignment(2.0, [IDLE]) == Assignment("old", "p0")


def _overload(late: float | None) -> tuple[dict[str, float], int]:
    """One worker, one prompt at a time taking 0.4 s, a prompt every 0.2 s for 20 s (2x overload), then
    the queue drains: each prompt's wait for dispatch, and how many were served."""
    q = queue(aging=5.0, budget=1, late=late)
    arrivals = [(round(i * 0.2, 10), f"r{i}") for i in range(100)]
    now, waits, pending = 0.0, {}, list(arrivals)
    arrived_at = dict((rid, t) for t, rid in arrivals)
    while pending or len(q):
        while pending and pending[0][0] <= now + 1e-9:
            t, rid = pending.pop(0)
            q.push(QueuedPrompt(rid, 10, t))
        got = q.next_assignment(now, [IDLE])
        if got is None:
            now = pending[0][0]
            continue
        waits[got.request_id] = now - arrived_at[got.request_id]
        now += 0.4
    return waits, len(waits)


def test_under_overload_the_deadline_serves_on_time_what_the_pool_can_and_loses_nothing() -> None:
    """In arrival order (no deadline) a 2x overload makes every prompt after the first seconds late; with
    the deadline the pool serves about its capacity on time (half the prompts) and the late ones after."""
    deadline_s = 1.0
    without, served_without = _overload(None)
    with_deadline, served_with = _overload(deadline_s)
    assert served_without == served_with == 100  # every prompt is served either way
    on_time_without = sum(w <= deadline_s for w in without.values())
    on_time_with = sum(w <= deadline_s for w in with_deadline.values())
    assert on_time_without <= 10
    assert on_time_with >= 45


def test_no_workers_no_assignment_and_bad_config_rejected() -> None:
    q = queue()
    q.push(QueuedPrompt("r", 5, 0.0))
    assert q.next_assignment(0.0, []) is None
    assert len(q) == 1
    with pytest.raises(ValueError, match="positive"):
        SchedulerConfig(aging_seconds=0)
    with pytest.raises(ValueError, match="late_seconds"):
        SchedulerConfig(late_seconds=0.0)


def test_aged_long_prompt_may_take_the_worker_kept_free_for_short_ones() -> None:
    q = queue(long_tokens=1000, aging=2.0)
    workers = [PrefillWorkerLoad("p0", Lane.SHARED, 3000, 1), PrefillWorkerLoad("p1", Lane.SHARED, 0, 0)]
    q.push(QueuedPrompt("long", 1500, 0.0))
    assert q.next_assignment(1.9, workers) is None  # p1 is kept free of long prompts ...
    assert q.next_assignment(2.0, workers) == Assignment("long", "p1")  # ... until the aging bound


def _reference_assignment(q: PrefillQueue, now: float, workers: list[PrefillWorkerLoad]) -> Assignment | None:
    """The policy's definition, written plainly: walk `ordered(now)` and take the first prompt some
    worker it may use has room for (the least loaded one); an aged prompt that finds none reserves them."""
    reserved: set[str] = set()
    late = q.config.late_seconds
    for item in q.ordered(now):
        waited = now - item.arrival_seconds
        aged = waited >= q.config.aging_seconds or (late is not None and waited >= late)
        pool = [w for w in q._pool(item, workers, aged) if w.name not in reserved]
        fits = [w for w in pool if q._fits(item, w)]
        if fits:
            return Assignment(item.request_id, min(fits, key=lambda w: (w.inflight_tokens, w.name)).name)
        if q.config.policy is Policy.FIFO:
            return None
        if aged:
            reserved.update(w.name for w in pool)
    return None


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(list(Policy)),
    prompts=st.lists(st.tuples(st.integers(1, 5000), st.floats(0.0, 10.0)), min_size=1, max_size=12),
    workers=st.lists(
        st.tuples(st.sampled_from(list(Lane)), st.integers(0, 5000), st.integers(0, 2)),
        min_size=1,
        max_size=4,
    ),
    now=st.floats(0.0, 15.0),
    late=st.one_of(st.none(), st.floats(0.5, 8.0)),
    step_s=st.sampled_from([0.0, 0.3, 1.1]),
)
def test_indexed_dispatch_equals_the_policys_definition(
    policy: Policy,
    prompts: list[tuple[int, float]],
    workers: list[tuple[Lane, int, int]],
    now: float,
    late: float | None,
    step_s: float,
) -> None:
    """The heaps the queue keeps (so the simulator can dispatch hundreds of thousands of prompts) pick
    exactly what walking the whole ordered queue would, for every queue and worker state drawn, with and
    without a dispatch deadline, as time moves on."""
    loads = [PrefillWorkerLoad(f"w{i}", lane, tokens, long) for i, (lane, tokens, long) in enumerate(workers)]
    fast = queue(policy, aging=5.0, long_tokens=1000, late=late)
    plain = queue(policy, aging=5.0, long_tokens=1000, late=late)
    for i, (tokens, arrival) in enumerate(prompts):
        for q in (fast, plain):
            q.push(QueuedPrompt(f"r{i}", tokens, arrival))
    for i in range(len(prompts) + 1):
        at = now + i * step_s  # time moves on between dispatches: prompts age and miss their deadline
        expected = _reference_assignment(plain, at, loads)
        got = fast.next_assignment(at, loads)
        assert got == expected
        if expected is None:
            break
        plain.remove(expected.request_id)
