"""The engine presets through a real Prometheus (Debian's 2.42, 1 s scrapes).

Each "pod" is a prometheus_client exporter on 127.0.0.1 speaking one engine's names (colon names
included, which Prometheus stores with underscores), whose counters and histograms grow linearly with
wall time at known rates: every increase over a window is then proportional to those rates, so the
quantiles, means, shares and rates the presets read have exact expected values whatever the scrape
timing. Faults: a NaN gauge, a family not exposed, a deprecated name only, and a target stopped
mid-test (stale). Also: label values with quotes, backslashes, newlines and braces select exactly
their own series, and `bucket_quantile` agrees with Prometheus' own `histogram_quantile`.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dopd_builders import make_spec
from dopd_e2e.prometheus import Prometheus, free_port
from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.metrics.estimators import bucket_quantile
from dopd_operator.metrics.promql import one_of, quote
from dopd_operator.metrics.source import MetricsOptions, MetricsSource
from dopd_operator.planner_types import Observation, PodLoad, RoleObservation

pytestmark = pytest.mark.e2e

T0 = time.time()
WINDOW_SECONDS = 10.0
OPTIONS = MetricsOptions(scrape_interval_seconds=1.0)  # stale after 3 s
Buckets = dict[float, float]  # upper bound -> share of observations in (previous bound, bound]


@dataclass(frozen=True)
class Endpoint:
    url: str
    ca_file: Path | None = None
    timeout_seconds: float = 10.0

    def bearer_token(self) -> str | None:
        return None


class Exporter(Collector):
    """A /metrics endpoint on 127.0.0.1 serving what `collect` yields at each scrape."""

    server: Any = None
    thread: Any = None
    target: str = ""

    def start(self) -> str:
        registry = CollectorRegistry()
        registry.register(self)
        port = free_port()
        self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        self.target = f"127.0.0.1:{port}"
        return self.target

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.server = None


@dataclass(eq=False)  # registries key collectors by identity
class Pod(Exporter):
    """One pod's /metrics: gauges (constant or NaN) and counters/histograms growing at fixed rates."""

    labels: dict[str, str]
    gauges: dict[str, float] = field(default_factory=dict)
    growing_gauges: dict[str, tuple[float, float]] = field(default_factory=dict)  # value at T0, per second
    counters: dict[str, float] = field(default_factory=dict)  # per second
    histograms: dict[str, tuple[float, Buckets, float]] = field(default_factory=dict)  # (per s, shares, mean)

    def collect(self) -> Iterator[Any]:
        elapsed = time.time() - T0
        names, values = list(self.labels), list(self.labels.values())
        for name, value in self.gauges.items():
            gauge = GaugeMetricFamily(name, name, labels=names)
            gauge.add_metric(values, value)
            yield gauge
        for name, (start, per_second) in self.growing_gauges.items():
            gauge = GaugeMetricFamily(name, name, labels=names)
            gauge.add_metric(values, start + per_second * elapsed)
            yield gauge
        for name, per_second in self.counters.items():
            counter = CounterMetricFamily(name.removesuffix("_total"), name, labels=names)
            counter.add_metric(values, 1e6 + per_second * elapsed)  # far from 0: no zero-clamped increase()
            yield counter
        for name, (per_second, shares, mean) in self.histograms.items():
            count = 1e6 + per_second * elapsed
            cumulative, buckets = 0.0, []
            for bound, share in sorted(shares.items()):
                cumulative += share
                buckets.append((f"{bound:g}" if math.isfinite(bound) else "+Inf", count * cumulative))
            histogram = HistogramMetricFamily(name, name, labels=names)
            histogram.add_metric(values, buckets, sum_value=count * mean)
            yield histogram


class EscapeExporter(Exporter):
    """One gauge series per tricky label value; the value of series i is i."""

    def __init__(self, values: Sequence[str]) -> None:
        self.values = list(values)

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily("dopd_e2e_escape", "label values to escape", labels=["namespace", "value"])
        for index, value in enumerate(self.values):
            family.add_metric(["escape-e2e", value], float(index))
        yield family


def _labels(
    namespace: str, pod: str, role_label: str, role: str, model_label: str, model: str
) -> dict[str, str]:
    return {"namespace": namespace, "pod": pod, role_label: role, model_label: model}


def dopd_pods(namespace: str, model: str = "llama", arrival_rps: float = 6.0, routers: int = 1) -> list[Pod]:
    def labels(pod: str, role: str) -> dict[str, str]:
        return _labels(namespace, pod, "role", role, "model", model)

    return [
        *(_dopd_router(labels(f"router-{i}", "router"), arrival_rps) for i in range(routers)),
        *_dopd_workers(labels),
    ]


