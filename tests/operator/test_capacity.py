"""The capacity model, with literal expectations and the counterfactual each one guards against."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_operator.api import SloSpec
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.lengths import LengthDistribution
from dopd_operator.profile_presets import PRESETS
from dopd_operator.queueing import erlang_c, fewest_meeting


@pytest.mark.parametrize(
    ("servers", "load", "expected"),
    [
        pytest.param(1, 0.5, 0.5, id="M/M/1 waits with probability rho"),
        pytest.param(2, 1.0, 1 / 3, id="two servers at load 1"),
        pytest.param(4, 0.0, 0.0, id="no load never waits"),
        pytest.param(3, 3.0, 1.0, id="saturated always waits"),
    ],
)
def test_erlang_c(servers: int, load: float, expected: float) -> None:
    assert erlang_c(servers, load) == pytest.approx(expected)


def test_gamma_fit_reproduces_mean_and_p90() -> None:
    dist = LengthDistribution.from_mean_p90(1000, 2000)
    assert dist.moment(1) == pytest.approx(1000)
    assert dist.quantile(0.9) == pytest.approx(2000)


@pytest.mark.parametrize(
    ("mean", "p90", "second_moment_ratio"),
    [
        # The Azure 2023 conversation prompts (mean 1155, P90 2734) have E[L^2] = 1.92 x mean^2; a
        # log-normal through the same two numbers says 4.0x (and doubles the quadratic prefill cost).
        pytest.param(1155, 2734, 2.10, id="azure-conversation-prompts"),
        # Mooncake's (mean 15325, P90 38611): measured 2.44x.
        pytest.param(15325, 38611, 2.42, id="mooncake-prompts"),
        pytest.param(200, 200, 1.0, id="all-the-same-length"),
    ],
)
def test_length_fit_keeps_the_second_moment_near_real_traces(
    mean: float, p90: float, second_moment_ratio: float
) -> None:
    dist = LengthDistribution.from_mean_p90(mean, p90)
    assert dist.moment(2) / mean**2 == pytest.approx(second_moment_ratio, abs=0.01)


@pytest.mark.parametrize(
    ("limit", "share"),
    [
        # Mooncake: 65% of prompts below 15,000 tokens by the fit (56% measured in the trace)
        pytest.param(15_000, 0.651, id="a-third-of-mooncake-prompts-cannot-meet-the-ttft"),
        pytest.param(1e9, 1.0, id="no-limit"),
        pytest.param(0, 0.0, id="nothing-fits"),
    ],
)
def test_lengths_below_a_limit(limit: float, share: float) -> None:
    lengths, got = LengthDistribution.from_mean_p90(15325, 38611).below(limit)
    assert got == pytest.approx(share, abs=1e-3)
    assert float(max(lengths)) <= max(limit, 0)


def test_length_variance_raises_prefill_time_convexity() -> None:
    """E[T_p(L)] > T_p(E[L]) for a spread of lengths; equal for a point mass."""
    profile = PRESETS["llama3-8b-h100"]
    slo = SloSpec()
    narrow = CapacityModel(profile, slo, Workload(1.0, 2000, 2000, 100, 100))
    wide = CapacityModel(profile, slo, Workload(1.0, 2000, 4500, 100, 100))
    # 2000-token prompts: b*2000 + c*2000^2 = 53.7 ms of work, plus the 8.2 ms fixed cost shared by the
    # 8192/2000 = 4.1 prompts of a full batch (2.0 ms). Priced as a batch of one (the old model) it
    # would be 61.9 ms, and the pool 11% too large.
    assert narrow.prefill_service_seconds_mean == pytest.approx(0.05572, abs=1e-5)
    assert wide.prefill_service_seconds_mean > narrow.prefill_service_seconds_mean


@pytest.mark.parametrize(
    ("hit_rate", "expected_ms"),
    [
        pytest.param(0.0, 55.72, id="no-cache"),
        # half the prompt cached: b*1000 + c*(2000^2 - 1000^2) = 31.9 ms of work, a/8.2 = 1.0 ms fixed
        pytest.param(0.5, 32.86, id="half-the-prompt-cached"),
    ],
)
def test_prefix_cache_hits_lower_prefill_demand(hit_rate: float, expected_ms: float) -> None:
    model = CapacityModel(
        PRESETS["llama3-8b-h100"],
        SloSpec(),
        Workload(1.0, 2000, 2000, 100, 100, prefix_cache_hit_rate=hit_rate),
    )
    assert model.prefill_service_seconds_mean * 1000 == pytest.approx(expected_ms, abs=0.01)


def test_decode_batch_is_the_largest_meeting_tpot() -> None:
    profile = PRESETS["opt-13b-a100"]
    model = CapacityModel(profile, SloSpec(tpot_seconds=0.04), Workload(1.0, 512, 512, 64, 64))
    assert profile.decode_step_seconds(model.decode_batch_size, model.context_tokens_mean) <= 0.04
    assert profile.decode_step_seconds(model.decode_batch_size + 1, model.context_tokens_mean) > 0.04
    assert model.decode_batch_limited_by == "tpot"


def test_decode_batch_is_limited_by_kv_for_long_contexts() -> None:
    profile = PRESETS["opt-13b-a100"]  # 56,518 tokens of KV
    model = CapacityModel(profile, SloSpec(tpot_seconds=1.0), Workload(1.0, 8000, 8000, 1000, 1000))
    assert model.decode_batch_limited_by == "kv"
    # The router reserves prompt + output (9000 tokens) per sequence: 6 fit. Sized on the mean resident
    # context (8500 tokens) it would admit 6.6 and the seventh sequence would wait for KV.
    assert model.decode_batch_size == 6


def test_littles_law_sizes_decode() -> None:
    model = CapacityModel(PRESETS["llama3-8b-h100"], SloSpec(), Workload(50.0, 1000, 2000, 200, 400))
    # The residents of a batch are length-biased (long outputs stay): they hold 1000 prompt + 155
    # generated tokens on average, not 1000 + 100. At the 256-sequence limit a step takes 23.7 ms (22.9
    # ms on the unbiased context). But one replica at 50 rps does not fill its slots: 50 rps x 199
    # decode steps at 19.9 ms (the step of 198 sequences) keep 198 sequences resident, the batch at
    # which residents and step time agree (Little's law); sized at the full batch's 23.7 ms it would be
    # 235.
    assert model.context_tokens_mean == pytest.approx(1155.5, abs=0.1)
    assert model.decode_step_seconds == pytest.approx(0.02365, abs=1e-5)
    assert model.decode_mean_batch(1, 50.0) == pytest.approx(197.5, abs=0.1)
    assert model.decode_concurrency(50.0, 1) == pytest.approx(197.5, abs=0.1)
    assert model.predicted_tpot_seconds(198.5) * 199 * 50.0 == pytest.approx(197.5, abs=0.1)
    assert model.decode_replicas(50.0) == 1
    # Twice the load cannot settle on one replica (its slots fill and sequences queue), and two replicas
    # settle at the same 198 each; 0 load needs none.
    assert model.decode_mean_batch(1, 100.0) == model.decode_batch_size
    assert model.decode_mean_batch(2, 100.0) == pytest.approx(197.5, abs=0.1)
    assert model.decode_replicas(100.0) == 2
    assert model.decode_replicas(0.0) == 0


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        # The router reserves a resident's prompt and whole output (6000 + 465 tokens, length-biased) in
        # 426,788 of KV: 66.0 slots a replica. 140 rps x 299 steps x 28.3 ms keeps 1186 sequences
        # resident; 17 replicas (1122 slots) cannot hold them.
        pytest.param(17, 0.0, id="fewer-slots-than-sequences"),
        # 18 replicas (1188 slots) are 99.8% busy: waits are long, a fifth of sequences miss.
        pytest.param(18, 0.7979, id="just-enough-slots-is-not-enough"),
        # 19 replicas (1254 slots) are 94.5% busy, so sequences still often wait for a slot; but 299
        # output tokens at 22 ms of TPOT slack each absorb seconds of waiting. Counting any wait as a miss,
        # 19 replicas would reach only 97.0% (1 - P(wait)) and the model would ask for more.
        pytest.param(19, 0.9999, id="waits-absorbed-by-tpot-slack"),
        pytest.param(21, 1.0, id="headroom"),
    ],
)
def test_decode_attainment_counts_slot_waits_within_tpot_slack(replicas: int, expected: float) -> None:
    model = CapacityModel(PRESETS["llama3-8b-h100"], SloSpec(), Workload(140.0, 6000, 12000, 300, 600))
    assert model.decode_batch_limited_by == "kv"
    assert model.decode_attainment(replicas, 140.0) == pytest.approx(expected, abs=5e-4)


def test_more_prefill_replicas_never_raise_predicted_ttft() -> None:
    model = CapacityModel(PRESETS["llama3-8b-h100"], SloSpec(), Workload(30.0, 1500, 3000, 200, 400))
    ttfts = [model.ttft_percentile_seconds(n, 30.0) for n in range(1, 8)]
    assert all(a >= b for a, b in itertools.pairwise(ttfts))
    assert model.ttft_percentile_seconds(model.prefill_replicas(30.0), 30.0) <= 1.5


def test_unreachable_ttft_is_flagged_not_looped_forever() -> None:
    # a 50k-token prompt cannot prefill within 0.1 s on any number of replicas
    model = CapacityModel(
        PRESETS["llama3-8b-h100"], SloSpec(ttft_seconds=0.1), Workload(2.0, 50_000, 60_000, 10, 10)
    )
    assert not model.ttft_reachable
    # with no time left for waiting, the pool is sized so at most 1% of requests wait at all
    replicas = model.prefill_replicas(2.0)
    assert model.wait_percentile_seconds(replicas, 2.0) == 0.0
    assert model.wait_percentile_seconds(replicas - 1, 2.0) > 0.0


def test_distserve_figure1_anchor_shape() -> None:
    """DistServe Fig. 1 (OPT-13B, one A100, input 512, output 64, TTFT 0.4 s / TPOT 0.04 s at P90):
    prefill-only ~5.6 rps, decode-only ~10 rps per GPU, so prefill needs more GPUs than decode.
    Our model (docs/profiles.md) must show the same shape: the best layout has more prefill than decode."""
    model = CapacityModel(
        PRESETS["opt-13b-a100"],
        SloSpec(ttft_seconds=0.4, tpot_seconds=0.04, attainment_target=0.9),
        Workload(1.0, 512, 512, 64, 64),
    )
    prefill_only = model.sustainable_rps(1, 10_000)  # one prefill GPU, decode unconstrained
    decode_only = model.sustainable_rps(10_000, 1)
    assert prefill_only < decode_only  # decode is the cheaper phase for this short-output load
    # One prefill GPU serves 11.4 rps within 0.4 s (the KV transfer included), one decode GPU 18.9
    # (DistServe: 5.6 and 10; the preset is kernel time, without the serving overheads). Prefill is the
    # dearer phase, so the best three-GPU layout is 2P:1D (18.9 rps) rather than 1P:2D (11.4 rps), as in
    # the figure.
    assert prefill_only == pytest.approx(11.4, abs=0.1)
    assert decode_only == pytest.approx(18.9, abs=0.1)
    assert model.sustainable_rps(2, 1) > model.sustainable_rps(1, 2)
    for rate in (5.0, 10.0, 20.0, 40.0):
        assert model.prefill_replicas(rate) >= model.decode_replicas(rate)


@settings(max_examples=300, deadline=None)
@given(
    threshold=st.integers(min_value=0, max_value=600),
    start=st.integers(min_value=0, max_value=600),
    floor=st.integers(min_value=0, max_value=50),
    span=st.integers(min_value=0, max_value=550),
)
def test_fewest_meeting_finds_the_threshold_from_any_start(
    threshold: int, start: int, floor: int, span: int
) -> None:
    """The search behind every pool size and the simulator's peak layouts: the smallest n in [floor,
    ceiling] meeting a monotone predicate, whatever the guess; the ceiling when nothing meets."""
    ceiling = floor + span
    calls: list[int] = []

    def meets(n: int) -> bool:
        assert floor <= n <= ceiling, f"probed {n} outside [{floor}, {ceiling}]"
        calls.append(n)
        return n >= threshold

    found = fewest_meeting(meets, start, ceiling, floor=floor)
    assert found == min(max(threshold, floor), ceiling)
    assert len(calls) <= 4 * (ceiling - floor + 1).bit_length() + 2


def test_known_pairs_weight_each_prompt_by_its_own_output() -> None:
    """A decode resident stays for its output's steps, so its prompt counts by that output. Where long
    prompts get short answers (the Azure trace: correlation -0.17) the residents hold less context than
    independent lengths say, and the decode pool settles at a faster step. Taken as independent, these
    pairs would put the mean resident at a 2250-token prompt; paired, at 818."""
    prompts, outputs = (4000.0, 500.0) * 50, (50.0, 500.0) * 50

    def model(known: bool) -> CapacityModel:
        workload = Workload(
            20.0,
            2250,
            4000,
            275,
            500,
            input_tokens_known=prompts if known else None,
            output_tokens_known=outputs if known else None,
        )
        return CapacityModel(PRESETS["llama3-8b-h100"], SloSpec(), workload)

    paired = model(known=True)
    resident_output = (50**2 + 500**2) / 550
    assert paired.context_tokens_mean == pytest.approx(
        (4000 * 50 + 500 * 500) / 550 + resident_output / 2, rel=1e-6
    )
    # The same lengths with every output alike: pairing changes nothing.
    alike = CapacityModel(
        PRESETS["llama3-8b-h100"],
        SloSpec(),
        Workload(20.0, 2250, 4000, 200, 200, input_tokens_known=prompts, output_tokens_known=(200.0,) * 100),
    )
    assert alike.context_tokens_mean == pytest.approx(2250 + 100, rel=1e-6)
    assert paired.decode_step_seconds < model(known=False).decode_step_seconds


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=1.0, max_value=400.0),
    replicas=st.integers(min_value=1, max_value=12),
    prompt=st.floats(min_value=100.0, max_value=8000.0),
    output=st.floats(min_value=20.0, max_value=1000.0),
)
def test_the_settled_decode_batch_obeys_littles_law(
    rate: float, replicas: int, prompt: float, output: float
) -> None:
    """Below its slot limit a decode pool holds rate x residency sequences, the residency being its
    steps at the step time of the batch it holds; more replicas never hold more per replica."""
    model = CapacityModel(
        PRESETS["llama3-8b-h100"], SloSpec(), Workload(rate, prompt, prompt * 2, output, output * 2)
    )
    batch = model.decode_mean_batch(replicas, rate)
    assert 0 < batch <= model.decode_batch_size + 1
    assert model.decode_mean_batch(replicas + 1, rate) <= batch
    if batch < model.decode_batch_size:
        residency_s = model.decode_model.steps_mean * model.predicted_tpot_seconds(batch + 1)
        assert batch * replicas == pytest.approx(rate * residency_s, rel=1e-6)
