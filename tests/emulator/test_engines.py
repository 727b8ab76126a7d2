"""What each emulated engine exposes: names, types, labels and buckets of the real engines, the
per-request accounting on each role, content negotiation, and the faults."""

from __future__ import annotations

import dataclasses
import math

import pytest
from emulator_helpers import PROMETHEUS_ACCEPT, emulation, run_to, scrape, spec_for, value
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families
from sim_helpers import make_trace, toy_profile

from dopd_emulator.config import FamilyFault, Faults
from dopd_worker.metrics import create_metrics

# Three requests, one second apart (no queueing), prefill 0.1 s each, decode steps of 10 ms, no KV
# transfer time: prompts of 100/200/300 tokens, outputs of 11/21/1 tokens (the last ends at prefill).
TOY_TRACE = make_trace([0.0, 1.0, 2.0], [100, 200, 300], [11, 21, 1])
TOY_PROFILE = toy_profile(prefill_a=0.1, decode_a=0.01)

VLLM_FAMILIES = {
    ("vllm:num_requests_waiting", "gauge"),
    ("vllm:num_requests_running", "gauge"),
    ("vllm:kv_cache_usage_perc", "gauge"),
    ("vllm:time_to_first_token_seconds", "histogram"),
    ("vllm:inter_token_latency_seconds", "histogram"),
    ("vllm:request_queue_time_seconds", "histogram"),
    ("vllm:request_prompt_tokens", "histogram"),
    ("vllm:request_generation_tokens", "histogram"),
    ("vllm:prompt_tokens", "counter"),
    ("vllm:generation_tokens", "counter"),
    ("vllm:request_success", "counter"),
    ("vllm:prefix_cache_queries", "counter"),
    ("vllm:prefix_cache_hits", "counter"),
    ("vllm:num_preemptions", "counter"),
}
SGLANG_FAMILIES = {
    ("sglang:num_queue_reqs", "gauge"),
    ("sglang:num_running_reqs", "gauge"),
    ("sglang:token_usage", "gauge"),
    ("sglang:cache_hit_rate", "gauge"),
    ("sglang:time_to_first_token_seconds", "histogram"),
    ("sglang:inter_token_latency_seconds", "histogram"),
    ("sglang:queue_time_seconds", "histogram"),
    ("sglang:prompt_tokens_histogram", "histogram"),
    ("sglang:generation_tokens_histogram", "histogram"),
    ("sglang:prompt_tokens", "counter"),
    ("sglang:generation_tokens", "counter"),
    ("sglang:num_requests", "counter"),
    ("sglang:cached_tokens", "counter"),
}


def toy(engine: str) -> list:  # type: ignore[type-arg]
    em = emulation(engine, TOY_TRACE, profile=TOY_PROFILE)
    run_to(em, 5.0)
    assert em.truth().completed_total == 3
    return scrape(em)


def test_vllm_exposes_the_v1_families_with_its_labels_and_buckets() -> None:
    metrics = toy("vllm")
    assert {(m.name, m.type) for m in metrics} == VLLM_FAMILIES
    sample = next(s for m in metrics for s in m.samples if s.name == "vllm:num_requests_running")
    assert set(sample.labels) == {"model_name", "engine", "role", "namespace", "pod"}
    assert sample.labels["engine"] == "0" and sample.labels["model_name"] == "m"
    ttft_bounds = [s.labels["le"] for m in metrics for s in m.samples if s.name == "vllm:time_to_first_token_seconds_bucket" and s.labels["pod"] == "m1-prefill-0"]  # fmt: skip
    assert ttft_bounds[:3] == ["0.001", "0.005", "0.01"] and ttft_bounds[-2:] == ["2560.0", "+Inf"]
    # vLLM registers one request_success child per finish reason up front.
    reasons = {
        s.labels["finished_reason"]
        for m in metrics
        for s in m.samples
        if s.name == "vllm:request_success_total"
    }
    assert reasons == {"stop", "length", "abort"}