def _dopd_router(labels: dict[str, str], arrival_rps: float) -> Pod:
    return Pod(
        labels,
        gauges={"dopd_requests_waiting": 4.0},
        # of the arrivals, the router sheds 1/s at entry and lets 0.5/s expire in its queue
        counters={
            "dopd_requests_arrived_total": arrival_rps,
            "dopd_requests_rejected_total": 1.0,
            "dopd_requests_expired_total": 0.5,
            # SHARDS-adj: 20 samples/s expected where 4 were taken (200 against 40 in the 10 s window:
            # the 160 missing are far beyond chance's 2 x sqrt(200), the hottest blocks' reuses)
            "dopd_prompt_reuse_expected_samples_total": 20.0,
        },
        histograms={
            # 60% in (0.4, 0.5], 40% in (1.0, 1.25]
            "dopd_time_to_first_token_seconds": (
                6.0,
                {0.4: 0.0, 0.5: 0.6, 1.0: 0.0, 1.25: 0.4, math.inf: 0.0},
                0.7,
            ),
            # 50% in (0.01, 0.0125], 50% in (0.045, 0.05]
            "dopd_inter_token_latency_seconds": (
                900.0,
                {0.01: 0.0, 0.0125: 0.5, 0.045: 0.0, 0.05: 0.5, math.inf: 0.0},
                0.03,
            ),
            # each finished request's mean gap: 80% in (0.02, 0.025], 20% in (0.04, 0.05]
            "dopd_request_time_per_output_token_seconds": (
                4.5,
                {0.02: 0.0, 0.025: 0.8, 0.04: 0.0, 0.05: 0.2, math.inf: 0.0},
                0.027,
            ),
            # the router records every prompt's length at arrival (the demand)
            "dopd_prompt_tokens": (6.0, {256.0: 0.0, 320.0: 1.0, math.inf: 0.0}, 300.0),
            # sampled prompt blocks: a quarter reused within 64k tokens, a quarter more within 1M
            "dopd_prompt_reuse_distance_tokens": (
                4.0,
                {65536.0: 0.25, 1_000_000.0: 0.25, math.inf: 0.5},
                1e9,
            ),
            # where in their prompts sampled blocks sit (evenly; faster than the distances, so that the
            # short window holds enough of them), and the reused ones: the first half of every prompt
            "dopd_prompt_reuse_sampled_position_ratio": (
                40.0,
                {round(0.1 * i, 1): 0.1 for i in range(1, 11)} | {math.inf: 0.0},
                0.5,
            ),
            "dopd_prompt_reuse_reused_position_ratio": (
                20.0,
                {round(0.1 * i, 1): (0.2 if i <= 5 else 0.0) for i in range(1, 11)} | {math.inf: 0.0},
                0.25,
            ),
        },
    )


def _dopd_workers(labels: Callable[[str, str], dict[str, str]]) -> list[Pod]:
    return [
        Pod(
            labels("prefill-0", "prefill"),
            gauges={"dopd_requests_waiting": 3.0},
            # a quarter of the prompt tokens looked up come from the prefix cache
            counters={"dopd_prefix_cache_queries_total": 600.0, "dopd_prefix_cache_hits_total": 150.0},
            # what the prefill workers served: not what the planner sizes for
            histograms={"dopd_prompt_tokens": (6.0, {64.0: 0.0, 128.0: 1.0, math.inf: 0.0}, 100.0)},
        ),
        Pod(
            labels("decode-0", "decode"),
            gauges={
                "dopd_kv_cache_usage_ratio": 0.25,
                "dopd_requests_running": 10.0,
                "dopd_requests_waiting": 1.0,
                "dopd_decode_generated_tokens": 900.0,
            },
            histograms={
                "dopd_generation_tokens": (3.0, {160.0: 0.0, 192.0: 1.0, math.inf: 0.0}, 180.0),
                # 2.25 sequences/s join a batch, after waiting 0.6 s on average for a slot
                "dopd_decode_slot_wait_seconds": (2.25, {0.5: 0.5, 0.75: 0.5, math.inf: 0.0}, 0.6),
            },
        ),
        Pod(
            labels("decode-1", "decode"),
            gauges={
                "dopd_kv_cache_usage_ratio": 0.75,
                "dopd_requests_running": 14.0,
                "dopd_requests_waiting": 2.0,
                "dopd_decode_generated_tokens": 1500.0,
            },
            histograms={
                "dopd_generation_tokens": (3.0, {160.0: 0.0, 192.0: 1.0, math.inf: 0.0}, 180.0),
                # 2.25 sequences/s join a batch, after waiting 0.6 s on average for a slot
                "dopd_decode_slot_wait_seconds": (2.25, {0.5: 0.5, 0.75: 0.5, math.inf: 0.0}, 0.6),
            },
        ),
    ]


