"""The capacity model, with literal expectations and the counterfactual each one guards against."""

from __future__ import annotations

import itertools
import math

import pytest

from dopd_operator.api import SloSpec
from dopd_operator.capacity import CapacityModel, LengthDistribution, Workload, erlang_c
from dopd_operator.profile_presets import PRESETS


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


def test_lognormal_fit_reproduces_mean_and_p90() -> None:
    dist = LengthDistribution.from_mean_p90(1000, 2000)
    assert dist.moment(1) == pytest.approx(1000)
    assert dist.quantile(0.9) == pytest.approx(2000)


def test_length_variance_raises_prefill_time_convexity() -> None:
    """E[T_p(L)] > T_p(E[L]) for a spread of lengths; equal for a point mass."""
    profile = PRESETS["llama3-8b-h100"]
    slo = SloSpec()
    narrow = CapacityModel(profile, slo, Workload(1.0, 2000, 2000, 100, 100))
    wide = CapacityModel(profile, slo, Workload(1.0, 2000, 4500, 100, 100))
    assert narrow.prefill_service_seconds_mean == pytest.approx(profile.prefill_seconds(2000))
    assert wide.prefill_service_seconds_mean > narrow.prefill_service_seconds_mean


def test_decode_batch_is_the_largest_meeting_tpot() -> None:
    profile = PRESETS["opt-13b-a100"]
    model = CapacityModel(profile, SloSpec(tpot_seconds=0.04), Workload(1.0, 512, 512, 64, 64))
    assert profile.decode_step_seconds(model.decode_batch_size, model.context_tokens_mean) <= 0.04
    assert profile.decode_step_seconds(model.decode_batch_size + 1, model.context_tokens_mean) > 0.04
    assert model.decode_batch_limited_by == "tpot"


def test_decode_batch_is_limited_by_kv_for_long_contexts() -> None:
    profile = PRESETS["opt-13b-a100"]  # about 56k tokens of KV
    model = CapacityModel(profile, SloSpec(tpot_seconds=1.0), Workload(1.0, 8000, 8000, 1000, 1000))
    assert model.decode_batch_limited_by == "kv"
    assert model.decode_batch_size == math.floor(profile.kv_capacity_tokens * 0.9 / 8500)


def test_littles_law_sizes_decode() -> None:
    model = CapacityModel(PRESETS["llama3-8b-h100"], SloSpec(), Workload(50.0, 1000, 2000, 200, 400))
    # 50 rps x 200 tokens x step seconds resident sequences, B* per replica at most
    concurrency = model.decode_concurrency(50.0)
    assert concurrency == pytest.approx(50.0 * 200 * model.decode_step_seconds)
    replicas = model.decode_replicas(50.0)
    assert replicas * model.decode_batch_size >= concurrency
    assert model.decode_replicas(0.0) == 0


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
    decode_only = model.decode_rps_per_replica
    assert prefill_only < decode_only  # decode is the cheaper phase for this short-output load
    for rate in (5.0, 10.0, 20.0, 40.0):
        assert model.prefill_replicas(rate) >= model.decode_replicas(rate)
    assert model.prefill_replicas(40.0) > model.decode_replicas(40.0)
