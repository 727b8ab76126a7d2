"""The emulator's core in virtual time: replicas really change the load each engine carries, drained pods
finish their work before their series vanish, and the trace loops or stops as asked."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from emulator_helpers import emulation, pods, pods_with, run_to, scrape
from sim_helpers import make_trace, toy_profile

from dopd_emulator.config import EmulatorConfig, StaticReplicas, TraceLoad
from dopd_emulator.core import Emulation
from dopd_emulator.replicas import ReplicaSnapshot
from dopd_emulator.store import Histogram
from dopd_operator.manifest import load_model
from dopd_operator.metrics.estimators import (
    HistogramSummary,
    summarize_histogram,
    tpot_attainment_with_waits,
)
from dopd_sim.workload import load_workload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# 25 rps of Azure-like requests (prompts ~1.1k, outputs ~210 tokens) on the Llama-3-8B/H100 profile.
LOAD = load_workload("synthetic:poisson,rate_rps=25,duration_s=240", seed=1)


def decode_itl(em: Emulation, pod: str) -> tuple[float, float]:
    """(sum, count) of the pod's vLLM inter-token latency histogram."""
    for series in em.recorder.store.series("vllm:inter_token_latency_seconds"):
        if series.pod == pod:
            return series.value.sum, series.value.count  # type: ignore[union-attr]
    raise AssertionError(f"no histogram for {pod}")


def run_window(em: Emulation, end_s: float) -> tuple[float, float]:
    """Advance to `end_s`; (mean running sequences per ready decode replica, mean ITL on decode-0)."""
    start_sum, start_count = decode_itl(em, "m1-decode-0")
    running: list[float] = []
    while em.sim.now_s < end_s - 1e-9:
        em.advance_to(min(em.sim.now_s + 0.1, end_s))
        per_replica = em.truth().decode_running_per_replica
        assert per_replica is not None
        running.append(per_replica)
    end_sum, end_count = decode_itl(em, "m1-decode-0")
    return statistics.fmean(running), (end_sum - start_sum) / (end_count - start_count)


def test_more_decode_replicas_lower_the_running_sequences_and_the_latency_fewer_raise_them() -> None:
    em = emulation("vllm", LOAD, prefill=2, decode=1)
    one_running, one_itl = run_window(em, 60.0)
    em.apply_replicas(pods(2, 4))
    four_running, four_itl = run_window(em, 120.0)
    em.apply_replicas(pods(2, 1))
    again_running, again_itl = run_window(em, 180.0)
    # Measured 52.4 / 10.4 / 52.3 sequences per replica and 10.9 / 7.9 / 10.8 ms between tokens. An
    # emulator that ignored its replicas would show the first numbers in all three windows.
    assert one_running == pytest.approx(52.4, rel=0.05)
    assert four_running == pytest.approx(10.4, rel=0.1)
    assert again_running == pytest.approx(52.3, rel=0.05)
    assert one_itl == pytest.approx(0.0109, rel=0.05)
    assert four_itl == pytest.approx(0.0079, rel=0.05)
    assert again_itl == pytest.approx(0.0108, rel=0.05)


def test_a_pod_that_leaves_drains_its_replica_before_its_series_vanish() -> None:
    em = emulation("sglang", LOAD, prefill=2, decode=3)
    run_to(em, 30.0)
    em.apply_replicas(pods(2, 1))
    run_to(em, 30.2)
    truth = em.truth()
    assert truth.ready["decode"] == ["m1-decode-0"]
    assert truth.draining["decode"] == ["m1-decode-1", "m1-decode-2"]
    assert all(truth.pods[p].running > 0 for p in truth.draining["decode"])  # still decoding
    assert pods_with(scrape(em), "sglang:num_running_reqs") == {
        "m1-prefill-0", "m1-prefill-1", "m1-decode-0", "m1-decode-1", "m1-decode-2"
    }  # fmt: skip
    # Outputs are at most 2048 tokens of at most ~25 ms steps here: drained within a minute.
    run_to(em, 90.0)
    truth = em.truth()
    assert truth.draining == {"prefill": [], "decode": []}
    assert pods_with(scrape(em), "sglang:num_running_reqs") == {"m1-prefill-0", "m1-prefill-1", "m1-decode-0"}
    assert truth.arrivals_total - truth.completed_total < 200  # nothing stranded on the drained pods


