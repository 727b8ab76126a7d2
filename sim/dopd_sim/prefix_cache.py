"""The simulated prefix cache of the prefill pool, and the block hashes it is keyed by.

Traces that carry prompt block hashes (Mooncake FAST'25: `hash_ids`, one per 512-token block; equal ids
are reusable prefix KV) let the simulator credit what prefix caching saves. The model: one LRU cache of
blocks for the whole prefill pool (a prompt's blocks touched tail first, so its head is evicted last),
holding as many blocks as the ready prefill replicas' KV capacity (each replica's HBM, with a
cache-aware router sending a prompt to where its prefix is, as Dynamo's KV router and Mooncake's store
do). A prompt's cached prefix is its longest run of leading blocks in the cache when its batch starts
(at most all but its last token, which is always computed); its blocks enter the cache when its
prefill ends. The hit rate this produces is what vLLM reports as
prefix_cache_hits / prefix_cache_queries (tokens).

`PrefixTrace` is a `Trace` that also carries each request's block hashes; `read_mooncake_blocks` reads
them beside the shared loader, which keeps only arrival times and lengths. Callers: `workload` (loading,
windowing and rate-scaling such traces), `cluster.Simulator` (the cache), the oracle (`known_hit_curve`:
the hit rate its window's requests would see at each pool size, from every block's exact reuse distance).
"""

from __future__ import annotations

import bisect
import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dopd_forecaster.traces import Trace, TraceFormatError
from dopd_operator.prefix_curve import PrefixCacheCurve
from dopd_worker.prefix_reuse import REUSE_BUCKETS_TOKENS, ReuseSampler

MOONCAKE_BLOCK_TOKENS = 512

BlockHashes = tuple[int, ...]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class PrefixTrace(Trace):
    """A trace whose requests carry their prompts' prefix block hashes (`block_tokens` tokens each)."""

    prefix_blocks: tuple[BlockHashes, ...] = ()
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.prefix_blocks) != len(self.arrival_s):
            raise ValueError(f"{len(self.prefix_blocks)} block-hash lists for {len(self.arrival_s)} requests")

    def _slice(self, lo: int, hi: int) -> PrefixTrace:
        base = super()._slice(lo, hi)
        return PrefixTrace(
            base.arrival_s,
            base.input_tokens,
            base.output_tokens,
            base.source,
            base.format,
            self.prefix_blocks[lo:hi],
            self.block_tokens,
            law=base.law,
        )

    def scaled(self, rate_scale: float) -> PrefixTrace:
        base = super().scaled(rate_scale)
        return PrefixTrace(
            base.arrival_s,
            base.input_tokens,
            base.output_tokens,
            base.source,
            base.format,
            self.prefix_blocks,
            self.block_tokens,
            law=base.law,
        )


def read_mooncake_blocks(path: str | Path, trace: Trace) -> PrefixTrace:
    """`trace` (as `load_trace` read it from a Mooncake JSON-lines file) with each request's `hash_ids`.

    Requests are matched to lines the way the loader orders them (a stable sort on the timestamp), and
    every matched line's `input_length` must equal the trace's, so a mismatch cannot go unnoticed.
    """
    stamps: list[float] = []
    blocks: list[BlockHashes] = []
    lengths: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            hashes = record.get("hash_ids")
            if not isinstance(hashes, list) or not all(isinstance(h, int) for h in hashes):
                raise TraceFormatError(path, number, "hash_ids is missing or not a list of integers")
            stamps.append(float(record["timestamp"]))
            lengths.append(int(record["input_length"]))
            blocks.append(tuple(hashes))
    order = np.argsort(np.asarray(stamps), kind="stable")
    if len(order) != len(trace) or any(
        lengths[i] != int(t) for i, t in zip(order, trace.input_tokens, strict=True)
    ):
        raise TraceFormatError(path, 0, "hash_ids do not line up with the requests the trace loader read")
    return PrefixTrace(
        trace.arrival_s,
        trace.input_tokens,
        trace.output_tokens,
        trace.source,
        trace.format,
        tuple(blocks[i] for i in order),
    )


class PrefixCache:
    """An LRU cache of prompt blocks sized by the ready prefill replicas' KV capacity."""

    def __init__(self, block_tokens: int, blocks_per_replica: int) -> None:
        self.block_tokens = block_tokens
        self.blocks_per_replica = blocks_per_replica
        self.capacity_blocks = 0
        self._blocks: OrderedDict[int, None] = OrderedDict()
        # Per lookup, in time order: (time, prompt tokens, cached tokens), for windowed hit rates.
        self.lookup_s: list[float] = []
        self.queried_tokens: list[int] = []
        self.hit_tokens: list[int] = []

    def resize(self, replicas: int) -> None:
        """Capacity for `replicas` ready prefill replicas; a shrinking pool loses its oldest blocks."""
        self.capacity_blocks = replicas * self.blocks_per_replica
        self._evict()

    def cached_tokens(self, blocks: Sequence[int], prompt_tokens: int, now_s: float) -> int:
        """Tokens of this prompt's prefix found in the cache (touched as recently used, tail first so
        its head is the most recent), recorded for the hit rate. The last token is always computed, and
        only full blocks are looked up (`insert`)."""
        hits = 0
        for block in blocks[: self.full_blocks(prompt_tokens)]:
            if block not in self._blocks:
                break
            hits += 1
        for block in reversed(blocks[:hits]):
            self._blocks.move_to_end(block)
        cached = min(hits * self.block_tokens, max(prompt_tokens - 1, 0))
        self.lookup_s.append(now_s)
        self.queried_tokens.append(prompt_tokens)
        self.hit_tokens.append(cached)
        return cached

    def hit_rate(self, start_s: float, end_s: float) -> float | None:
        """Cached over queried prompt tokens of the lookups in [start_s, end_s); None without lookups."""
        lo = bisect.bisect_left(self.lookup_s, start_s)
        hi = bisect.bisect_left(self.lookup_s, end_s)
        queried = sum(self.queried_tokens[lo:hi])
        return sum(self.hit_tokens[lo:hi]) / queried if queried > 0 else None

    def full_blocks(self, prompt_tokens: int) -> int:
        """How many of a prompt's blocks are full: the ones a cache holds."""
        return prompt_tokens // self.block_tokens

    def insert(self, blocks: Sequence[int], prompt_tokens: int) -> None:
        """A prefilled prompt's full blocks become (most recently used) cache entries, tail first: of
        one prompt's blocks the tail goes first, as vLLM frees a sequence's blocks in reverse order and
        SGLang's radix tree evicts leaves first. (Head first, a long prompt under pressure lost its
        first block, and with it every later block's use, while the tail stayed cached.) A partial last
        block is not cached: vLLM hashes full blocks only, and SGLang's radix tree holds the tail's own
        tokens, not a block's worth; no later prompt shares it (the next turn extends it into another
        block). Cached as a whole block, every prompt's tail took up to a block of room it never served:
        on the Mooncake trace (seed 0) a pool of 64 replicas hit 2.1 points below an exact LRU of its
        size (full blocks only, `exact_reuse_distances`), now 1.2, as at 256 replicas (1.3-1.4 either
        way: a prompt's blocks enter when its prefill ends)."""
        for block in reversed(blocks[: self.full_blocks(prompt_tokens)]):
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        self._evict()

    def _evict(self) -> None:
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)


