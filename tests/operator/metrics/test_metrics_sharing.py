"""`SharedReads`: the models of a batch share one fetch per token; a new model, a new token or a
failure is never served a stale or foreign answer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_operator.metrics.promql import Member
from dopd_operator.metrics.sharing import SharedReads


class Backend:
    """Answers each member with (its name, the fetch's number); records the members of each fetch."""

    def __init__(self, fail: bool = False) -> None:
        self.fetched: list[tuple[Member, ...]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, members: tuple[Member, ...]) -> Mapping[Member, tuple[str, int]]:
        self.fetched.append(members)
        number = len(self.fetched)
        await self.gate.wait()
        if self.fail:
            raise RuntimeError(f"fetch {number} failed")
        return {member: (member[0], number) for member in members}


def _reads() -> SharedReads[tuple[str, int]]:
    return SharedReads(idle_seconds=600.0, max_batches=16)


def test_concurrent_reads_of_known_members_share_one_fetch() -> None:
    async def scenario() -> None:
        reads, backend = _reads(), Backend()
        await asyncio.gather(*(reads.read("b", (m,), 0, backend.fetch, 0.0) for m in "abc"))
        backend.fetched.clear()
        answers = await asyncio.gather(*(reads.read("b", (m,), 1, backend.fetch, 1.0) for m in "abc"))
        assert backend.fetched == [(("a",), ("b",), ("c",))]
        assert [name for name, _ in answers] == ["a", "b", "c"]  # each its own part
        assert await reads.read("b", ("b",), 1, backend.fetch, 1.5) == ("b", answers[1][1])  # same token
        assert len(backend.fetched) == 1

    asyncio.run(scenario())


def test_a_new_member_gets_a_fetch_that_covers_everyone() -> None:
    async def scenario() -> None:
        reads, backend = _reads(), Backend()
        await reads.read("b", ("a",), 0, backend.fetch, 0.0)
        assert await reads.read("b", ("new",), 0, backend.fetch, 0.1) == ("new", 2)
        assert backend.fetched[-1] == (("a",), ("new",))
        assert await reads.read("b", ("a",), 0, backend.fetch, 0.2) == ("a", 2)
        assert len(backend.fetched) == 2

    asyncio.run(scenario())


def test_batches_and_tokens_are_separate() -> None:
    async def scenario() -> None:
        reads, backend = _reads(), Backend()
        await reads.read("x", ("a",), 0, backend.fetch, 0.0)
        await reads.read("y", ("a",), 0, backend.fetch, 0.0)
        await reads.read("x", ("a",), 1, backend.fetch, 0.0)
        assert backend.fetched == [(("a",),)] * 3

    asyncio.run(scenario())


def test_a_failure_reaches_every_waiter_and_is_not_kept_past_its_token() -> None:
    async def scenario() -> None:
        reads, backend = _reads(), Backend()
        await asyncio.gather(*(reads.read("b", (m,), 0, backend.fetch, 0.0) for m in "ab"))
        backend.fail = True
        results = await asyncio.gather(
            *(reads.read("b", (m,), 1, backend.fetch, 1.0) for m in "ab"), return_exceptions=True
        )
        assert [str(r) for r in results] == ["fetch 3 failed"] * 2
        backend.fail = False
        assert await reads.read("b", ("a",), 2, backend.fetch, 2.0) == ("a", 4)

    asyncio.run(scenario())


def test_a_cancelled_reader_leaves_the_shared_fetch_to_the_others() -> None:
    async def scenario() -> None:
        reads, backend = _reads(), Backend()
        await asyncio.gather(*(reads.read("b", (m,), 0, backend.fetch, 0.0) for m in "ab"))
        backend.gate.clear()
        first = asyncio.create_task(reads.read("b", ("a",), 1, backend.fetch, 1.0))
        second = asyncio.create_task(reads.read("b", ("b",), 1, backend.fetch, 1.0))
        await asyncio.sleep(0)
        first.cancel()
        backend.gate.set()
        assert await second == ("b", 3)
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())


def test_idle_members_leave_the_batch() -> None:
    async def scenario() -> None:
        reads, backend = SharedReads[tuple[str, int]](idle_seconds=60.0, max_batches=4), Backend()
        await reads.read("b", ("gone",), 0, backend.fetch, 0.0)
        await reads.read("b", ("stays",), 1, backend.fetch, 30.0)
        await reads.read("b", ("stays",), 2, backend.fetch, 90.0)
        assert backend.fetched[-1] == (("stays",),)
        assert reads.members("b") == (("stays",),)

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 3), st.sampled_from("pq")), min_size=1, max_size=30
    )
)
def test_every_read_gets_its_own_members_part_of_an_answer_for_its_token(
    reads_in_order: list[tuple[str, int, str]],
) -> None:
    """Whatever the order of members, tokens and batches: a read's answer is its own member's part, of
    a fetch that included it, made for the batch and token it asked for."""

    async def scenario() -> None:
        reads: SharedReads[tuple[Member, str, int]] = SharedReads(idle_seconds=1e9, max_batches=8)
        made: list[tuple[str, int, tuple[Member, ...]]] = []

        def fetcher(key: str, token: int) -> object:
            async def fetch(members: tuple[Member, ...]) -> Mapping[Member, tuple[Member, str, int]]:
                made.append((key, token, members))
                return {member: (member, key, token) for member in members}

            return fetch

        for name, token, key in sorted(reads_in_order, key=lambda r: r[1]):  # tokens move forward
            member = (name,)
            got = await reads.read(key, member, token, fetcher(key, token), float(token))  # type: ignore[arg-type]
            assert got == (member, key, token)
            assert any(k == key and t == token and member in ms for k, t, ms in made)

    asyncio.run(scenario())