@pytest.mark.parametrize(
    ("at_end", "arrivals", "copies", "ended"), [("loop", 9, 23, False), ("stop", 3, 1, True)]
)
def test_the_trace_loops_or_stops_at_its_end(at_end: str, arrivals: int, copies: int, ended: bool) -> None:
    # Arrivals at 0, 1 and 2 s: a loop period of 2 s span + one 1 s mean gap = 3 s, so copies start at
    # 0, 3 and 6 s and 8.95 s has seen nine arrivals; copies are queued a minute ahead (ceil(68.95 / 3)).
    trace = make_trace([0.0, 1.0, 2.0], [10, 10, 10], [5, 5, 5])
    em = emulation("dopd", trace, profile=toy_profile(prefill_a=0.1, decode_a=0.01), at_end=at_end)
    run_to(em, 8.95)
    truth = em.truth()
    assert (truth.arrivals_total, truth.trace_copies, truth.trace_ended) == (arrivals, copies, ended)
    assert truth.completed_total == arrivals


def test_a_manifest_configures_engine_labels_and_names() -> None:
    model = load_model(EXAMPLES / "vllm-llama3-8b.yaml")
    config = EmulatorConfig.for_model(
        model, load=TraceLoad(trace="synthetic:poisson,rate_rps=5,duration_s=60"), replicas=StaticReplicas()
    )
    em = Emulation(config)
    em.apply_replicas(
        ReplicaSnapshot((f"{model.metadata.name}-prefill-x",), (f"{model.metadata.name}-decode-y",))
    )
    run_to(em, 2.0)
    sample = next(s for m in scrape(em) for s in m.samples if s.name == "vllm:num_requests_running")
    assert sample.labels["model_name"] == model.spec.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert sample.labels["namespace"] == model.metadata.namespace == "llm"
    assert em.truth().name == "llama3-8b"


def _decode_histogram(em: Emulation, family: str) -> tuple[list[tuple[float, float]], float]:
    """The decode pods' `family` over the whole run, merged: cumulative buckets and the sum."""
    merged: dict[float, float] = {}
    total = 0.0
    for series in em.recorder.store.series(family):
        if series.labels.get("role") != "decode":
            continue
        histogram = series.value
        assert isinstance(histogram, Histogram)
        for bound, count in histogram.cumulative():
            merged[bound] = merged.get(bound, 0.0) + count
        total += histogram.sum
    assert merged, f"no decode series of {family}"
    return sorted(merged.items()), total


def _vllm_gaps(em: Emulation, slo_s: float) -> HistogramSummary:
    """The decode pods' vLLM inter-token histogram over the whole run: its mean and its share of gaps
    at or below `slo_s` (a bucket bound: exact)."""
    gap_buckets, gap_sum = _decode_histogram(em, "vllm:inter_token_latency_seconds")
    return summarize_histogram("itl", gap_buckets, gap_sum, threshold=slo_s)


def _vllm_tpot_attainment(em: Emulation, slo_s: float) -> float:
    """The TPOT attainment the vLLM preset reads from the decode pods' histograms (over the whole run):
    the inter-token gaps' share, scaled by the requests whose queue time fits in their slack."""
    gaps = _vllm_gaps(em, slo_s)
    lengths, tokens = _decode_histogram(em, "vllm:request_generation_tokens")
    waits, _ = _decode_histogram(em, "vllm:request_queue_time_seconds")
    share, problem = tpot_attainment_with_waits(gaps, "waits", waits, slo_s, tokens / lengths[-1][1])
    assert share is not None, problem
    return share


