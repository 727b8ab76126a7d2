"""Reuse distances of prompt blocks: what a prefix cache of any size would hit (docs/planner.md).

An LRU cache of C tokens serves a block from the cache when fewer than C tokens' worth of other distinct
blocks were used since the block's previous use (its stack distance; Mattson et al., 1970). So the
distances of one stream of prompts give the hit rate of every cache size at once: the share of
prompt-block tokens whose distance is at most C (the miss-ratio curve). The prefill pool's cache is its
ready replicas' KV memory, so the curve tells the planner how the hit rate moves with the pool's size,
which the engines' hit counters (one size, the current one) cannot.

The router sees every prompt, so it measures the distances. Tracking every block would cost memory in the
number of distinct blocks; SHARDS (Waldspurger et al., FAST'15) tracks a block only when its hash falls
below a threshold (rate `sample_rate`) and scales the distances among tracked blocks by 1/rate. Blocks
are `block_tokens` tokens of the prompt, each hashed with everything before it (`prompt_block_hashes`),
so equal hashes are equal prefixes, as vLLM's and SGLang's caches key them; a prompt's last, partial block
is not cacheable and not counted. Each sampled block is one observation of `REUSE_BUCKETS_TOKENS`'
histogram (a block never seen, or last seen beyond the largest bound, is +Inf), so bucket counts are
shares of full-block tokens. Beside it, `expected_samples` adds rate x blocks per prompt: a few blocks
(a shared system prompt) carry much of the traffic at tiny distances, and whether they happen to be
sampled would move the whole curve; SHARDS-adj counts the difference between the expected and the
actual samples, as far as it is beyond chance, as reuses at the smallest distance
(`dopd_operator.metrics.estimators.reuse_share_within`).
Each sampled block also has a position in its prompt (`observe_positions`, `REUSE_POSITION_BUCKETS`): a
cache serves a prompt a prefix, so where the reused blocks sit says how the hits fall on prompts (most
of a prompt or none of it), which the capacity model needs to tell which long prompts can meet the TTFT
SLO (`dopd_operator.metrics.estimators.hit_mix_from_positions`). No SHARDS-adj there: a hot first block,
sampled or not, moves the first position tenth alone.

Callers: the router (`dopd_worker.openai_api`, histograms `dopd_prompt_reuse_distance_tokens` and
`dopd_prompt_reuse_{sampled,reused}_position_ratio`) and the simulator's observation (`dopd_sim.observe`,
on a trace's block hashes).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Sequence

# 2^(1/4) apart (19%) from 64k to 2^31 tokens: a pool's cache is its ready prefill replicas' KV capacity,
# about 0.2-2M tokens a replica on 80 GB GPUs, from one replica to about a thousand.
REUSE_BUCKETS_TOKENS = tuple(float(round(2 ** (16 + i / 4))) for i in range(61))
# where in their prompts the sampled blocks sit (share of the prompt's blocks), in tenths
REUSE_POSITION_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
DEFAULT_SAMPLE_RATE = 1 / 32
DEFAULT_BLOCK_TOKENS = 512  # Mooncake's block; finer blocks cost hashing and change the curve little

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """A 64-bit finalizer (splitmix64's): spreads sequential ids (a trace's hash_ids) over the range, so a
    threshold on the result samples uniformly."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def prompt_block_hashes(token_ids: Sequence[int], block_tokens: int = DEFAULT_BLOCK_TOKENS) -> list[int]:
    """One 64-bit hash per full block of the prompt, each over its block and the hash before it (so over
    every block before it). Python's tuple hash (xxHash's mixing over the ids, which hash as themselves;
    deterministic for ints, unlike str's): the router computes it on its event loop for every admitted
    prompt, and it costs a fifth of converting the ids to bytes for a cryptographic digest (0.7 ms for a
    16k-token prompt then, docs/benchmarks/worker.md). A collision merges two prefixes in a sampled
    statistic, nothing more, and the hashes are never compared across processes."""
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        previous = hash((previous, tuple(token_ids[start : start + block_tokens])))
        hashes.append(previous)
    return hashes


class ReuseSampler:
    """SHARDS-sampled LRU stack distances of prompt blocks, in tokens."""

    def __init__(
        self,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        sample_rate: float = DEFAULT_SAMPLE_RATE,
        horizon_tokens: float = REUSE_BUCKETS_TOKENS[-1],
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.block_tokens = block_tokens
        self.sample_rate = sample_rate
        self._threshold = math.floor(sample_rate * 2.0**64)
        # Tracked blocks beyond the horizon are forgotten (their reuse counts as +Inf), bounding memory.
        self._max_tracked = max(1, math.ceil(horizon_tokens * sample_rate / block_tokens))
        self._clock = 0
        # block -> its last use's tick, least recently used first (the order `_uses` is in)
        self._last_use: OrderedDict[int, int] = OrderedDict()
        self._uses: list[int] = []  # the tracked blocks' last-use ticks, increasing
        self.expected_samples = 0.0  # rate x blocks looked at: what an unskewed stream would sample

    def sampled(self, block: int) -> bool:
        return _mix64(block & _MASK64) < self._threshold

    @property
    def tracked_blocks(self) -> int:
        return len(self._uses)

    def observe(self, blocks: Sequence[int]) -> list[float]:
        """One prompt's block hashes, in order: the reuse distance (tokens; inf for a first use) of each
        sampled block."""
        return [distance for _, distance in self.observe_positions(blocks)]

    def observe_positions(self, blocks: Sequence[int]) -> list[tuple[float, float]]:
        """As `observe`, each sampled block with its position in the prompt: the share of the prompt's
        blocks before its middle (0 to 1). A cache serves a prompt a prefix, so the share of the blocks
        at position u that were reused is the share of prompts (by tokens) that find more than u of
        themselves cached (`dopd_operator.metrics.estimators.hit_mix_from_positions`)."""
        found: list[tuple[float, float]] = []
        for position, block in enumerate(blocks):
            self.expected_samples += self.sample_rate
            if not self.sampled(block):
                continue
            share = (position + 0.5) / len(blocks)
            last = self._last_use.get(block)
            if last is None:
                found.append((share, math.inf))
            else:
                index = bisect.bisect_left(self._uses, last)
                newer = len(self._uses) - index - 1  # distinct tracked blocks used since
                found.append((share, (newer / self.sample_rate + 1) * self.block_tokens))
                del self._uses[index]
                self._last_use.move_to_end(block)
            self._clock += 1
            self._last_use[block] = self._clock
            self._uses.append(self._clock)
            if len(self._uses) > self._max_tracked:
                self._uses.pop(0)
                self._last_use.popitem(last=False)
        return found