def vllm_pods(namespace: str) -> list[Pod]:
    def labels(pod: str, role: str) -> dict[str, str]:
        return {**_labels(namespace, pod, "role", role, "model_name", "meta-llama/Llama-3-8B"), "engine": "0"}

    return [
        Pod(
            labels("prefill-0", "prefill"),
            growing_gauges={"vllm:num_requests_waiting": (2.0, 0.5)},  # the queue grows 0.5 requests/s
            gauges={"vllm:num_requests_running": 1.0},
            counters={
                "vllm:request_success_total": 4.0,
                "vllm:prefix_cache_queries_total": 3200.0,  # tokens looked up
                "vllm:prefix_cache_hits_total": 1600.0,  # of those, served from the cache
            },
            histograms={
                "vllm:request_prompt_tokens": (4.0, {500.0: 0.0, 1000.0: 1.0, math.inf: 0.0}, 800.0),
                "vllm:time_to_first_token_seconds": (4.0, {0.5: 0.0, 0.75: 1.0, math.inf: 0.0}, 0.6),
                # the prefill pods' queue time is not the decode pods' wait: the TPOT mean leaves it out
                "vllm:request_queue_time_seconds": (4.0, {1.0: 1.0, math.inf: 0.0}, 0.5),
            },
        ),
        Pod(
            labels("decode-0", "decode"),
            gauges={
                "vllm:kv_cache_usage_perc": math.nan,
                "vllm:num_requests_running": 30.0,
                "vllm:num_requests_waiting": 6.0,  # waiting for their KV or a free slot
            },
            histograms={
                "vllm:request_generation_tokens": (4.0, {100.0: 0.0, 200.0: 1.0, math.inf: 0.0}, 150.0),
                # only the deprecated TPOT family: the preset falls back to it
                "vllm:time_per_output_token_seconds": (600.0, {0.025: 0.0, 0.05: 1.0, math.inf: 0.0}, 0.04),
                # each sequence's wait for its KV and a free slot before its first decode step: half
                # within 1 s, half within 2 s
                "vllm:request_queue_time_seconds": (4.0, {1.0: 0.5, 2.0: 0.5, math.inf: 0.0}, 1.2),
            },
        ),
    ]


def sglang_pods(namespace: str) -> list[Pod]:
    def labels(pod: str, role: str) -> dict[str, str]:
        return _labels(namespace, pod, "engine_type", role, "model_name", "qwen")

    return [
        Pod(
            labels("prefill-0", "prefill"),
            gauges={"sglang:num_queue_reqs": 5.0, "sglang:num_running_reqs": 2.0},
            counters={
                "sglang:num_requests_total": 2.0,
                "sglang:prompt_tokens_total": 2.0 * 1200.0,
                "sglang:cached_tokens_total": 0.75 * 2.0 * 1200.0,
            },
            histograms={
                "sglang:time_to_first_token_seconds": (2.0, {0.8: 0.0, 1.0: 1.0, math.inf: 0.0}, 0.9)
            },
        ),
        Pod(
            labels("decode-0", "decode"),
            gauges={"sglang:token_usage": 0.4, "sglang:num_running_reqs": 12.0, "sglang:num_queue_reqs": 3.0},
            counters={"sglang:num_requests_total": 2.0, "sglang:generation_tokens_total": 2.0 * 250.0},
            histograms={
                "sglang:inter_token_latency_seconds": (500.0, {0.02: 0.0, 0.025: 1.0, math.inf: 0.0}, 0.022),
                "sglang:queue_time_seconds": (2.0, {0.5: 1.0, math.inf: 0.0}, 0.25),
            },
        ),
    ]


ESCAPE_VALUES = [
    'say "hi"',
    "back\\slash",
    "trailing backslash\\",
    "new\nline",
    "tab\tcarriage\rreturn",
    '{braces},commas=~"and"}',
    '"}',
    "\\n is not a newline",
    "nul\x00byte",
    "unicode: é 中文 🚀",
    "line\u2028separator and \ufeffbom",
    "",
]


def _random_values(count: int) -> list[str]:
    rng = random.Random(20261130)
    pool = [chr(c) for c in (*range(0x20, 0x7F), 0x0A, 0x09, 0x5C, 0x22, 0xE9, 0x4E2D, 0x1F680, 0x200B, 0x7F)]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(count)]


