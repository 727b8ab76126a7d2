"""The prefill pool's prefix-cache hit rate as a function of its size, and how the hits fall on prompts
(docs/planner.md, "Prefix cache").

The cache is the ready prefill replicas' KV memory, so a larger pool hits more. The engines' counters give
the hit rate at the current size only; the router's reuse distances of prompt blocks
(`dopd_worker.prefix_reuse`: the share of prompt-block tokens an LRU cache of C tokens would serve, for
every C) give the curve's shape. The curve is anchored at what the engines measure: the hit rate at a
cache of C tokens is `share(C)` scaled by `observed / share(C_now)` (at most 1), so an engine whose cache
serves less than an ideal pooled LRU (per-replica caches behind a router that ignores prefixes, or no
cache at all: a measured 0 stays 0) is not credited with what it does not do. Measured on the Mooncake
trace, the curve at a pool's cache is within 0.02 of the simulated pool's hit rate from 8 replicas up
(tests/sim/test_prefix_cache.py).

A cache serves a prompt its cached prefix, so a prompt hits most of itself (a conversation's next turn)
or nothing (a new one): `prefix_populations` turns a measured mix of those (the router's, from where in
their prompts its sampled blocks were reused) into populations at any hit rate.

Callers: `planner_load.observed_workload` (from an `Observation`), the simulator's oracle; read by
`capacity.CapacityModel` (`prefill_replicas`; the populations in its prefill model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MAX_PREFIX_HIT_RATE = 0.99  # a prompt always computes at least its last tokens
# Below this share at the current size the curve is too flat to scale from (a cold cache, a window with
# few reuses): the observed rate holds at every size.
MIN_ANCHOR_SHARE = 0.02


@dataclass(frozen=True)
class PrefixCacheCurve:
    """Hit rate against the pool's cache size, anchored at the observed rate at the current size."""

    bounds_tokens: tuple[float, ...]  # increasing cache sizes (tokens)
    share_within: tuple[float, ...]  # share of prompt-block tokens reused within each, non-decreasing
    observed_hit_rate: float  # the engines' hit rate over the same window
    observed_cache_tokens: float  # the pool's cache then: ready prefill replicas x KV tokens a replica
    # the most cache the pool may have (maxReplicas x KV tokens a replica): what "ample" means
    largest_cache_tokens: float = math.inf

    def __post_init__(self) -> None:
        if len(self.bounds_tokens) != len(self.share_within) or not self.bounds_tokens:
            raise ValueError("a prefix-cache curve needs one share per bound, and at least one bound")
        if any(b <= a for a, b in zip(self.bounds_tokens, self.bounds_tokens[1:], strict=False)):
            raise ValueError("prefix-cache curve bounds must increase")
        if any(not 0.0 <= s <= 1.0 for s in self.share_within) or any(
            b < a for a, b in zip(self.share_within, self.share_within[1:], strict=False)
        ):
            raise ValueError("prefix-cache curve shares must be within [0, 1] and non-decreasing")

    @classmethod
    def self_anchored(
        cls, shares_within: tuple[tuple[float, float], ...], largest_cache_tokens: float
    ) -> PrefixCacheCurve:
        """A curve with no engine measurement to anchor at: `(cache tokens, share reused within)` pairs
        taken as the hit rate at every size (anchored at their own share at the largest pool, so the scale
        is 1). Where the reuses are known (the oracle), or before any engine has served a prompt."""
        curve = cls(
            tuple(bound for bound, _ in shares_within),
            tuple(share for _, share in shares_within),
            0.0,
            largest_cache_tokens,
            largest_cache_tokens,
        )
        return replace(curve, observed_hit_rate=curve.share(largest_cache_tokens))

    def share(self, cache_tokens: float) -> float:
        """Share of prompt-block tokens an LRU cache of `cache_tokens` serves: linear in log size between
        bounds, linear from (0, 0) below the first, flat past the last."""
        bounds, shares = self.bounds_tokens, self.share_within
        if cache_tokens <= 0:
            return 0.0
        if cache_tokens <= bounds[0]:
            return shares[0] * cache_tokens / bounds[0]
        for i in range(1, len(bounds)):
            if cache_tokens <= bounds[i]:
                t = math.log(cache_tokens / bounds[i - 1]) / math.log(bounds[i] / bounds[i - 1])
                return shares[i - 1] + t * (shares[i] - shares[i - 1])
        return shares[-1]

    def hit_rate(self, cache_tokens: float) -> float:
        """The hit rate a pool with `cache_tokens` of cache would see: the curve scaled by what the
        engines measure at the current size against what it says there. The scale is at most 1 (no
        engine beats an LRU pooled over the same memory; where one reads more, the sampled curve is
        short, and its own shares are the better guide), and a larger pool never hits less than the
        current one measures."""
        anchor = self.share(self.observed_cache_tokens)
        if anchor < MIN_ANCHOR_SHARE:
            return self.observed_hit_rate
        predicted = min(self.observed_hit_rate / anchor, 1.0) * self.share(cache_tokens)
        if cache_tokens >= self.observed_cache_tokens:
            predicted = max(predicted, self.observed_hit_rate)
        return min(predicted, MAX_PREFIX_HIT_RATE)

    @property
    def ceiling_hit_rate(self) -> float:
        """The hit rate of the largest pool allowed (every reuse the curve saw, without a limit)."""
        return self.hit_rate(self.largest_cache_tokens)


@dataclass(frozen=True)
class PromptPopulation:
    """Prompts with one prefix-cache hit share: `hit` of each one's tokens served from the cache, for
    `share` of all prompts (lengths from the same distribution)."""

    hit: float
    share: float


def prefix_populations(
    hit_rate: float, mix: tuple[tuple[float, float], ...] | None
) -> tuple[PromptPopulation, ...]:
    """The prompts' hit shares at a token hit rate `hit_rate`: all at that rate where the mix is unknown;
    else the mix's populations, their shares scaled so the mean is `hit_rate` (a larger cache hits more
    prompts, not more of each; once every prompt hits, each misses less, in proportion), the rest hitting
    nothing. The populations hitting most come first; lengths are taken as independent of the hits.

    A prefix cache serves a prompt its cached prefix: a conversation's next turn finds most of itself
    there, a new conversation nothing. On the Mooncake trace 39% of the prompts that span a cache block
    hit none of it and 49% hit 95% or more; spread evenly at the mean rate (65%), a 30k-token prompt kept
    10k new tokens and missed the TTFT SLO alone, so 72% of the prompts were feasible where 83% are."""
    hit = min(max(hit_rate, 0.0), MAX_PREFIX_HIT_RATE)
    hitting = sorted(
        ((min(level, MAX_PREFIX_HIT_RATE), share) for level, share in mix or () if level > 0 and share > 0),
        reverse=True,
    )
    mean = sum(level * share for level, share in hitting)
    if hit <= 0.0 or mean <= 0.0:
        return (PromptPopulation(hit, 1.0),)
    total = sum(share for _, share in hitting)
    scale = hit / mean
    if scale * total >= 1.0:  # every prompt hits: each the same share deeper toward the most there is
        shares = [(level, share / total) for level, share in hitting]
        closer = min((MAX_PREFIX_HIT_RATE - hit) / max(MAX_PREFIX_HIT_RATE - mean / total, 1e-12), 1.0)
        return tuple(
            PromptPopulation(MAX_PREFIX_HIT_RATE - (MAX_PREFIX_HIT_RATE - level) * closer, share)
            for level, share in shares
        )
    populations = [PromptPopulation(level, share * scale) for level, share in hitting]
    return (*populations, PromptPopulation(0.0, 1.0 - scale * total))
