"""The generated multi-turn chat trace: its turns re-send the conversation so far, its block hashes are
what a prefix cache keys, and a larger pool's cache serves more of it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dopd_sim.config import SimConfig
from dopd_sim.conversations import ChatModel, conversations
from dopd_sim.prefix_cache import PrefixTrace, known_hit_curve
from dopd_sim.trace_spec import generate_from_spec


def test_a_chat_trace_is_one_draw_per_seed_within_its_bounds() -> None:
    trace = conversations(2.0, 600.0, seed=3)
    again = conversations(2.0, 600.0, seed=3)
    assert isinstance(trace, PrefixTrace) and trace.law is None
    assert np.array_equal(trace.arrival_s, again.arrival_s) and trace.prefix_blocks == again.prefix_blocks
    assert not np.array_equal(trace.arrival_s, conversations(2.0, 600.0, seed=4).arrival_s[: len(trace)])
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.arrival_s[-1] < 600.0
    chat = ChatModel()
    assert trace.input_tokens.max() <= chat.max_prompt_tokens
    assert all(
        len(b) == -(-int(n) // chat.block_tokens)
        for b, n in zip(trace.prefix_blocks, trace.input_tokens, strict=True)
    )
    # started before the trace, conversations are under way from its first minute: about 4 turns (the
    # geometric mean, less where the prompt limit ends one) per conversation started
    assert 2.0 * 2.5 * 600 < len(trace) < 2.0 * 4.5 * 600


def test_a_turn_resends_its_conversation_and_a_tenant_shares_its_system_prompt() -> None:
    """Every block of a turn's prompt that was a full block of an earlier prompt of the same
    conversation has the same hash (a conversation only grows at its end), and a tenant's system-prompt
    blocks open every one of its conversations: so the blocks most prompts lead with were seen before."""
    trace = conversations(1.0, 900.0, seed=1)
    seen: set[int] = set()
    leading_seen = 0
    for blocks, prompt in zip(trace.prefix_blocks, trace.input_tokens, strict=True):
        full = int(prompt) // trace.block_tokens
        if full and blocks[0] in seen:
            leading_seen += 1
        seen.update(blocks[:full])
    assert leading_seen > 0.9 * len(trace)
    # the same conversation's turns: a later prompt starts with every full block of an earlier one
    by_first_own: dict[int, list[tuple[int, ...]]] = {}
    for blocks in trace.prefix_blocks:
        own = [b for b in blocks if b >= 1 << 32]
        if own:
            by_first_own.setdefault(own[0], []).append(blocks)
    turns = [group for group in by_first_own.values() if len(group) > 1]
    assert turns
    for group in turns:
        for earlier, later in itertools.pairwise(group):
            assert later[: len(earlier) - 1] == earlier[:-1]


def test_a_larger_pools_cache_serves_more_of_a_chat() -> None:
    """The shape the planner's curve is for: conversations come back after a think time, so the hit rate
    rises with the cache that holds them through it (a pool of 1 to 32 replicas' KV)."""
    trace = generate_from_spec("chat,conversations_per_s=10,duration_s=900", seed=0)
    assert isinstance(trace, PrefixTrace)
    kv = SimConfig().resolved_profile().kv_capacity_tokens
    n = len(trace)
    curve = known_hit_curve(trace, n // 2, n, 256 * kv)
    assert curve is not None
    rates = [curve.hit_rate(replicas * kv) for replicas in (1, 4, 16, 32)]
    assert rates == sorted(rates) and rates[-1] - rates[0] > 0.3
    assert 0.2 < rates[0] < 0.5  # one replica's cache still holds the system prompts and recent turns


def test_a_chat_spec_names_what_it_does_not_take() -> None:
    with pytest.raises(ValueError, match="draws its own lengths"):
        generate_from_spec("chat,conversations_per_s=1,duration_s=60,lengths=code")
    with pytest.raises(ValueError, match="must be positive"):
        conversations(0.0, 60.0)