ESCAPES = ESCAPE_VALUES + _random_values(60)


@dataclass
class Fixture:
    prom: Prometheus
    pods: dict[str, list[Pod]]


@pytest.fixture(scope="module")
def world(prometheus_factory: Callable[..., Prometheus]) -> Iterator[Fixture]:
    pods = {
        "dopd": dopd_pods("dopd-e2e"),
        # a second model beside it, 9 requests/s: the batch test reads both with shared queries
        "dopd-mistral": dopd_pods("dopd-e2e", model="mistral", arrival_rps=9.0),
        "vllm": vllm_pods("vllm-e2e"),
        "sglang": sglang_pods("sglang-e2e"),
        "stale": dopd_pods("stale-e2e"),
        "two-routers": dopd_pods("twin-e2e", routers=2),
    }
    everyone: list[Exporter] = [p for group in pods.values() for p in group]
    everyone.append(EscapeExporter(ESCAPES))
    try:
        targets = {f"job-{i}": [p.start()] for i, p in enumerate(everyone)}
        prom = prometheus_factory(targets)
        prom.wait_targets_up(timeout=60)
        # the window (10 s) and the raw range need samples: wait until every target has 12 of them
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = prom.query("min(count_over_time(up[15s]))")
            if counts and float(counts[0]["value"][1]) >= 12:
                break
            time.sleep(0.5)
        yield Fixture(prom, pods)
    finally:
        for pod in everyone:
            pod.stop()


def _observe(
    prom: Prometheus, spec: DisaggregatedModelSpec, namespace: str, ready: Sequence[int]
) -> Observation:
    source = MetricsSource(Endpoint(prom.url), OPTIONS)
    try:
        return asyncio.run(
            source.observe(
                spec,
                namespace,
                RoleObservation(current=ready[0], ready=ready[0]),
                RoleObservation(current=ready[1], ready=ready[1]),
            )
        )
    finally:
        source.close()


def _llama_spec() -> DisaggregatedModelSpec:
    """The dopd-engine model the dopd exporters serve, its SLO on the exporters' histogram bounds."""
    return make_spec(
        engine="dopd",
        model="llama",
        slo={"ttftSeconds": 1.0, "tpotSeconds": 0.03, "percentile": 90},
        metrics={"selector": {"model": "llama"}, "windowSeconds": WINDOW_SECONDS},
    )


