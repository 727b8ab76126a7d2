"""The router's reuse distances of prompt blocks: the hit rate of an LRU prefix cache of every size."""

from __future__ import annotations

import itertools
import math
import random
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_operator.metrics.estimators import histogram_from_values, reuse_share_within
from dopd_worker.prefix_reuse import REUSE_BUCKETS_TOKENS, ReuseSampler, prompt_block_hashes

BLOCK = 16


def lru_hits(stream: list[int], capacity_blocks: int) -> int:
    """Hits of an LRU cache of `capacity_blocks` blocks over `stream`, simulated directly."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for block in stream:
        if block in cache:
            hits += 1
            cache.move_to_end(block)
        else:
            cache[block] = None
            if len(cache) > capacity_blocks:
                cache.popitem(last=False)
    return hits


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=120), st.integers(1, 14))
def test_unsampled_distances_are_the_lru_cache_hits_of_every_size(stream: list[int], blocks: int) -> None:
    """With every block tracked, the blocks whose distance fits in C tokens are exactly the hits of an
    LRU cache of C tokens (Mattson's stack property), for any stream and any size."""
    sampler = ReuseSampler(block_tokens=BLOCK, sample_rate=1.0)
    distances = [d for block in stream for d in sampler.observe([block])]
    assert len(distances) == len(stream)
    assert sum(d <= blocks * BLOCK for d in distances) == lru_hits(stream, blocks)


def zipf_stream(seed: int, length: int, universe: int) -> list[int]:
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(universe)]
    ids = rng.sample(range(10**9), universe)  # block ids spread like hashes are
    return rng.choices(ids, weights=weights, k=length)


@pytest.mark.parametrize("seed", range(4))
def test_sampled_curve_estimates_the_hit_rate_at_every_size(seed: int) -> None:
    """Tracking 1 block in 8 (SHARDS) still gives each cache size's hit rate within a few points, at a
    fraction of the memory, once the operator's reading corrects for the hottest blocks (SHARDS-adj:
    whether the few blocks that carry a tenth of the traffic are sampled moves the whole curve)."""
    stream = zipf_stream(seed, 60_000, 20_000)
    sizes_blocks = (1_000, 4_000, 12_000)  # 125 to 1,500 sampled blocks of cache
    sampler = ReuseSampler(block_tokens=BLOCK, sample_rate=1 / 8)
    distances = [d for block in stream for d in sampler.observe([block])]
    assert 0.08 * len(stream) < len(distances) < 0.17 * len(stream)
    assert sampler.expected_samples == pytest.approx(len(stream) / 8)
    buckets = histogram_from_values(np.asarray(distances), [n * BLOCK for n in sizes_blocks])
    curve = reuse_share_within(buckets, sampler.expected_samples)
    raw = reuse_share_within(buckets, None)
    assert curve is not None and raw is not None
    adjusted_errors, raw_errors = [], []
    for (bound, estimate), (_, unadjusted), blocks in zip(curve, raw, sizes_blocks, strict=True):
        assert bound == blocks * BLOCK
        exact = lru_hits(stream, blocks) / len(stream)
        assert abs(estimate - exact) < 0.05, (blocks, exact, estimate)
        adjusted_errors.append(abs(estimate - exact))
        raw_errors.append(abs(unadjusted - exact))
    assert sum(adjusted_errors) < sum(raw_errors)
    assert sampler.tracked_blocks < 20_000 / 8 * 1.3


def test_memory_is_bounded_by_the_largest_size_measured() -> None:
    """Blocks last used beyond the horizon are forgotten (their reuse reads as +Inf, as a first use)."""
    sampler = ReuseSampler(block_tokens=BLOCK, sample_rate=1.0, horizon_tokens=100 * BLOCK)
    first = [d for block in range(1_000) for d in sampler.observe([block])]
    assert sampler.tracked_blocks == 100
    assert all(math.isinf(d) for d in first)
    again = [d for block in range(1_000) for d in sampler.observe([block])]
    assert all(math.isinf(d) for d in again)  # each was 999 blocks back, past the horizon
    near = sampler.observe([995])  # used 5 blocks back
    assert near == [5 * BLOCK]


def test_block_hashes_key_the_whole_prefix() -> None:
    prompt = list(range(100))
    hashes = prompt_block_hashes(prompt, BLOCK)
    assert len(hashes) == 6  # the partial last block (4 tokens) is not cacheable
    changed = prompt_block_hashes([*prompt[:40], 7, *prompt[41:]], BLOCK)
    assert changed[:2] == hashes[:2]  # blocks before the edit are the same prefix
    assert not set(changed[2:]) & set(hashes)  # every block from the edit on is a new prefix
    assert prompt_block_hashes(prompt[16:], BLOCK)[0] != hashes[1]  # equal block, other prefix


def test_buckets_cover_one_replica_to_a_thousand() -> None:
    assert REUSE_BUCKETS_TOKENS[0] <= 100_000 and REUSE_BUCKETS_TOKENS[-1] >= 1_000 * 1_336_791
    ratios = [b / a for a, b in itertools.pairwise(REUSE_BUCKETS_TOKENS)]
    assert max(ratios) < 1.2
