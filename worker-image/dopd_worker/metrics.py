"""Prometheus metrics of the workers and the router, with the names the operator's `dopd` preset queries.

Every series carries `role` (prefill | decode | router) and `model`. Semantics (docs/worker.md):
- gauges `dopd_requests_waiting`, `dopd_requests_running`, `dopd_kv_cache_usage_ratio` (0..1);
- histograms `dopd_time_to_first_token_seconds` (router: end to end; prefill: arrival to first token),
  `dopd_inter_token_latency_seconds`, `dopd_prompt_tokens`, `dopd_generation_tokens` (at request end),
  `dopd_kv_transfer_seconds`;
- counters `dopd_prompt_tokens_total`, `dopd_generation_tokens_total`, `dopd_requests_total{status}`,
  `dopd_kv_transfer_bytes_total`, `dopd_kv_transfer_failures_total`.
Each process gets its own registries, so tests can run several roles in one interpreter.

The counter `dopd_prompt_tokens_total` and the histogram `dopd_prompt_tokens` share a base name, which one
prometheus_client registry refuses (and OpenMetrics forbids as two families of one name). So counters and
histograms live in two registries, exposed together in the classic text format (0.0.4), where the names
`dopd_prompt_tokens_total` and `dopd_prompt_tokens_bucket/_sum/_count` are distinct; `_created` series
are disabled so the two never collide there either.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
_LENGTH_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 131072)


@dataclass
class Metrics:
    registry: CollectorRegistry
    counter_registry: CollectorRegistry
    role: str
    model: str
    requests_waiting: Gauge
    requests_running: Gauge
    kv_cache_usage_ratio: Gauge
    ttft_seconds: Histogram
    inter_token_latency_seconds: Histogram
    prompt_tokens: Histogram
    generation_tokens: Histogram
    prompt_tokens_total: Counter
    generation_tokens_total: Counter
    requests_total: Counter
    kv_transfer_bytes_total: Counter
    kv_transfer_failures_total: Counter
    kv_transfer_seconds: Histogram

    def status(self, status: str) -> None:
        self.requests_total.labels(role=self.role, model=self.model, status=status).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(self.counter_registry)


def create_metrics(role: str, model: str) -> Metrics:
    """A fresh registry with every dopd metric, label values bound to this process's role and model."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    reg = CollectorRegistry()
    counters = CollectorRegistry()
    labels = ("role", "model")

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, labels, registry=reg)

    def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=reg)

    def counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, labels, registry=counters)

    m = Metrics(
        registry=reg,
        counter_registry=counters,
        role=role,
        model=model,
        requests_waiting=gauge("dopd_requests_waiting", "Requests queued and not yet being processed."),
        requests_running=gauge("dopd_requests_running", "Requests being processed (in a batch)."),
        kv_cache_usage_ratio=gauge("dopd_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use, 0..1."),
        ttft_seconds=hist("dopd_time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS),
        inter_token_latency_seconds=hist(
            "dopd_inter_token_latency_seconds", "Time between consecutive output tokens.", _ITL_BUCKETS
        ),
        prompt_tokens=hist("dopd_prompt_tokens", "Prompt length per request, tokens.", _LENGTH_BUCKETS),
        generation_tokens=hist(
            "dopd_generation_tokens", "Generated tokens per finished request.", _LENGTH_BUCKETS
        ),
        prompt_tokens_total=counter("dopd_prompt_tokens", "Prompt tokens processed."),
        generation_tokens_total=counter("dopd_generation_tokens", "Tokens generated."),
        requests_total=Counter(
            "dopd_requests", "Finished requests by status.", (*labels, "status"), registry=counters
        ),
        kv_transfer_bytes_total=counter("dopd_kv_transfer_bytes", "KV-cache bytes sent or received."),
        kv_transfer_failures_total=counter("dopd_kv_transfer_failures", "KV transfers that failed."),
        kv_transfer_seconds=hist(
            "dopd_kv_transfer_seconds", "Duration of one KV transfer.", _LATENCY_BUCKETS
        ),
    )
    return m
