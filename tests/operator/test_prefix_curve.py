"""The prefix-cache hit rate against the prefill pool's size, and prefill sizing that uses it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_builders import long_prompts
from dopd_operator.api import SloSpec
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.prefix_curve import MAX_PREFIX_HIT_RATE, PrefixCacheCurve
from dopd_operator.profile_presets import PRESETS

PROFILE = PRESETS["llama3-8b-h100"]
REPLICA_TOKENS = PROFILE.kv_capacity_tokens
BOUNDS = tuple(float(2 ** (16 + i / 2)) for i in range(25))  # 64k .. 268M tokens


def rising(observed_hit_rate: float, observed_replicas: int, top: float = 0.7) -> PrefixCacheCurve:
    """Reuse that keeps growing with the cache: linear in log size from 5% at 64k tokens to `top`."""
    shares = tuple(0.05 + (top - 0.05) * i / (len(BOUNDS) - 1) for i in range(len(BOUNDS)))
    return PrefixCacheCurve(BOUNDS, shares, observed_hit_rate, observed_replicas * REPLICA_TOKENS)


def test_the_curve_is_anchored_at_the_measured_hit_rate() -> None:
    curve = rising(0.3, 10)
    at_now = curve.hit_rate(10 * REPLICA_TOKENS)
    assert at_now == pytest.approx(0.3)
    sizes = [curve.hit_rate(n * REPLICA_TOKENS) for n in (1, 5, 10, 20, 40, 80)]
    assert sizes == sorted(sizes) and sizes[0] < 0.3 < sizes[-1]
    # the engine serves 0.3 where an ideal LRU of that size would serve share(C_now): every size scales
    share_now = curve.share(10 * REPLICA_TOKENS)
    assert curve.hit_rate(40 * REPLICA_TOKENS) == pytest.approx(
        0.3 * curve.share(40 * REPLICA_TOKENS) / share_now
    )
    assert curve.ceiling_hit_rate == pytest.approx(0.3 * 0.7 / share_now)


def test_an_engine_reading_more_than_the_curve_is_not_extrapolated_past_it() -> None:
    """The sampled curve reads 0.46 at 10 replicas where the engines measure 0.6: no engine beats an LRU
    pooled over the same memory, so the curve is short there and its shares, not a ratio that would
    inflate every larger size, say how the hit rate grows; a larger pool never hits less than now."""
    curve = rising(0.6, 10)
    share_now = curve.share(10 * REPLICA_TOKENS)
    assert share_now < 0.6
    assert curve.hit_rate(10 * REPLICA_TOKENS) == pytest.approx(0.6)
    assert curve.hit_rate(11 * REPLICA_TOKENS) == pytest.approx(0.6)  # the curve's 0.47 there is short
    assert curve.hit_rate(1000 * REPLICA_TOKENS) == pytest.approx(curve.share(1000 * REPLICA_TOKENS))
    assert curve.hit_rate(2 * REPLICA_TOKENS) == pytest.approx(curve.share(2 * REPLICA_TOKENS))
    assert curve.ceiling_hit_rate == pytest.approx(0.7)


def test_a_measured_zero_stays_zero_at_every_size() -> None:
    """dopd's worker has no prefix cache: however much the prompts repeat, no size is credited hits."""
    curve = rising(0.0, 10)
    assert all(curve.hit_rate(n * REPLICA_TOKENS) == 0.0 for n in (1, 10, 100, 1000))


def test_a_curve_too_flat_to_scale_from_keeps_the_measured_rate() -> None:
    flat = PrefixCacheCurve(BOUNDS, (0.0,) * len(BOUNDS), 0.2, 10 * REPLICA_TOKENS)
    assert flat.hit_rate(REPLICA_TOKENS) == flat.hit_rate(1000 * REPLICA_TOKENS) == 0.2


def test_hits_never_reach_the_whole_prompt() -> None:
    every_block_reused = PrefixCacheCurve(BOUNDS, (1.0,) * len(BOUNDS), 1.0, 10 * REPLICA_TOKENS)
    assert every_block_reused.ceiling_hit_rate == MAX_PREFIX_HIT_RATE