def test_dopd_preset_reads_every_field(world: Fixture) -> None:
    spec = _llama_spec()
    obs = _observe(world.prom, spec, "dopd-e2e", ready=(1, 2))
    assert obs.problems == (), obs.problems
    # the exporters have run for seconds, not the 120 s the trend window spans: the trend is fitted over
    # the intervals there are and says how long they span; a steady counter reads no rise beyond its noise
    span_s = obs.arrival_rate_trend_span_seconds
    assert span_s is not None and 4.0 <= span_s < 120.0, span_s
    assert obs.arrival_rate_trend_rps_per_s is not None and obs.arrival_rate_trend_noise_rps_per_s is not None
    assert abs(obs.arrival_rate_trend_rps_per_s) <= obs.arrival_rate_trend_noise_rps_per_s + 0.05, obs
    assert obs.arrival_rate_rps == pytest.approx(6.0, rel=0.05)  # the router's counter grows 6/s
    assert obs.shed_rate_rps == pytest.approx(1.5, rel=0.05)  # rejected 1/s + expired 0.5/s
    assert obs.served_rate_rps == pytest.approx(4.5, rel=0.05)
    assert obs.arrival_scv is not None and obs.arrival_scv < 0.2  # a steady counter is not Poisson (1)
    assert obs.input_tokens_mean == pytest.approx(300.0)  # _sum / _count, not a bucket midpoint (288), and
    # the router's demand mix: 100 if the prefill workers' served mix were read
    assert obs.input_tokens_p90 == pytest.approx(313.6)  # 256 + 0.9 * 64 inside the only bucket
    assert obs.output_tokens_mean == pytest.approx(180.0)
    assert obs.output_tokens_p90 == pytest.approx(188.8)  # 160 + 0.9 * 32: both decode pods summed
    # the lengths' trend compares this window with the one before (the same counters, `offset` one
    # 10 s window): the exporters' mix is steady, so the means are equal, and the noise is the spread
    # inside the one bucket each length falls in (zero would read any rise as a trend)
    for slope, noise in (
        (obs.input_tokens_trend_per_s, obs.input_tokens_trend_noise_per_s),
        (obs.output_tokens_trend_per_s, obs.output_tokens_trend_noise_per_s),
    ):
        assert slope == pytest.approx(0.0, abs=1e-6) and noise is not None and noise > 0, obs
    assert obs.prefill_queue_depth == 7.0  # router 4 + prefill 3 (3 if the router's queue were missed)
    assert obs.decode_queue_depth == 3.0  # decode 1 + 2: the same family, the decode pods' own
    assert obs.decode_kv_usage == 0.5  # mean of 0.25 and 0.75
    assert obs.decode_running == 24.0
    assert obs.decode_generated_tokens_mean == 100.0  # (900 + 1500) tokens over the 24 running
    assert obs.latency_percentile == 90
    assert obs.ttft_seconds == pytest.approx(1.1875)  # rank 0.9 in (1.0, 1.25]: 1.0 + 0.25 * 0.3 / 0.4
    assert obs.ttft_attainment == pytest.approx(0.6)  # SLO 1.0 s sits on a bound
    # per request, as the SLO is written: rank 0.9 in (0.04, 0.05], 0.04 + 0.01 * 0.1 / 0.2 (the gaps'
    # P90 would read 0.049)
    assert obs.tpot_seconds == pytest.approx(0.045)
    assert obs.tpot_mean_seconds == pytest.approx(0.03)  # the gaps' _sum / _count: the gap users see
    # less the decode pods' slot waits (2 x 2.25/s at 0.6 s of the gaps' 900/s at 0.03 s): the engine's
    # step, which the decode correction learns from
    assert obs.decode_step_mean_seconds == pytest.approx((900 * 0.03 - 2 * 2.25 * 0.6) / 900, rel=1e-3)
    assert obs.tpot_attainment == pytest.approx(0.8)  # 80% of the requests within 30 ms (of the gaps: 50%)
    assert obs.prefix_cache_hit_rate == pytest.approx(0.25)  # 150 of 600 tokens/s, from the counters
    # the curve's shape: of the 160 samples missing in the window, the 132 beyond chance count as reuses
    # at the smallest distance: (10 + 132) / (40 + 132) and (20 + 132) / (40 + 132)
    assert obs.prefix_reuse_share_within is not None
    (small, at_small), (large, at_large) = obs.prefix_reuse_share_within
    assert (small, large) == (65536.0, 1_000_000.0)
    assert at_small == pytest.approx(0.825, rel=0.02) and at_large == pytest.approx(0.884, rel=0.02)
    # how the hits fall on prompts: every prompt finds its first half cached
    assert obs.prefix_hit_mix is not None
    assert [x for pair in obs.prefix_hit_mix for x in pair] == pytest.approx([0.5, 1.0], rel=0.02)


def test_behind_two_routers_the_prefix_cache_curve_is_not_read(world: Fixture) -> None:
    """Each router samples the reuse distances of the prompts it admits only; a prefix reused across
    routers looks new to each. Against real Prometheus the reading counts the routers that sampled, and
    with two it reads no curve and says why; the rest of the load is read as ever (both routers'
    arrivals)."""
    spec = _llama_spec()
    obs = _observe(world.prom, spec, "twin-e2e", ready=(1, 2))
    assert obs.prefix_reuse_share_within is None
    assert obs.prefix_reuse_unread == "2 routers each sample only the prompts they admit"
    assert [p for p in obs.problems if not p.startswith("prefix-cache curve: 2 routers")] == []
    assert obs.arrival_rate_rps == pytest.approx(12.0, rel=0.05)  # 6/s on each router
    assert obs.prefix_cache_hit_rate == pytest.approx(0.25)