def test_the_ground_truth_scores_each_request_as_simulate_does_and_sees_waits_the_histograms_miss() -> None:
    # 60 rps of Azure-like requests on one decode replica (it serves about 44 within the 50 ms TPOT): the
    # sequences that find its slots full wait for room. vLLM times gaps between a running sequence's
    # tokens, so its histogram stays within the SLO; the request's TPOT, as the user sees it, does not.
    load = load_workload("synthetic:poisson,rate_rps=60,duration_s=120", seed=1)
    em = emulation("vllm", load, prefill=4, decode=1)
    run_to(em, 150.0, step_s=1.0)
    truth = em.truth()
    slo = em.config.spec.slo
    log = em.sim.log
    done = [r for r in range(len(load)) if math.isfinite(log.finish_s[r])]
    assert truth.completed_total == len(done) > 0
    # Each request scored as `dopd simulate` scores it (TTFT to the first token; TPOT the mean gap after it).
    assert truth.tpot_met_total == sum(log.tpot_s[r] <= slo.tpot_seconds for r in done)
    assert truth.ttft_met_total == sum(log.ttft_s[r] <= slo.ttft_seconds for r in done)
    assert truth.slo_met_total == sum(
        log.tpot_s[r] <= slo.tpot_seconds and log.ttft_s[r] <= slo.ttft_seconds for r in done
    )
    met = truth.tpot_met_total / truth.completed_total
    assert met < 0.9
    within = _vllm_gaps(em, slo.tpot_seconds).share_at_or_below
    assert within is not None and within > 0.99
    # The vLLM preset's attainment reads the decode pods' queue time against each request's slack too:
    # it sees the waits, close to the requests that met the SLO.
    assert _vllm_tpot_attainment(em, slo.tpot_seconds) == pytest.approx(met, abs=0.08)
    # With room for every sequence, the same requests meet the TPOT SLO, and the preset reads so.
    roomy = emulation("vllm", load, prefill=4, decode=3)
    run_to(roomy, 150.0, step_s=1.0)
    assert roomy.truth().tpot_met_total / roomy.truth().completed_total > 0.99
    assert _vllm_tpot_attainment(roomy, slo.tpot_seconds) > 0.99


def test_the_dopd_router_sees_a_wait_for_a_decode_slot_in_the_gaps_as_its_users_do() -> None:
    # 60 rps on one decode replica (about 44 fit in its slots within the TPOT SLO): sequences wait for a
    # slot. The dopd decode worker emits the prefill's token as the KV arrives, so the router's TTFT is
    # the prefill's plus the transfer, and each wait is in the gap after the first token: the router's
    # inter-token sum is the users' TPOT over their gaps and its TTFT sum their TTFTs, as `dopd simulate`
    # scores them (the transfer before the first token).
    load = load_workload("synthetic:poisson,rate_rps=60,duration_s=60", seed=1)
    em = emulation("dopd", load, prefill=4, decode=1)
    run_to(em, 400.0, step_s=1.0)
    log, out = em.sim.log, load.output_tokens
    done = [r for r in range(len(load)) if math.isfinite(log.finish_s[r])]
    assert len(done) == len(load)
    decoded = [r for r in done if out[r] > 1]
    transfer_s = sum(float(load.input_tokens[r]) * em.recorder.kv_seconds_per_token for r in decoded)
    waited_s = sum(log.tpot_s[r] * (out[r] - 1) for r in decoded)  # the users' gaps, waits included
    itl, ttft, per_request = (
        next(s.value for s in em.recorder.store.series(family) if s.role == "router")
        for family in (
            "dopd_inter_token_latency_seconds",
            "dopd_time_to_first_token_seconds",
            "dopd_request_time_per_output_token_seconds",
        )
    )
    assert isinstance(itl, Histogram) and isinstance(ttft, Histogram) and isinstance(per_request, Histogram)
    # each request's own TPOT, one observation each: what the dopd preset reads its attainment from
    assert per_request.count == len(decoded)
    assert per_request.sum == pytest.approx(sum(log.tpot_s[r] for r in decoded), rel=1e-6)
    assert itl.count == sum(out[r] - 1 for r in decoded)
    assert itl.sum == pytest.approx(waited_s, rel=1e-6)
    # the simulator scores the transfer where the router sees it: in the TTFT, not in the gaps
    assert ttft.sum == pytest.approx(sum(log.ttft_s[r] for r in done), rel=1e-6)
    assert transfer_s > 0
    assert statistics.mean(log.tpot_s[r] for r in decoded) > 0.05  # they did wait: TPOT past the SLO