@pytest.mark.parametrize(
    ("bounds", "shares", "message"),
    [
        ((), (), "one share per bound"),
        ((1.0, 1.0), (0.1, 0.2), "bounds must increase"),
        ((1.0, 2.0), (0.3, 0.2), "non-decreasing"),
        ((1.0, 2.0), (0.3, 1.2), "within"),
    ],
)
def test_a_malformed_curve_is_refused(
    bounds: tuple[float, ...], shares: tuple[float, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PrefixCacheCurve(bounds, shares, 0.1, 1.0)


def overall(model: CapacityModel, replicas: int, rate_rps: float) -> float:
    at = model.at_hit_rate(model.prefill_hit_rate(replicas))
    return at.prefill_feasible_share * at.prefill_attainment(replicas, rate_rps)


def test_prefill_buys_the_cache_that_makes_prompts_feasible() -> None:
    """Sized at today's hit rate, the pool meets the SLO for the prompts feasible *at that rate*; a
    larger pool holds more cache, which makes more prompts feasible at all. With the curve the planner
    sizes for the attainment an ample cache allows, and buys exactly the replicas that reach it."""
    rate = 4.0
    curve = rising(0.3, 8)
    flat = long_prompts(rate, None, 0.3)
    cached = long_prompts(rate, curve, 0.3)
    n_flat, n_cached = flat.prefill_replicas(rate), cached.prefill_replicas(rate)
    assert flat.prefill_feasible_share < 0.95  # the case at hand: the limit, not queueing, decides
    assert n_cached > n_flat
    target = cached.percentile_q * cached.at_hit_rate(curve.ceiling_hit_rate).prefill_feasible_share
    assert overall(cached, n_cached, rate) >= target
    assert overall(cached, n_cached - 1, rate) < target
    # what the flat sizing reaches, judged over all prompts at its own pool's hit rate: short of it
    assert overall(cached, n_flat, rate) < target


def test_hits_that_grow_with_the_pool_spare_replicas_where_every_prompt_is_feasible() -> None:
    """Short prompts: nothing is out of reach, so more cache only means less work per prompt."""
    rate = 150.0

    def model(curve: PrefixCacheCurve | None) -> CapacityModel:
        return CapacityModel(
            PROFILE,
            SloSpec(),
            Workload(rate, 2_000, 4_000, 200, 400, prefix_cache_hit_rate=0.2, prefix_cache_curve=curve),
        )

    flat, cached = model(None), model(rising(0.2, 2))
    assert flat.prefill_feasible_share > 0.9999
    n_flat, n_cached = flat.prefill_replicas(rate), cached.prefill_replicas(rate)
    assert n_cached < n_flat
    assert cached.prefill_hit_rate(n_cached) > 0.2


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.1, 60.0),
    extra=st.floats(0.0, 60.0),
    hit=st.floats(0.0, 0.8),
    ready=st.integers(1, 60),
    deep=st.none() | st.floats(0.5, 1.0),
)
def test_with_a_curve_more_load_never_yields_fewer_prefill_replicas(
    rate: float, extra: float, hit: float, ready: int, deep: float | None
) -> None:
    """With the hits spread evenly or falling on whole prompts (`deep` of each, for as many as the rate
    allows)."""
    curve = rising(hit, ready)
    mix = None if deep is None else ((deep, min(1.0, hit / deep)),)
    assert long_prompts(rate + extra, curve, hit, mix).prefill_replicas(rate + extra) >= long_prompts(
        rate, curve, hit, mix
    ).prefill_replicas(rate)


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.1, 40.0), ready=st.integers(1, 60))
def test_a_measured_zero_sizes_as_no_curve(rate: float, ready: int) -> None:
    """An engine without a prefix cache (a measured 0) gets the same prefill pool with or without the
    router's curve: reusable prompts buy nothing the engine does not do."""
    assert long_prompts(rate, rising(0.0, ready), 0.0).prefill_replicas(rate) == long_prompts(
        rate, None, 0.0
    ).prefill_replicas(rate)


def test_at_hit_rate_is_the_model_without_a_curve() -> None:
    model = long_prompts(4.0, rising(0.3, 8), 0.3)
    other = model.at_hit_rate(0.5)
    assert other.workload == replace(model.workload, prefix_cache_hit_rate=0.5, prefix_cache_curve=None)
    assert model.at_hit_rate(0.5) is other  # memoized
    assert not math.isclose(other.prefill_service_seconds_mean, model.prefill_service_seconds_mean)