def test_vllm_colon_names_nan_gauge_deprecated_fallback_and_conservation(world: Fixture) -> None:
    stored = world.prom.query('vllm_num_requests_waiting{namespace="vllm-e2e", role="prefill"}')
    assert len(stored) == 1  # OpenMetrics negotiation: ':' is stored as '_', the preset must match it
    spec = make_spec(
        engine="vllm",
        model="meta-llama/Llama-3-8B",
        slo={"ttftSeconds": 1.0, "tpotSeconds": 0.05, "percentile": 90},
        metrics={"selector": {"model_name": "meta-llama/Llama-3-8B"}, "windowSeconds": WINDOW_SECONDS},
    )
    obs = _observe(world.prom, spec, "vllm-e2e", ready=(1, 1))
    # completions 4/s + queue growth 0.5/s (4.0 if the growth of the prefill queue were ignored)
    assert obs.arrival_rate_rps == pytest.approx(4.5, rel=0.05)
    assert obs.input_tokens_mean == pytest.approx(800.0)
    assert obs.input_tokens_p90 == pytest.approx(950.0)  # 500 + 0.9 * 500
    assert obs.output_tokens_mean == pytest.approx(150.0)
    assert obs.ttft_seconds == pytest.approx(0.725)  # 0.5 + 0.9 * 0.25
    assert obs.tpot_seconds == pytest.approx(0.0475)  # from vllm:time_per_output_token_seconds
    # its _sum (600 gaps/s at 0.04 s) and the decode pods' waits (4/s at 1.2 s): (24 + 4.8) / 600
    assert obs.tpot_mean_seconds == pytest.approx(0.048)
    assert obs.decode_step_mean_seconds == pytest.approx(0.04)  # vLLM's gaps leave the waits out
    # every gap is within the 50 ms SLO, but a request's gaps leave (0.05 - 0.04) x 149 = 1.49 s for
    # its wait, and the waits between 1 and 2 s are half of the requests: 0.5 + 0.5 x 0.49
    assert obs.tpot_attainment == pytest.approx(0.745, abs=0.005)
    assert obs.decode_running == 30.0
    assert obs.prefill_queue_depth is not None and obs.prefill_queue_depth >= 2.0
    assert obs.decode_queue_depth == 6.0  # the decode pod's: not the prefill pod's growing queue
    assert obs.decode_kv_usage is None  # NaN is unknown, never 0
    assert any("decode KV usage" in p and "nan" in p and "decode-0" in p for p in obs.problems), obs.problems
    assert obs.prefix_cache_hit_rate == pytest.approx(0.5)  # prefix_cache_hits / prefix_cache_queries


def test_sglang_engine_type_role_and_means_without_length_histograms(world: Fixture) -> None:
    spec = make_spec(
        engine="sglang",
        model="qwen",
        slo={"ttftSeconds": 1.0, "tpotSeconds": 0.025, "percentile": 90},
        metrics={"selector": {"model_name": "qwen"}, "windowSeconds": WINDOW_SECONDS},
    )
    obs = _observe(world.prom, spec, "sglang-e2e", ready=(1, 1))
    assert obs.arrival_rate_rps == pytest.approx(2.0, rel=0.05)  # prefill completions, steady queue
    assert obs.input_tokens_mean == pytest.approx(1200.0)  # prompt_tokens_total / num_requests_total
    assert obs.input_tokens_p90 is None  # no histogram: unknown, not the mean
    assert obs.output_tokens_mean == pytest.approx(250.0)
    assert obs.output_tokens_p90 is None
    assert any("--collect-tokens-histogram" in p for p in obs.problems), obs.problems
    assert obs.prefill_queue_depth == 5.0
    assert obs.decode_queue_depth == 3.0
    assert obs.decode_kv_usage == 0.4
    assert obs.decode_running == 12.0
    assert obs.ttft_seconds == pytest.approx(0.98)  # 0.8 + 0.9 * 0.2
    assert obs.tpot_mean_seconds == pytest.approx(0.023)  # (500 * 0.022 + 2 * 0.25) / 500: waits included
    assert obs.decode_step_mean_seconds == pytest.approx(0.022)
    assert obs.prefix_cache_hit_rate == pytest.approx(0.75)  # cached_tokens / prompt_tokens (not the gauge)
    assert obs.tpot_attainment == pytest.approx(1.0)


def test_missing_families_and_too_few_pods_are_unknown(world: Fixture) -> None:
    spec = make_spec(
        engine="dopd",
        model="llama",
        metrics={"selector": {"model": "llama"}, "windowSeconds": WINDOW_SECONDS},
    )
    # four ready decode pods, two report: a sum over two would undercount the batch
    obs = _observe(world.prom, spec, "dopd-e2e", ready=(1, 4))
    assert obs.decode_running is None and obs.decode_kv_usage is None
    assert any("2 of 4 ready decode pods" in p for p in obs.problems), obs.problems
    assert obs.arrival_rate_rps is not None  # the rest is still read
    # a namespace nothing is exported from: every field unknown, each with its reason
    empty = _observe(world.prom, spec, "nobody-e2e", ready=(1, 1))
    assert empty.arrival_rate_rps is None and empty.input_tokens_mean is None and empty.ttft_seconds is None
    assert any("no series" in p and "dopd_requests_arrived_total" in p for p in empty.problems), (
        empty.problems
    )


