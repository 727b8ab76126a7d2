"""How prefix-cache hits fall on prompts: a prompt hits its cached prefix or nothing, and the capacity
model counts each kind of prompt at its own limit (`prefix_curve.prefix_populations`), from a mix the router
measures where in their prompts its sampled blocks were reused (`estimators.hit_mix_from_positions`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_builders import long_prompts
from dopd_operator.capacity import CapacityModel
from dopd_operator.metrics.estimators import (
    MIN_POSITION_SAMPLES,
    histogram_from_values,
    hit_mix_from_positions,
)
from dopd_operator.prefix_curve import MAX_PREFIX_HIT_RATE, prefix_populations
from dopd_worker.prefix_reuse import REUSE_POSITION_BUCKETS

mixes = st.lists(st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)), min_size=1, max_size=6).map(
    lambda pairs: tuple((level, share / max(1.0, sum(s for _, s in pairs))) for level, share in pairs)
)


@settings(max_examples=200, deadline=None)
@given(hit=st.floats(0.0, 0.95), mix=st.one_of(st.none(), mixes))
def test_the_populations_keep_the_measured_hit_rate(
    hit: float, mix: tuple[tuple[float, float], ...] | None
) -> None:
    """However the hits fall on prompts, the share of prompt tokens cached is the rate the engines
    measure: a mix says where, never how much."""
    populations = prefix_populations(hit, mix)
    assert sum(p.share for p in populations) == pytest.approx(1.0)
    assert all(0.0 <= p.hit <= MAX_PREFIX_HIT_RATE and p.share >= 0.0 for p in populations)
    assert sum(p.hit * p.share for p in populations) == pytest.approx(hit, abs=1e-9)
    assert [p.hit for p in populations] == sorted((p.hit for p in populations), reverse=True)


def test_without_a_mix_every_prompt_hits_the_mean_rate() -> None:
    assert [(p.hit, p.share) for p in prefix_populations(0.4, None)] == [(0.4, 1.0)]
    assert [(p.hit, p.share) for p in prefix_populations(0.4, ())] == [(0.4, 1.0)]
    assert [(p.hit, p.share) for p in prefix_populations(0.0, ((0.9, 0.5),))] == [(0.0, 1.0)]


def test_a_larger_cache_hits_more_prompts_then_more_of_each() -> None:
    """The mix was measured at 40%: at 20% half as many prompts hit, as deep; at 95% every prompt hits,
    each deeper than measured."""
    mix = ((0.8, 0.5),)
    assert [(p.hit, p.share) for p in prefix_populations(0.2, mix)] == [(0.8, 0.25), (0.0, 0.75)]
    deeper = prefix_populations(0.9, mix)
    assert [p.share for p in deeper] == [1.0] and deeper[0].hit == pytest.approx(0.9)


def model(hit: float, mix: tuple[tuple[float, float], ...] | None, rate_rps: float = 4.0) -> CapacityModel:
    """Mooncake-like prompts (`dopd_builders.long_prompts`), `hit` of their tokens cached, falling as `mix`."""
    return long_prompts(rate_rps, None, hit, mix)


def test_each_kind_of_prompt_is_feasible_up_to_its_own_limit() -> None:
    """Half the prompt tokens are in conversations whose history (97% of each prompt) is cached, half in
    new ones: a long cached prompt computes a few hundred tokens and meets the TTFT SLO, a long new one
    cannot. Spread evenly (48.5% of every prompt), a long prompt keeps half its tokens to compute and
    misses: the even spread counts too few prompts feasible, and tells the user so."""
    mixed = model(0.485, ((0.97, 0.5),))
    cached, new, even = model(0.97, None), model(0.0, None), model(0.485, None)
    assert mixed.prefill_feasible_share == pytest.approx(
        0.5 * cached.prefill_feasible_share + 0.5 * new.prefill_feasible_share
    )
    assert mixed.prefill_limit_tokens == pytest.approx(new.prefill_limit_tokens)
    assert mixed.prefill_limit_cached_tokens == pytest.approx(cached.prefill_limit_tokens)
    assert even.prefill_limit_cached_tokens is None
    assert mixed.prefill_feasible_share > even.prefill_feasible_share + 0.05


def test_a_mix_where_every_prompt_hits_the_mean_rate_sizes_as_none() -> None:
    for rate in (1.0, 4.0, 12.0):
        assert model(0.5, ((0.5, 1.0),), rate).prefill_replicas(rate) == model(
            0.5, None, rate
        ).prefill_replicas(rate)


def test_the_predicted_ttft_mixes_the_populations() -> None:
    """The TTFT quantiles (what the online correction is solved against) come from both kinds of prompt:
    at the median a cached prompt's, at the 90th percentile a new long one's."""
    mixed, cached, new = model(0.485, ((0.97, 0.5),)), model(0.97, None), model(0.0, None)
    for rate in (0.0, 4.0):  # at no load: each prompt alone
        for quantile in (0.3, 0.9):
            at = mixed.ttft_quantile_seconds(40, rate, quantile)
            assert (
                cached.ttft_quantile_seconds(40, rate, quantile)
                < at
                < new.ttft_quantile_seconds(40, rate, quantile)
            )


# ------------------------------------------------------------------ the router's positions -> a mix


def positions_of(prompts: list[tuple[int, float]]) -> tuple[list[float], list[float]]:
    """Sampled positions and reused ones for prompts of (blocks, share cached), every block sampled."""
    sampled: list[float] = []
    reused: list[float] = []
    for blocks, cached in prompts:
        for j in range(blocks):
            position = (j + 0.5) / blocks
            sampled.append(position)
            if position < cached:
                reused.append(position)
    return sampled, reused


def mix_of(prompts: list[tuple[int, float]]) -> tuple[tuple[float, float], ...] | None:
    sampled, reused = positions_of(prompts)
    return hit_mix_from_positions(
        histogram_from_values(np.asarray(sampled), REUSE_POSITION_BUCKETS),
        histogram_from_values(np.asarray(reused), REUSE_POSITION_BUCKETS),
    )


def test_continuations_and_new_conversations_read_as_two_populations() -> None:
    """Half the prompts find 97% of themselves cached, half nothing: populations near the top holding half
    the tokens (read to a position tenth: 3 of the 4 blocks in the last tenth were cached), and nothing
    for the rest."""
    mix = mix_of([(40, 0.97)] * 30 + [(40, 0.0)] * 30)
    assert mix is not None and min(level for level, _ in mix) >= 0.9
    assert sum(share for _, share in mix) == pytest.approx(0.5)
    assert sum(level * share for level, share in mix) / 0.5 == pytest.approx(0.97, abs=0.02)


def test_a_shared_half_reads_as_every_prompt_at_half() -> None:
    """Every prompt repeats a shared first half (a long system prompt): all prompts, half of each."""
    mix = mix_of([(20, 0.5)] * 40)
    assert mix == ((0.5, 1.0),)
    populations = prefix_populations(0.5, mix)
    assert [(p.hit, p.share) for p in populations] == [(0.5, 1.0)]


def test_the_mix_weighs_prompts_by_their_tokens() -> None:
    """A long cached prompt outweighs a short new one: shares are of prompt tokens, as the hit rate is."""
    mix = mix_of([(60, 0.97)] * 10 + [(20, 0.0)] * 10)
    assert mix is not None
    assert sum(share for _, share in mix) == pytest.approx(0.75, abs=0.02)


def test_too_few_samples_or_an_empty_position_say_nothing() -> None:
    few = [(10, 0.9)] * ((MIN_POSITION_SAMPLES - 1) // 10)
    assert mix_of(few) is None
    assert mix_of([(1, 0.9)] * MIN_POSITION_SAMPLES) is None  # every sample at 0.5: the other tenths empty
    assert mix_of([(10, 0.9)] * MIN_POSITION_SAMPLES) is not None


def test_noise_that_reads_later_positions_as_more_reused_is_evened_out() -> None:
    """A later block cannot be cached without the prefix before it: a position reading more reused than
    an earlier one is sampling noise, and the shares are made non-increasing (no negative population)."""
    sampled = list(np.linspace(0.005, 0.995, 400))
    reused = [p for p in sampled if p < 0.3 or 0.6 < p < 0.65]
    mix = hit_mix_from_positions(
        histogram_from_values(np.asarray(sampled), REUSE_POSITION_BUCKETS),
        histogram_from_values(np.asarray(reused), REUSE_POSITION_BUCKETS),
    )
    assert mix is not None and all(share > 0 for _, share in mix)
    assert math.isclose(sum(share for _, share in mix), 1.0)
    assert max(level for level, _ in mix) <= 0.3 + 1e-9