def test_vllm_accounting_per_role() -> None:
    metrics = toy("vllm")
    prefill, decode = {"pod": "m1-prefill-0"}, {"pod": "m1-decode-0"}
    # Prefill pods see every request with max_tokens=1: each finishes there with one token.
    assert value(metrics, "vllm:prompt_tokens_total", **prefill) == 600
    assert value(metrics, "vllm:generation_tokens_total", **prefill) == 3
    assert value(metrics, "vllm:request_success_total", finished_reason="length", **prefill) == 3
    assert value(metrics, "vllm:time_to_first_token_seconds_count", **prefill) == 3
    assert value(metrics, "vllm:time_to_first_token_seconds_sum", **prefill) == pytest.approx(
        0.3
    )  # no queueing
    assert value(metrics, "vllm:prefix_cache_queries_total", **prefill) == 600
    # Decode pods hold the two requests that go on: 11 + 21 tokens, 10 + 20 inter-token gaps of 10 ms.
    assert value(metrics, "vllm:request_success_total", finished_reason="stop", **decode) == 2
    assert value(metrics, "vllm:generation_tokens_total", **decode) == 32
    assert value(metrics, "vllm:inter_token_latency_seconds_count", **decode) == 30
    assert value(metrics, "vllm:inter_token_latency_seconds_sum", **decode) == pytest.approx(0.3)
    assert value(metrics, "vllm:inter_token_latency_seconds_count", **prefill) == 0
    assert value(metrics, "vllm:request_generation_tokens_sum", **decode) == 32
    assert value(metrics, "vllm:num_preemptions_total", **decode) == 0


def test_sglang_exposes_its_families_with_engine_type_and_scheduler_ranks() -> None:
    metrics = toy("sglang")
    assert {(m.name, m.type) for m in metrics} == SGLANG_FAMILIES
    labels = {m.name: set(m.samples[0].labels) - {"le"} for m in metrics}
    common = {"model_name", "engine_type", "namespace", "pod"}
    assert (
        labels["sglang:num_queue_reqs"]
        == labels["sglang:queue_time_seconds"]
        == common | {"tp_rank", "pp_rank"}
    )
    assert labels["sglang:time_to_first_token_seconds"] == labels["sglang:prompt_tokens"] == common
    roles = {s.labels["engine_type"] for m in metrics for s in m.samples}
    assert roles == {"prefill", "decode"}


def test_sglang_accounting_per_role() -> None:
    metrics = toy("sglang")
    prefill, decode = {"engine_type": "prefill"}, {"engine_type": "decode"}
    assert value(metrics, "sglang:num_requests_total", **prefill) == 3
    assert value(metrics, "sglang:prompt_tokens_total", **prefill) == 600
    assert value(metrics, "sglang:generation_tokens_total", **prefill) == 3
    # The decode server counts its two requests at completion, prompt and output tokens alike.
    assert value(metrics, "sglang:num_requests_total", **decode) == 2
    assert value(metrics, "sglang:prompt_tokens_total", **decode) == 300
    assert value(metrics, "sglang:generation_tokens_total", **decode) == 32
    # It got the request at arrival too: its TTFT includes the 0.1 s prefill.
    assert value(metrics, "sglang:time_to_first_token_seconds_sum", **decode) == pytest.approx(0.2)
    assert value(metrics, "sglang:inter_token_latency_seconds_count", **decode) == 30
    assert value(metrics, "sglang:cached_tokens_total", cache_source="device", **prefill) == 0


def worker_families(role: str) -> dict[tuple[str, str], list[str]]:
    """(name, type) -> bucket bounds of what a real dopd process of `role` exposes, every child made."""
    worker = create_metrics(role, "m")
    for field in dataclasses.fields(worker):
        metric = getattr(worker, field.name)
        if isinstance(metric, Counter | Gauge | Histogram):
            # every label the family declares (status, reason, priority, ...), so each child exists
            extra = {name: "x" for name in metric._labelnames if name not in ("role", "model")}
            metric.labels(role=role, model="m", **extra)
    return {
        (m.name, m.type): sorted({s.labels.get("le", "") for s in m.samples})
        for m in text_string_to_metric_families(worker.exposition().decode())
    }


def test_dopd_families_are_the_workers_own_role_by_role() -> None:
    metrics = toy("dopd")
    for role in ("router", "prefill", "decode"):
        real = worker_families(role)
        emulated = {
            (m.name, m.type): sorted({s.labels.get("le", "") for s in m.samples if s.labels["role"] == role})
            for m in metrics
            if any(s.labels["role"] == role for s in m.samples)
        }
        assert len(emulated) >= 8, role
        for key, bounds in emulated.items():
            assert key in real, f"{role}: the dopd worker has no {key}"
            assert bounds == real[key], f"{role}: {key[0]} buckets differ from the worker's"


