"""The prefill pool's prefix cache: LRU by blocks, sized by the ready replicas, credited in prefill time,
and the Mooncake trace's block hashes carried through loading, windowing and rate scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import make_trace, toy_config, toy_profile

from dopd_forecaster.datasets import MOONCAKE_SYNTHETIC, data_path
from dopd_forecaster.traces import Trace
from dopd_operator.prefix_curve import PrefixCacheCurve
from dopd_sim.cluster import Simulator
from dopd_sim.config import SimConfig
from dopd_sim.observe import ReuseLog
from dopd_sim.policies.base import Layout, TickInput
from dopd_sim.policies.oracle import OraclePolicy
from dopd_sim.policies.sizing import warm_start_layout
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.prefix_cache import PrefixCache, PrefixTrace, known_hit_curve, known_hit_mix
from dopd_sim.run import simulate
from dopd_sim.trace_spec import generate_from_spec
from dopd_sim.workload import load_workload, scale_rate


def test_leading_blocks_hit_and_the_least_recently_used_go_first() -> None:
    cache = PrefixCache(block_tokens=10, blocks_per_replica=3)
    cache.resize(1)
    cache.insert([1, 2, 3], 30)
    # Leading blocks only: 1 and 2 hit, 9 breaks the prefix, so 3 does not count although cached.
    assert cache.cached_tokens([1, 2, 9, 3], 40, 0.0) == 20
    cache.insert([4], 10)  # capacity 3: evicts 3, the least recently used (1 and 2 were just touched)
    assert cache.cached_tokens([3], 10, 1.0) == 0
    assert cache.cached_tokens([1, 2], 20, 2.0) == 19  # a whole prompt cached still computes its last token
    assert cache.hit_rate(0.0, 3.0) == pytest.approx((20 + 0 + 19) / (40 + 10 + 20))
    cache.resize(0)  # no ready prefill replica: nothing cached
    assert cache.cached_tokens([1], 10, 3.0) == 0


def test_a_prompts_head_outlives_its_tail() -> None:
    """Under pressure a cached prompt loses its last blocks first, as vLLM (reverse-order free) and
    SGLang (leaves first) evict: its head still serves the next prompt that shares it. Evicting the head
    first would leave a cached tail that no lookup can reach (a prefix is matched from its start)."""
    cache = PrefixCache(block_tokens=10, blocks_per_replica=3)
    cache.resize(1)
    cache.insert([1, 2, 3], 30)
    cache.insert([4], 10)  # capacity 3: one of the first prompt's blocks goes, its tail
    assert cache.cached_tokens([1, 2, 3, 5], 40, 0.0) == 20


def test_a_partial_last_block_takes_no_room_and_is_never_served() -> None:
    """Only full blocks are cached (vLLM hashes full blocks only): a prompt's partial tail block neither
    evicts a block a later prompt could use nor counts as a hit when the same prompt comes again (its
    last tokens are computed anew)."""
    cache = PrefixCache(block_tokens=10, blocks_per_replica=2)
    cache.resize(1)
    cache.insert([1, 2], 20)
    cache.insert([3, 4], 15)  # a full block and a partial one: only 3 enters, evicting 2 (the tail)
    assert cache.cached_tokens([3, 4], 15, 0.0) == 10  # its partial block is not there to hit
    # 1 is still cached: the partial block took no room (cached whole, it would have evicted 1 too).
    assert cache.cached_tokens([1, 2], 20, 1.0) == 10


def _prefixed(arrivals: list[float], prompts: list[int], blocks: list[tuple[int, ...]]) -> PrefixTrace:
    base = make_trace(arrivals, prompts, [2] * len(prompts))
    return PrefixTrace(
        base.arrival_s, base.input_tokens, base.output_tokens, "test", "canonical", tuple(blocks), 100
    )


def test_a_cached_prefix_is_not_recomputed() -> None:
    # Prefill a + b*new + c*(l^2 - cached^2) with a = 0.01, b = 1e-4: the second 400-token prompt shares
    # its first 300 tokens (3 blocks of 100) with the first, so it computes 100 new tokens: 0.02 s
    # instead of 0.05 s. Without the block hashes both would take 0.05 s.
    profile = toy_profile(prefill_a=0.01, prefill_b=1e-4)
    trace = _prefixed([0.0, 1.0], [400, 400], [(1, 2, 3, 4), (1, 2, 3, 5)])
    result = simulate(trace, StaticPolicy(1, 1), toy_config(profile))
    assert result.ttft_s.tolist() == pytest.approx([0.05, 0.02])
    plain = simulate(make_trace([0.0, 1.0], [400, 400], [2, 2]), StaticPolicy(1, 1), toy_config(profile))
    assert plain.ttft_s.tolist() == pytest.approx([0.05, 0.05])


def test_the_simulator_reports_its_windowed_hit_rate() -> None:
    profile = toy_profile(prefill_a=0.01, prefill_b=1e-4)
    trace = _prefixed([0.0, 1.0], [400, 400], [(1, 2, 3, 4), (1, 2, 3, 5)])
    sim = Simulator(trace, StaticPolicy(1, 1), toy_config(profile))
    sim.run()
    assert sim.prefix_cache_hit_rate(0.0, 2.0) == pytest.approx(300 / 800)
    assert sim.prefix_cache_hit_rate(0.5, 2.0) == pytest.approx(300 / 400)


def test_a_runs_summary_reports_the_hit_rate_of_the_span_it_scores() -> None:
    profile = toy_profile(prefill_a=0.01, prefill_b=1e-4)
    trace = _prefixed([0.0, 1.0], [400, 400], [(1, 2, 3, 4), (1, 2, 3, 5)])
    config = toy_config(profile)
    assert simulate(trace, StaticPolicy(1, 1), config).summary.prefix_cache_hit_rate == pytest.approx(0.375)
    later = simulate(trace, StaticPolicy(1, 1), config, score_from_s=0.5).summary
    assert later.prefix_cache_hit_rate == pytest.approx(0.75)
    plain = make_trace([0.0, 1.0], [400, 400], [2, 2])
    assert simulate(plain, StaticPolicy(1, 1), config).summary.prefix_cache_hit_rate is None


def test_mooncake_blocks_follow_windowing_and_rate_scaling() -> None:
    trace = load_workload(str(data_path(MOONCAKE_SYNTHETIC)), duration_s=60.0)
    assert isinstance(trace, PrefixTrace)
    # 512-token blocks: a prompt has ceil(length / 512) of them.
    assert all(
        len(b) == -(-int(n) // 512) for b, n in zip(trace.prefix_blocks, trace.input_tokens, strict=True)
    )
    doubled = scale_rate(trace, 2.0, seed=1)
    assert isinstance(doubled, PrefixTrace) and len(doubled) == 2 * len(trace)
    # The second copy has its own hash space: its requests share no block with the first's, so the
    # cache credits the trace's own reuse, not a copy of every prompt.
    original = {h for b in trace.prefix_blocks for h in b}
    shifted = {h for b in doubled.prefix_blocks for h in b} - original
    assert len(shifted) == len(original)
    assert np.array_equal(np.sort(doubled.input_tokens), np.sort(np.tile(trace.input_tokens, 2)))


def test_the_routers_curve_predicts_the_hit_rate_of_larger_pools() -> None:
    """What the planner sizes with: the reuse distances the router samples from the Mooncake prompts,
    anchored at the hit rate a pool measures, predict the hit rate of pools 2-8x larger (their cache is
    their replicas' KV memory), as the simulated cache then measures it: within 0.015 on this window.
    (SHARDS-adj's correction counted whole read 0.04 low here: 85 samples too many by chance.)"""
    trace = load_workload(str(data_path(MOONCAKE_SYNTHETIC)), rate_scale=2.0, seed=0, duration_s=600.0)
    assert isinstance(trace, PrefixTrace)
    config = SimConfig()
    replica_tokens = config.resolved_profile().kv_capacity_tokens
    window = (300.0, 600.0)  # the cache has warmed for 5 minutes
    shares = ReuseLog(trace).share_within(*window)
    assert shares is not None
    measured = {}
    for replicas in (8, 16, 32, 64):
        sim = Simulator(trace, StaticPolicy(replicas, 4), config)
        sim.run()
        hit_rate = sim.prefix_cache_hit_rate(*window)
        assert hit_rate is not None
        measured[replicas] = hit_rate
    assert measured[64] > 2 * measured[16] > 0.2  # the hit rate grows with the pool
    for now, larger in ((8, 32), (8, 64), (16, 64), (32, 64)):
        curve = PrefixCacheCurve(
            tuple(b for b, _ in shares), tuple(s for _, s in shares), measured[now], now * replica_tokens
        )
        assert curve.hit_rate(larger * replica_tokens) == pytest.approx(measured[larger], abs=0.02), (
            now,
            larger,
        )


def test_the_oracles_known_curve_is_the_hit_rate_each_pool_size_gets() -> None:
    """The oracle's perfect knowledge of the load includes how much of it a cache serves: every block's
    exact reuse distance gives the hit rate a window's requests see at each pool size, with no anchor,
    as the simulated cache of a pool that size measures it: within 0.02, and above it by up to 0.013 on
    this trace, since a prompt's blocks enter the cache only when its prefill ends, so a prompt that
    shares a prefix with one still in flight misses it (as in vLLM), where a stack distance counts it.
    (0.015-0.025 while the simulated cache held every prompt's partial last block as a whole block.)"""
    trace = load_workload(str(data_path(MOONCAKE_SYNTHETIC)), rate_scale=2.0, seed=0, duration_s=600.0)
    assert isinstance(trace, PrefixTrace)
    config = SimConfig()
    replica_tokens = config.resolved_profile().kv_capacity_tokens
    lo, hi = np.searchsorted(trace.arrival_s, (300.0, 600.0))
    curve = known_hit_curve(trace, int(lo), int(hi), 64 * replica_tokens)
    assert curve is not None
    for replicas in (8, 16, 32, 64):
        sim = Simulator(trace, StaticPolicy(replicas, 4), config)
        sim.run()
        measured = sim.prefix_cache_hit_rate(300.0, 600.0)
        assert measured is not None
        assert curve.hit_rate(replicas * replica_tokens) == pytest.approx(measured, abs=0.02), replicas
    assert curve.ceiling_hit_rate == pytest.approx(curve.hit_rate(64 * replica_tokens))


def test_most_hits_are_whole_prompts_and_the_routers_positions_say_so() -> None:
    """How the hits fall on prompts (`known_hit_mix`, the oracle's; the router's position histograms,
    dopd's): on the Mooncake prompts most cached tokens are in prompts found 90% cached or more (a
    conversation's next turn), the rest of the prompts find nothing; the router, sampling a thirty-second
    of the blocks, reads the same within a few points; both keep the hit rate they describe."""
    trace = load_workload(str(data_path(MOONCAKE_SYNTHETIC)), rate_scale=2.0, seed=0, duration_s=600.0)
    assert isinstance(trace, PrefixTrace)
    lo, hi = np.searchsorted(trace.arrival_s, (300.0, 600.0))
    ample = 1e12  # every reuse the window's prompts have, as the router counts them (any distance)
    known = known_hit_mix(trace, int(lo), int(hi), ample)
    curve = known_hit_curve(trace, int(lo), int(hi), ample)
    assert curve is not None
    mean = sum(level * share for level, share in known)
    assert mean == pytest.approx(curve.observed_hit_rate, abs=0.01)
    deep = sum(share for level, share in known if level >= 0.9)
    assert deep > 0.85 * sum(share for _, share in known)
    sampled = ReuseLog(trace).hit_mix(300.0, 600.0)
    assert sampled is not None
    assert sum(level * share for level, share in sampled) == pytest.approx(mean, abs=0.06)
    assert sum(share for level, share in sampled if level >= 0.9) == pytest.approx(deep, abs=0.08)


def test_the_oracle_sizes_its_first_layout_with_the_hits_ahead() -> None:
    """Perfect knowledge includes the cache from the start: at t=0, with no pool yet, the oracle's first
    layout counts every hit its first window's prompts will get at each pool size (14% with an ample
    cache), not the 1% one replica's cache would get taken as the rate at every size (too few hits to
    scale a sampled curve from, but this one is known). So it buys the prefill that makes the long
    cached prompts feasible, as it does later in the run."""
    trace = load_workload(str(data_path(MOONCAKE_SYNTHETIC)), rate_scale=2.0, duration_s=600.0)
    assert isinstance(trace, PrefixTrace)
    plain = Trace(trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.source, trace.format)
    config = SimConfig()
    replica_tokens = config.resolved_profile().kv_capacity_tokens
    sim = Simulator(trace, StaticPolicy(1, 1), config)
    tick = TickInput(
        now_s=0.0,
        observation=sim.observer.observe(0.0, sim, warm_start=True),
        history_timestamps_s=np.zeros(0),
        history_arrival_rps=np.zeros(0),
        current=Layout(prefill=0, decode=0),
        config=config,
        profile=config.resolved_profile(),
    )
    assert tick.observation.prefill.ready == 0
    workload = OraclePolicy(trace)._workload(0.0, 150.0, config.window_seconds, tick)
    assert workload is not None and workload.prefix_cache_curve is not None
    assert workload.prefix_cache_hit_rate < 0.02  # one replica's cache, cold
    ceiling = workload.prefix_cache_curve.ceiling_hit_rate
    assert ceiling > 0.1
    assert workload.prefix_cache_curve.hit_rate(64 * replica_tokens) > 5 * workload.prefix_cache_hit_rate
    assert OraclePolicy(trace).initial_layout(tick).prefill > OraclePolicy(plain).initial_layout(tick).prefill


@pytest.mark.parametrize(("engine", "has_curve"), [("dopd", True), ("vllm", False)])
def test_the_oracle_knows_the_hits_ahead_and_the_curve_only_where_dopd_would(
    engine: str, has_curve: bool
) -> None:
    """Before any prompt has been served (no hit observed, no curve sampled), the oracle sizes for the
    hits its window's requests will get; the curve, as for every policy, only where the engine preset
    reads the router's (dopd's)."""
    trace = load_workload(str(data_path(MOONCAKE_SYNTHETIC)), duration_s=600.0)
    assert isinstance(trace, PrefixTrace)
    spec = SimConfig().spec.model_copy(update={"engine": engine})
    config = SimConfig(spec=spec)
    sim = Simulator(trace, StaticPolicy(16, 2), config)
    sim.run()
    observation = sim.observer.observe(1.0, sim).model_copy(update={"prefix_cache_hit_rate": None})
    tick = TickInput(
        now_s=1.0,
        observation=observation,
        history_timestamps_s=np.zeros(0),
        history_arrival_rps=np.zeros(0),
        current=Layout(prefill=16, decode=2),
        config=config,
        profile=config.resolved_profile(),
    )
    workload = OraclePolicy(trace)._workload(300.0, 450.0, 60.0, tick)
    assert workload is not None and workload.prefix_cache_hit_rate > 0.1
    assert (workload.prefix_cache_curve is not None) == has_curve
    assert workload.prefix_hit_mix  # where the hits fall, known whatever the engine


@pytest.mark.parametrize(("engine", "has_curve"), [("dopd", True), ("vllm", False), ("sglang", False)])
def test_policies_see_the_curve_only_where_the_engine_preset_reads_it(engine: str, has_curve: bool) -> None:
    """dopd's router measures the reuse distances; behind vLLM's or SGLang's routers the operator has no
    curve, so a simulated policy has none either (it would size for what production cannot see)."""
    trace = load_workload(str(data_path(MOONCAKE_SYNTHETIC)), duration_s=120.0)
    spec = SimConfig().spec.model_copy(update={"engine": engine})
    sim = Simulator(trace, StaticPolicy(4, 2), SimConfig(spec=spec))
    sim.run()
    observation = sim.observer.observe(120.0, sim)
    assert (observation.prefix_reuse_share_within is not None) == has_curve
    assert observation.prefix_cache_hit_rate is not None and observation.prefix_cache_hit_rate > 0


@pytest.mark.parametrize("engine", ["dopd", "vllm"])
def test_the_shared_warm_start_sizes_prefill_for_the_first_windows_hits(engine: str) -> None:
    """The cluster every scaling policy starts from is what a planner that watched the first window would
    order, and on a chat the cache serves a third or more of each prompt from its first minute (system
    prompts, recent turns). Where the router samples reuse distances (dopd's preset) the warm start sizes
    prefill for those hits, as the planner does a tick later; behind vLLM's router there is no curve and
    hits unknown are sized as none, so the start is the same as on a trace without block hashes."""
    trace = generate_from_spec("chat,conversations_per_s=10,duration_s=300", seed=0)
    assert isinstance(trace, PrefixTrace)
    plain = Trace(trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.source, trace.format)
    config = SimConfig(spec=SimConfig().spec.model_copy(update={"engine": engine}))

    def warm_start(t: Trace) -> Layout:
        sim = Simulator(t, StaticPolicy(1, 1), config)
        observation = sim.observer.observe(0.0, sim, warm_start=True)
        assert observation.prefix_cache_hit_rate is None  # no engine has served a prompt yet
        return warm_start_layout(observation, sim.profile, config, aggregated=False)

    cached, uncached = warm_start(trace), warm_start(plain)
    assert cached.decode == uncached.decode  # decode does not see the prefix cache
    if engine == "dopd":
        assert cached.prefill < uncached.prefill
    else:
        assert cached.prefill == uncached.prefill