@functools.lru_cache(maxsize=4)
def exact_reuse_distances(trace: PrefixTrace) -> tuple[FloatArray, ...]:
    """Each request's full blocks' LRU stack distances (tokens; inf for a first use), every block
    tracked: the router's sampler at rate 1, whose distances are exactly an LRU cache's hits at every size
    (tests/worker/test_prefix_reuse.py). Memoized per trace: an oracle's calibration runs it a dozen times."""
    sampler = ReuseSampler(block_tokens=trace.block_tokens, sample_rate=1.0)
    out: list[FloatArray] = []
    for blocks, prompt in zip(trace.prefix_blocks, trace.input_tokens, strict=True):
        full = int(prompt) // trace.block_tokens
        out.append(np.sort(np.asarray(sampler.observe(blocks[:full]), dtype=np.float64)))
    return tuple(out)


HIT_MIX_LEVELS = 10  # a known mix's populations: prompts binned by the share of them cached, in tenths


def _cached_tokens(
    trace: PrefixTrace, lo: int, hi: int, cache_tokens: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """The prompt tokens of requests `lo:hi` an LRU cache of each size serves (requests x sizes: each
    prompt's blocks within that distance, at most all but its last token), and the prompts' lengths."""
    prompts = trace.input_tokens[lo:hi].astype(np.float64)
    if hi <= lo:
        return np.zeros((0, len(cache_tokens))), prompts
    cached = np.stack(
        [
            np.searchsorted(d, cache_tokens, side="right") * float(trace.block_tokens)
            for d in exact_reuse_distances(trace)[lo:hi]
        ]
    )
    return np.minimum(cached, np.maximum(prompts - 1.0, 0.0)[:, None]), prompts


def known_hit_mix(
    trace: PrefixTrace, lo: int, hi: int, cache_tokens: float
) -> tuple[tuple[float, float], ...]:
    """How the hits of requests `lo:hi` at a cache of `cache_tokens` fall on prompts
    (`capacity.Workload.prefix_hit_mix`): the prompts binned by the share of their tokens an LRU cache of
    that size serves (in tenths), each bin's token-weighted share cached and its share of the prompt
    tokens. Prompts that hit nothing are left out (the rest of the tokens). From every block's exact
    reuse distance, as `known_hit_curve`."""
    by_size, prompts = _cached_tokens(trace, lo, hi, np.array([cache_tokens]))
    cached = by_size[:, 0]
    total = float(prompts.sum())
    if total <= 0:
        return ()
    share = np.divide(cached, prompts, out=np.zeros_like(cached), where=prompts > 0)
    bins = np.minimum(np.ceil(share * HIT_MIX_LEVELS).astype(np.int64), HIT_MIX_LEVELS)  # 0: no hit
    mix: list[tuple[float, float]] = []
    for level in range(HIT_MIX_LEVELS, 0, -1):
        chosen = bins == level
        tokens = float(prompts[chosen].sum())
        if tokens > 0:
            mix.append((float(cached[chosen].sum()) / tokens, tokens / total))
    return tuple(mix)


def known_hit_curve(
    trace: PrefixTrace, lo: int, hi: int, largest_cache_tokens: float
) -> PrefixCacheCurve | None:
    """How the prefix-cache hit rate of requests `lo:hi` moves with the pool's cache, known rather than
    sampled: the share of their prompt tokens an LRU cache of each `REUSE_BUCKETS_TOKENS` size serves
    (each prompt's blocks within that distance, at most all but its last token), anchored at itself
    (`PrefixCacheCurve.self_anchored`). What the oracle sizes with: the router's curve, sampled from the
    past, cannot know a reuse farther back than the traffic it has seen. None without requests."""
    if hi <= lo:
        return None
    bounds = np.asarray(REUSE_BUCKETS_TOKENS)
    cached, prompts = _cached_tokens(trace, lo, hi, bounds)
    shares = np.minimum(np.maximum.accumulate(cached.sum(axis=0) / max(float(prompts.sum()), 1.0)), 1.0)
    return PrefixCacheCurve.self_anchored(
        tuple(zip(bounds.tolist(), shares.tolist(), strict=True)), largest_cache_tokens
    )