def test_dopd_accounting_per_role() -> None:
    metrics = toy("dopd")
    router, prefill, decode = {"role": "router"}, {"role": "prefill"}, {"role": "decode"}
    assert value(metrics, "dopd_requests_arrived_total", **router) == 3
    assert value(metrics, "dopd_requests_total", status="ok", **router) == 3
    # The router sees the whole stream: 11 + 21 + 1 tokens, TTFT 0.1 s each (no transfer time here).
    assert value(metrics, "dopd_generation_tokens_total", **router) == 33
    assert value(metrics, "dopd_time_to_first_token_seconds_sum", **router) == pytest.approx(0.3)
    assert value(metrics, "dopd_inter_token_latency_seconds_count", **router) == 30
    # The prefill worker times from its batch start; the decode worker emits the prefill's token at join.
    assert value(metrics, "dopd_time_to_first_token_seconds_sum", **prefill) == pytest.approx(0.3)
    assert value(metrics, "dopd_requests_total", status="ok", **prefill) == 3
    assert value(metrics, "dopd_generation_tokens_total", **decode) == 32
    assert value(metrics, "dopd_requests_total", status="ok", **decode) == 2
    assert value(metrics, "dopd_generation_tokens_count", **decode) == 2
    # each of the two sequences joined a batch with a slot free: two waits of nothing, so the router's
    # gaps (the operator's decode steps, the waits taken off) are the 30 steps of 10 ms
    assert value(metrics, "dopd_decode_slot_wait_seconds_count", **decode) == 2
    assert value(metrics, "dopd_decode_slot_wait_seconds_sum", **decode) == pytest.approx(0.0)
    assert value(metrics, "dopd_inter_token_latency_seconds_sum", **router) == pytest.approx(0.3)
    # nothing turned away: the router's shed counters are there, at zero (the operator's served rate)
    assert value(metrics, "dopd_requests_rejected_total", **router) == 0
    assert value(metrics, "dopd_requests_expired_total", **router) == 0
    # every prompt looked up in the prefix cache, none hit: the operator reads a measured 0
    assert value(metrics, "dopd_prefix_cache_queries_total", **prefill) == 600
    assert value(metrics, "dopd_prefix_cache_hits_total", **prefill) == 0


def test_dopd_decode_reports_how_far_its_residents_are_into_their_answers() -> None:
    """`dopd_decode_generated_tokens`: the tokens the running sequences have generated, the prefill's
    first included, as the worker's decode engine counts them after each step (what the planner reads
    longer answers seated before they finish from, `planner_lengths.seated_output_lengths`)."""
    em = emulation("dopd", TOY_TRACE, profile=TOY_PROFILE)
    for time_s, generated, running in (
        (0.15, 6.0, 1.0),
        (1.2, 11.0, 1.0),
        (1.25, 16.0, 1.0),
        (5.0, 0.0, 0.0),
    ):
        run_to(em, time_s, step_s=0.05)
        metrics = scrape(em)
        # the first sequence joined at 0.1 s with its first token, then 5 steps of 10 ms; the second at 1.1 s
        assert value(metrics, "dopd_decode_generated_tokens", role="decode") == generated, time_s
        assert value(metrics, "dopd_requests_running", role="decode") == running, time_s