def test_a_stopped_target_is_stale_not_zero(world: Fixture) -> None:
    spec = make_spec(
        engine="dopd",
        model="llama",
        metrics={"selector": {"model": "llama"}, "windowSeconds": WINDOW_SECONDS},
    )
    router, _prefill, decode0, decode1 = world.pods["stale"]
    before = _observe(world.prom, spec, "stale-e2e", ready=(1, 2))
    assert before.decode_kv_usage == 0.5 and before.arrival_rate_rps is not None
    for pod in (router, decode0, decode1):
        pod.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # down, and the newest samples older than 3 s
        down = world.prom.query(f'up{{instance=~"{router.target}|{decode0.target}|{decode1.target}"}} == 0')
        if len(down) == 3:
            break
        time.sleep(0.5)
    time.sleep(OPTIONS.stale_after + 1.0)
    after = _observe(world.prom, spec, "stale-e2e", ready=(1, 2))
    assert after.decode_kv_usage is None and after.decode_running is None and after.arrival_rate_rps is None
    assert any("decode KV usage" in p and "stale" in p for p in after.problems), after.problems
    assert any("arrival rate" in p and "stale" in p for p in after.problems), after.problems


def test_arrival_history_is_a_rate_per_aligned_bucket(world: Fixture) -> None:
    spec = make_spec(engine="dopd", model="llama", metrics={"selector": {"model": "llama"}})
    source = MetricsSource(Endpoint(world.prom.url), OPTIONS)
    try:
        now = datetime.fromtimestamp(time.time() - 3.0, tz=UTC)  # every scrape before it is stored
        history = asyncio.run(source.arrival_history(spec, "dopd-e2e", now, 600.0, 5.0))
        again = asyncio.run(source.arrival_history(spec, "dopd-e2e", now, 600.0, 5.0))  # from the cache
        # three hours at 1 s: 10,800 points, more than one range query may return (asked in two parts)
        fine = asyncio.run(source.arrival_history(spec, "dopd-e2e", now, 3 * 3600.0, 1.0))
    finally:
        source.close()
    assert len(history.timestamps_s) == 120
    assert all(t % 5.0 == 0 for t in history.timestamps_s)
    assert history.timestamps_s[-1] == math.floor(now.timestamp() / 5.0) * 5.0 - 5.0  # complete buckets only
    known = history.arrival_rate_rps[~np.isnan(history.arrival_rate_rps)]
    assert len(known) >= 2 and all(v == pytest.approx(6.0, rel=0.05) for v in known[1:])
    assert math.isnan(history.arrival_rate_rps[0])  # ten minutes ago the exporter did not exist: a gap
    assert list(again.arrival_rate_rps[-len(known) :]) == pytest.approx(list(known), rel=1e-6)
    assert len(fine.timestamps_s) == 10_800 and fine.timestamps_s[-1] == math.floor(now.timestamp()) - 1.0
    assert fine.arrival_rate_rps[-1] == pytest.approx(6.0, rel=0.05)  # rate over 4 scrape intervals


def test_models_of_one_batch_share_each_query_and_read_only_their_own_series(world: Fixture) -> None:
    """Ticks of many models at once cost one query of each kind, not one per model; what each model
    reads is what it reads alone (a third, unrelated model is not in the batch)."""
    specs = {
        name: make_spec(
            engine="dopd",
            model=name,
            metrics={"selector": {"model": name}, "windowSeconds": WINDOW_SECONDS},
        )
        for name in ("llama", "mistral")
    }
    sent: list[str] = []
    shared = MetricsSource(Endpoint(world.prom.url), OPTIONS, on_query=sent.append)
    ready = (RoleObservation(current=1, ready=1), RoleObservation(current=2, ready=2))

    async def together() -> list[tuple[Observation, Any]]:
        now = datetime.fromtimestamp(time.time() - 3.0, tz=UTC)  # every scrape before it is stored

        async def one(spec: DisaggregatedModelSpec) -> tuple[Observation, Any]:
            observation = await shared.observe(spec, "dopd-e2e", *ready)
            history = await shared.arrival_history(spec, "dopd-e2e", now, 120.0, 5.0)
            return observation, history

        return list(await asyncio.gather(*(one(spec) for spec in specs.values())))

    try:
        # the first round meets each model as it comes; from the second on, the batch knows both
        asyncio.run(together())
        # the next round in a new answer slice and history step (so it cannot reuse the first's answers):
        # 3.1 s past a multiple of 5 s, `now` is just past it, the end of a bucket the first round lacked
        time.sleep(5.0 - time.time() % 5.0 + 3.1)
        sent.clear()
        (llama, llama_history), (mistral, mistral_history) = asyncio.run(together())
    finally:
        shared.close()
    assert sorted(sent) == ["history", "observe", "observe"], sent
    assert llama.arrival_rate_rps == pytest.approx(6.0, rel=0.05)
    assert mistral.arrival_rate_rps == pytest.approx(9.0, rel=0.05)
    assert llama_history.arrival_rate_rps[-1] == pytest.approx(6.0, rel=0.05)
    assert mistral_history.arrival_rate_rps[-1] == pytest.approx(9.0, rel=0.05)
    alone = _observe(world.prom, specs["llama"], "dopd-e2e", ready=(1, 2))
    for field_name in (
        "prefill_queue_depth",
        "decode_queue_depth",
        "decode_kv_usage",
        "decode_running",
        "input_tokens_mean",
    ):
        assert getattr(llama, field_name) == getattr(alone, field_name), field_name
    # the same problems (their numbers aside: a young series' counts grow between the two reads)
    assert [re.sub(r"[0-9.]+", "N", p) for p in llama.problems] == [
        re.sub(r"[0-9.]+", "N", p) for p in alone.problems
    ]


