"""The router's prefill policy in virtual time: SJF, the aging bound, the long-prompt lane, FIFO."""

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
    policy: Policy = Policy.LENGTH_AWARE, aging: float = 10.0, long_tokens: int = 1000, budget: int = 4096
) -> PrefillQueue:
    return PrefillQueue(SchedulerConfig(policy, aging, long_tokens, budget))


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


def test_no_workers_no_assignment_and_bad_config_rejected() -> None:
    q = queue()
    q.push(QueuedPrompt("r", 5, 0.0))
    assert q.next_assignment(0.0, []) is None
    assert len(q) == 1
    with pytest.raises(ValueError, match="positive"):
        SchedulerConfig(aging_seconds=0)


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
    for item in q.ordered(now):
        aged = now - item.arrival_seconds >= q.config.aging_seconds
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
)
def test_indexed_dispatch_equals_the_policys_definition(
    policy: Policy,
    prompts: list[tuple[int, float]],
    workers: list[tuple[Lane, int, int]],
    now: float,
) -> None:
    """The heaps the queue keeps (so the simulator can dispatch hundreds of thousands of prompts) pick
    exactly what walking the whole ordered queue would, for every queue and worker state drawn."""
    loads = [PrefillWorkerLoad(f"w{i}", lane, tokens, long) for i, (lane, tokens, long) in enumerate(workers)]
    fast, plain = queue(policy, aging=5.0, long_tokens=1000), queue(policy, aging=5.0, long_tokens=1000)
    for i, (tokens, arrival) in enumerate(prompts):
        for q in (fast, plain):
            q.push(QueuedPrompt(f"r{i}", tokens, arrival))
    for _ in range(len(prompts) + 1):
        expected = _reference_assignment(plain, now, loads)
        got = fast.next_assignment(now, loads)
        assert got == expected
        if expected is None:
            break
        plain.remove(expected.request_id)