def test_negotiation_matches_each_engine() -> None:
    # vLLM and SGLang serve through prometheus_client's negotiation: Prometheus gets OpenMetrics, and
    # prometheus_client 0.26 escapes ':' to '_' there; plain text keeps the colon.
    em = emulation("vllm", TOY_TRACE, profile=TOY_PROFILE)
    run_to(em, 1.0)
    body, content_type = em.render(PROMETHEUS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text")
    assert b"\nvllm_num_requests_waiting{" in body and b"\nvllm:num_requests_waiting{" not in body
    body, content_type = em.render(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"\nvllm:num_requests_waiting{" in body
    # The dopd worker answers the classic text format whatever it is asked.
    em = emulation("dopd", TOY_TRACE, profile=TOY_PROFILE)
    run_to(em, 1.0)
    body, content_type = em.render(PROMETHEUS_ACCEPT)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert (
        b"# TYPE dopd_prompt_tokens_total counter" in body and b"# TYPE dopd_prompt_tokens histogram" in body
    )


def test_labels_follow_spec_metrics() -> None:
    spec = spec_for(
        "vllm",
        metrics={
            "namespaceLabel": "kubernetes_namespace",
            "roleLabel": "dopd_role",
            "selector": {"model_name": "m", "team": "search"},
        },
    )
    em = emulation("vllm", TOY_TRACE, profile=TOY_PROFILE, spec=spec)
    run_to(em, 1.0)
    sample = next(s for m in scrape(em) for s in m.samples if s.name == "vllm:num_requests_running")
    assert sample.labels["kubernetes_namespace"] == "llm" and "namespace" not in sample.labels
    assert sample.labels["dopd_role"] in {"prefill", "decode"} and "role" not in sample.labels
    assert sample.labels["team"] == "search"
    mismatch = spec_for("vllm", metrics={"selector": {"model_name": "other"}})
    with pytest.raises(ValueError, match="would never match"):
        emulation("vllm", TOY_TRACE, profile=TOY_PROFILE, spec=mismatch)


def test_faults_omit_and_nan_families_on_one_role_or_all() -> None:
    em = emulation("vllm", TOY_TRACE, profile=TOY_PROFILE)
    run_to(em, 5.0)
    em.set_faults(
        Faults(
            omit=(FamilyFault(family="vllm:kv_cache_usage_perc", role="decode"),),
            nan=(
                FamilyFault(family="vllm:num_requests_running"),
                FamilyFault(family="vllm:inter_token_latency_seconds", role="decode"),
            ),
        )
    )
    metrics = scrape(em)
    kv_pods = {s.labels["pod"] for m in metrics for s in m.samples if s.name == "vllm:kv_cache_usage_perc"}
    assert kv_pods == {"m1-prefill-0"}
    running = [s.value for m in metrics for s in m.samples if s.name == "vllm:num_requests_running"]
    assert len(running) == 2 and all(math.isnan(v) for v in running)
    assert math.isnan(value(metrics, "vllm:inter_token_latency_seconds_sum", pod="m1-decode-0"))
    assert value(metrics, "vllm:inter_token_latency_seconds_count", pod="m1-decode-0") == 30  # counts intact
    assert not math.isnan(value(metrics, "vllm:inter_token_latency_seconds_sum", pod="m1-prefill-0"))
    with pytest.raises(ValueError, match="unknown families \\['vllm:kv_cache_usage'\\]"):
        em.set_faults(Faults(omit=(FamilyFault(family="vllm:kv_cache_usage"),)))


def test_vllm_legacy_names_mirror_the_current_ones() -> None:
    em = emulation("vllm", TOY_TRACE, profile=TOY_PROFILE, vllm_legacy_names=True)
    run_to(em, 5.0)
    metrics = scrape(em)
    decode = {"pod": "m1-decode-0"}
    for current, legacy in (
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        ("vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count"),
    ):
        assert value(metrics, legacy, **decode) == value(metrics, current, **decode)
    assert value(metrics, "vllm:time_per_output_token_seconds_count", **decode) == 30
    assert "vllm:gpu_cache_usage_perc" not in {m.name for m in toy("vllm")}  # off by default


def test_dopd_router_refuses_what_no_decode_replica_can_hold() -> None:
    # KV capacity 500 tokens: the 300-token prompt with 21 outputs fits, 600 + 11 does not.
    trace = make_trace([0.0, 1.0], [600, 300], [11, 21])
    em = emulation("dopd", trace, profile=toy_profile(prefill_a=0.1, decode_a=0.01, kv_capacity_tokens=500))
    run_to(em, 5.0)
    metrics = scrape(em)
    assert value(metrics, "dopd_requests_total", status="rejected", role="router") == 1
    assert value(metrics, "dopd_requests_arrived_total", role="router") == 1  # admitted ones only
    assert value(metrics, "dopd_requests_total", status="ok", role="router") == 1
    truth = em.truth()
    assert (truth.arrivals_total, truth.rejected_total, truth.completed_total) == (2, 1, 1)