def test_pod_loads_are_the_models_own_pods(world: Fixture) -> None:
    """What the operator ranks scale-down victims by: each decode pod's requests in flight and KV usage,
    of this model only (the other model in the namespace has pods of the same names)."""
    spec = make_spec(engine="dopd", model="llama", metrics={"selector": {"model": "llama"}})
    source = MetricsSource(Endpoint(world.prom.url), OPTIONS)
    try:
        loads = asyncio.run(source.pod_loads(spec, "dopd-e2e", "decode"))
    finally:
        source.close()
    assert loads == {
        "decode-0": PodLoad(inflight=11.0, kv_usage=0.25),  # running 10 + waiting 1
        "decode-1": PodLoad(inflight=16.0, kv_usage=0.75),
    }


def test_label_values_select_exactly_their_own_series(world: Fixture) -> None:
    for index, value in enumerate(ESCAPES):
        found = world.prom.query(f'dopd_e2e_escape{{namespace="escape-e2e",value={quote(value)}}}')
        # Prometheus drops empty label values: the series with value="" has no `value` label at all
        assert [r["metric"].get("value", "") for r in found] == [value], (index, value)
        assert float(found[0]["value"][1]) == index
    # a batch's matcher (one regex over several models' values) selects exactly those values' series
    chosen = ESCAPES[::3]
    batch = one_of("value", chosen).render()
    found = world.prom.query(f'dopd_e2e_escape{{namespace="escape-e2e",{batch}}}')
    assert sorted(r["metric"].get("value", "") for r in found) == sorted(set(chosen))


def test_bucket_quantile_equals_prometheus_histogram_quantile(world: Fixture) -> None:
    # evaluated 3 scrapes back: at "now" a scrape in flight can land between the two queries and move
    # increase()'s extrapolation in the 13th digit (a CI run saw a rank cross a bucket bound that way)
    at = f"{time.time() - 3.0:.3f}"
    buckets_query = 'sum by (le) (increase(dopd_time_to_first_token_seconds_bucket{namespace="dopd-e2e",role="router"}[10s]))'
    vector = world.prom.api("query", query=buckets_query, time=at)["result"]
    buckets = [(float(r["metric"]["le"]), float(r["value"][1])) for r in vector]
    assert len(buckets) == 5
    for q in (0.0, 0.3, 0.6, 0.61, 0.9, 0.99, 1.0):
        expected = world.prom.api("query", query=f"histogram_quantile({q}, {buckets_query})", time=at)[
            "result"
        ]
        theirs = float(expected[0]["value"][1])
        ours = bucket_quantile(q, buckets)
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, rel=1e-12), q


def test_vllm_arrival_history_adds_the_growth_of_each_in_system_gauge(world: Fixture) -> None:
    """The history query of an engine without an arrival counter: completions 4/s plus the prefill
    queue's growth 0.5/s. With both gauges in one delta() selector Prometheus refused the query (two
    series with the same labels once delta drops the name), and the forecaster never got a history."""
    spec = make_spec(
        engine="vllm",
        model="meta-llama/Llama-3-8B",
        metrics={"selector": {"model_name": "meta-llama/Llama-3-8B"}, "windowSeconds": WINDOW_SECONDS},
    )
    source = MetricsSource(Endpoint(world.prom.url), OPTIONS)
    try:
        now = datetime.fromtimestamp(time.time() - 3.0, tz=UTC)
        history = asyncio.run(source.arrival_history(spec, "vllm-e2e", now, 60.0, 5.0))
    finally:
        source.close()
    known = history.arrival_rate_rps[~np.isnan(history.arrival_rate_rps)]
    assert len(known) >= 2
    assert known[-1] == pytest.approx(4.5, rel=0.05)
