"""Engine presets as data and the queries they build once from a spec (literal PromQL)."""

from __future__ import annotations

import pytest

from dopd_builders import make_spec
from dopd_operator.api import DisaggregatedModelSpec, Engine
from dopd_operator.errors import SpecError
from dopd_operator.metrics.presets import PRESETS, check_metrics_spec, query_set


@pytest.mark.parametrize(
    ("engine", "field", "families", "roles"),
    [
        (Engine.DOPD, "arrival", ("dopd_requests_arrived_total",), ("router",)),
        (Engine.DOPD, "queue_depth", ("dopd_requests_waiting",), ("router", "prefill")),
        (Engine.DOPD, "decode_queue_depth", ("dopd_requests_waiting",), ("decode",)),
        (Engine.DOPD, "kv_usage", ("dopd_kv_cache_usage_ratio",), ("decode",)),
        (Engine.DOPD, "generated_tokens", ("dopd_decode_generated_tokens",), ("decode",)),
        (Engine.DOPD, "ttft", ("dopd_time_to_first_token_seconds",), ("router",)),
        (Engine.DOPD, "tpot", ("dopd_inter_token_latency_seconds",), ("router",)),
        (Engine.DOPD, "input_tokens", ("dopd_prompt_tokens",), ("router",)),
        (Engine.DOPD, "output_tokens", ("dopd_generation_tokens",), ("decode",)),
        (
            Engine.DOPD,
            "prefix_cache",
            ("dopd_prefix_cache_hits_total", "dopd_prefix_cache_queries_total"),
            ("prefill",),
        ),
        (
            Engine.VLLM,
            "arrival",
            ("vllm:request_success_total", "vllm:num_requests_waiting", "vllm:num_requests_running"),
            ("prefill",),
        ),
        (Engine.VLLM, "queue_depth", ("vllm:num_requests_waiting",), ("prefill",)),
        (Engine.VLLM, "decode_queue_depth", ("vllm:num_requests_waiting",), ("decode",)),
        (Engine.VLLM, "kv_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), ("decode",)),
        (Engine.VLLM, "running", ("vllm:num_requests_running",), ("decode",)),
        (Engine.VLLM, "ttft", ("vllm:time_to_first_token_seconds",), ("prefill",)),
        (
            Engine.VLLM,
            "tpot",
            ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
            ("decode",),
        ),
        (Engine.VLLM, "input_tokens", ("vllm:request_prompt_tokens",), ("prefill",)),
        (Engine.VLLM, "output_tokens", ("vllm:request_generation_tokens",), ("decode",)),
        (
            Engine.VLLM,
            "prefix_cache",
            ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
            ("prefill",),
        ),
        (
            Engine.SGLANG,
            "arrival",
            ("sglang:num_requests_total", "sglang:num_queue_reqs", "sglang:num_running_reqs"),
            ("prefill",),
        ),
        (Engine.SGLANG, "queue_depth", ("sglang:num_queue_reqs",), ("prefill",)),
        (Engine.SGLANG, "decode_queue_depth", ("sglang:num_queue_reqs",), ("decode",)),
        (Engine.SGLANG, "kv_usage", ("sglang:token_usage",), ("decode",)),
        (Engine.SGLANG, "running", ("sglang:num_running_reqs",), ("decode",)),
        (Engine.SGLANG, "ttft", ("sglang:time_to_first_token_seconds",), ("prefill",)),
        (Engine.SGLANG, "tpot", ("sglang:inter_token_latency_seconds",), ("decode",)),
        (Engine.SGLANG, "input_tokens", ("sglang:prompt_tokens_histogram",), ("prefill",)),
        (Engine.SGLANG, "output_tokens", ("sglang:generation_tokens_histogram",), ("decode",)),
        # SGLang's cache_hit_rate gauge is the last batch's; the counters give the window's token share
        (
            Engine.SGLANG,
            "prefix_cache",
            ("sglang:cached_tokens_total", "sglang:prompt_tokens_total"),
            ("prefill",),
        ),
    ],
)
def test_where_each_field_comes_from(
    engine: Engine, field: str, families: tuple[str, ...], roles: tuple[str, ...]
) -> None:
    read = getattr(PRESETS[engine], field)
    if field == "arrival":
        assert ((*read.counters, *read.in_system), (read.role,)) == (families, roles)
    elif field in ("ttft", "tpot"):
        assert ((read.family, *([read.fallback] if read.fallback else [])), (read.role,)) == (families, roles)
    elif field in ("input_tokens", "output_tokens"):
        assert ((read.histogram.family,), (read.histogram.role,)) == (families, roles)
    elif field == "prefix_cache":
        assert ((read.hits, read.queries), (read.role,)) == (families, roles)
    else:
        assert (read.families, read.roles) == (families, roles)


def test_only_dopd_reports_what_its_decode_residents_have_generated() -> None:
    """vLLM and SGLang export no count of the tokens their running sequences have generated: the field
    stays unknown there, never zero (`planner_lengths.seated_output_lengths` then reads nothing)."""
    assert {e: p.generated_tokens is not None for e, p in PRESETS.items()} == {
        Engine.DOPD: True,
        Engine.VLLM: False,
        Engine.SGLANG: False,
    }


def test_default_role_labels() -> None:
    assert {e: p.default_role_label for e, p in PRESETS.items()} == {
        Engine.DOPD: "role",
        Engine.VLLM: "role",
        Engine.SGLANG: "engine_type",
    }
    assert PRESETS[Engine.SGLANG].input_tokens.totals == (
        "sglang:prompt_tokens_total",
        "sglang:num_requests_total",
    )


def _vllm_spec() -> DisaggregatedModelSpec:
    spec: DisaggregatedModelSpec = make_spec(
        engine="vllm",
        model="meta-llama/Meta-Llama-3-8B-Instruct",
        metrics={"selector": {"model_name": "meta-llama/Meta-Llama-3-8B-Instruct"}, "windowSeconds": 60},
    )
    return spec


def test_vllm_queries() -> None:
    queries = query_set(_vllm_spec(), "llm")
    selector = 'namespace="llm",model_name="meta-llama/Meta-Llama-3-8B-Instruct",role="prefill"'
    parts = dict(queries.parts)
    assert parts["ttft/bucket"] == (
        "sum by (le, namespace, model_name) (increase({__name__=~"
        f'"vllm[:_]time_to_first_token_seconds_bucket",{selector}}}[60000ms]))'
    )
    assert parts["input/sum"] == (
        "sum by (namespace, model_name) "
        f'(increase({{__name__=~"vllm[:_]request_prompt_tokens_sum",{selector}}}[60000ms]))'
    )
    decode = selector.replace('role="prefill"', 'role="decode"')
    assert parts["decode_wait/bucket"] == (
        "sum by (le, namespace, model_name) "
        f'(increase({{__name__=~"vllm[:_]request_queue_time_seconds_bucket",{decode}}}[60000ms]))'
    )
    assert parts["decode_wait/sum"] == (
        "sum by (namespace, model_name) "
        f'(increase({{__name__=~"vllm[:_]request_queue_time_seconds_sum",{decode}}}[60000ms]))'
    )
    # the hit rate: tokens served from the prefix cache over those looked up, one part each
    assert parts["prefix/hits"] == (
        "sum by (namespace, model_name) "
        f'(increase({{__name__=~"vllm[:_]prefix_cache_hits_total",{selector}}}[60000ms]))'
    )
    # the window before, for the lengths' trend: the same counters, offset by one window
    assert parts["output.previous/count"] == (
        "sum by (namespace, model_name) "
        f'(increase({{__name__=~"vllm[:_]request_generation_tokens_count",{decode}}}[60000ms] offset 60000ms))'
    )
    assert set(parts) == {
        "ttft/bucket",
        "tpot/bucket",
        "tpot.fallback/bucket",
        "tpot/sum",  # the mean inter-token latency the decode correction learns from
        "tpot.fallback/sum",
        "decode_wait/sum",  # the decode pods' waits for their KV and a slot, added to the TPOT sum
        "decode_wait/bucket",  # ... and read against the slack the gaps leave (the TPOT attainment)
        "input/bucket",
        "input/sum",
        "output/bucket",
        "output/sum",
        "input.previous/sum",
        "input.previous/count",
        "output.previous/sum",
        "output.previous/count",
        "prefix/hits",
        "prefix/queries",
    }
    assert queries.aggregate.startswith(
        "label_replace(sum by (le, namespace, model_name) "
        '(increase({__name__=~"vllm[:_]time_to_first_token_seconds_bucket",'
    )
    assert queries.aggregate.count(" or label_replace(") == 16
    assert ', "dopd_q", "tpot.fallback/bucket", "", "")' in queries.aggregate
    # one raw range vector: the gauges and the arrival counter of both roles over the trend window
    assert queries.raw == (
        '{__name__=~"vllm[:_]request_success_total|vllm[:_]num_requests_waiting|vllm[:_]num_requests_running'
        '|vllm[:_]kv_cache_usage_perc|vllm[:_]gpu_cache_usage_perc",namespace="llm",'
        'model_name="meta-llama/Meta-Llama-3-8B-Instruct",role=~"prefill|decode"}[120000ms]'
    )
    # one delta() per gauge: delta drops the metric name, so one selector over both gauges gives two
    # series with the same labels per pod and Prometheus refuses the query (HTTP 422)
    assert queries.history(60.0) == (
        f'sum by (namespace, model_name) (rate({{__name__=~"vllm[:_]request_success_total",{selector}}}[60000ms])) + '
        f'sum by (namespace, model_name) (delta({{__name__=~"vllm[:_]num_requests_waiting",{selector}}}[60000ms])) / 60 + '
        f'sum by (namespace, model_name) (delta({{__name__=~"vllm[:_]num_requests_running",{selector}}}[60000ms])) / 60'
    )


def test_dopd_and_sglang_queries() -> None:
    dopd = query_set(make_spec(engine="dopd", metrics={"selector": {"model": "m"}}), "ns")
    assert dopd.history(40.0) == (
        "sum by (namespace, model) "
        '(rate({__name__=~"dopd_requests_arrived_total",namespace="ns",model="m",role="router"}[40000ms]))'
    )
    assert "sglang" not in dopd.aggregate and "totals" not in dopd.aggregate
    # the router's per-request TPOT, whose buckets give the percentile and the attainment
    assert dict(dopd.parts)["request_tpot/bucket"] == (
        "sum by (le, namespace, model) (increase({__name__=~"
        '"dopd_request_time_per_output_token_seconds_bucket",namespace="ns",model="m",role="router"}[60000ms]))'
    )
    # the shed rate: what the router turned away, at entry or from its queue, over the window
    # (one part per family: increase() drops the name, and two families in one selector would collide)
    for family in ("dopd_requests_rejected_total", "dopd_requests_expired_total"):
        assert dict(dopd.parts)[f"shed/{family}"] == (
            "sum by (namespace, model) (increase({__name__=~"
            f'"{family}",namespace="ns",model="m",role="router"}}[60000ms]))'
        )
    sglang = query_set(make_spec(engine="sglang", metrics={"windowSeconds": 30}), "ns")
    parts = dict(sglang.parts)
    assert parts["input.totals/tokens"] == (
        "sum by (namespace) "
        '(increase({__name__=~"sglang[:_]prompt_tokens_total",namespace="ns",engine_type="prefill"}[30000ms]))'
    )
    assert sglang.raw.endswith('engine_type=~"prefill|decode"}[120000ms]')
    relabeled = query_set(make_spec(engine="sglang", metrics={"roleLabel": "dopd_role"}), "ns")
    assert 'dopd_role="prefill"' in dict(relabeled.parts)["ttft/bucket"]
    long_window = query_set(make_spec(metrics={"windowSeconds": 300}), "ns")
    assert long_window.raw.endswith("[300000ms]")  # the raw range covers the window when it is longer


def test_an_unusable_selector_is_a_spec_error_before_any_query() -> None:
    with pytest.raises(SpecError, match="not a Prometheus label name") as caught:
        check_metrics_spec(make_spec(metrics={"selector": {"app.kubernetes.io/name": "x"}}))
    assert caught.value.field == "spec.metrics.selector"
    check_metrics_spec(make_spec(metrics={"selector": {"model": 'any "value" {at} all\n'}}))
