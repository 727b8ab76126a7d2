"""Prometheus metrics of the workers and the router, with the names the operator's `dopd` preset queries.

Every series carries `role` (prefill | decode | router) and `model`. Semantics (docs/worker.md):
- gauges `dopd_requests_waiting`, `dopd_requests_running`, `dopd_kv_cache_usage_ratio` (0..1), on decode
  `dopd_decode_generated_tokens` (the tokens the running sequences have generated so far, summed);
- histograms `dopd_time_to_first_token_seconds` (router: end to end; prefill: arrival to first token),
  `dopd_inter_token_latency_seconds`, `dopd_prompt_tokens`, `dopd_generation_tokens` (at request end),
  `dopd_kv_transfer_seconds`, on decode `dopd_decode_slot_wait_seconds` (per sequence joining a batch,
  its wait for the slot after its first token: the share of its first gap that is not a decode step,
  so the router's gaps less these waits are the engine's steps), and on the router `dopd_request_time_per_output_token_seconds` (each
  finished request's mean gap, first token to last: the per-request TPOT the SLO is written in) and
  `dopd_prompt_reuse_distance_tokens` (per sampled block of an admitted prompt, its LRU reuse distance:
  the prefix cache's hit rate at every size, `prefix_reuse`) with the counter
  `dopd_prompt_reuse_expected_samples_total` (blocks looked at x the sampling rate), and
  `dopd_prompt_reuse_sampled_position_ratio` / `dopd_prompt_reuse_reused_position_ratio` (where in its
  prompt each sampled block sits, and that of those reused at all: how the hits fall on prompts);
- counters `dopd_prompt_tokens_total`, `dopd_generation_tokens_total`, `dopd_requests_total{status}`,
  `dopd_kv_transfer_bytes_total`, `dopd_kv_transfer_failures_total`, and on the router
  `dopd_requests_arrived_total` (every valid request, counted on arrival before the admission decision:
  the operator's arrival rate, i.e. the demand, where `dopd_requests_total` counts completions),
  `dopd_requests_rejected_total{reason,priority}` (shed by admission at entry) and
  `dopd_requests_expired_total{priority}` (admitted, then dropped from the queue at its deadline);
- prefix cache (prefill): counters `dopd_prefix_cache_queries_total` (prompt tokens looked up) and
  `dopd_prefix_cache_hits_total` (of those, tokens served from the cache), the operator's hit rate. The
  worker has no prefix cache yet: it looks every prompt up and never hits, and says so by counting
  (a measured 0, where a missing series would be unknown). both exist at zero from a prefill worker's start;
- drain and KV hand-over (docs/drain.md): gauges `dopd_kv_transfers_pending` (prefill: accepted and not yet
  acknowledged by the decode side; decode: receives posted and not complete), `dopd_draining` (1 while
  draining) and `dopd_drain_in_flight_requests`; counters `dopd_kv_transfers_unconfirmed_total` (sent,
  never acknowledged within the transfer timeout) and `dopd_drain_aborted_requests_total` (ended with an
  error because the drain timeout passed).
The bucket boundaries are public: the simulator records its histograms with the same ones, so its
observations carry the same bucket resolution as the operator's.
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

from dopd_worker.prefix_reuse import REUSE_BUCKETS_TOKENS, REUSE_POSITION_BUCKETS

# Bounds fine enough for the operator's quantiles and SLO attainment (linear interpolation inside a
# bucket): about 10-25% apart where TTFT and inter-token latencies live, with the default SLOs (TTFT
# 1.5 s, TPOT 50 ms) on a bound. On an hour of the Azure conversation trace, the simulator's P90 TTFT
# and TPOT from these buckets are 2.5% and 6% off the exact values (median over ticks) where the
# earlier decade-wide buckets were 8% and 23% off (docs/metrics.md).
LATENCY_BUCKETS_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
ITL_BUCKETS_SECONDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.035, 0.04,
    0.045, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
LENGTH_BUCKETS_TOKENS = (
    1, 8, 16, 32, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560,
    3072, 4096, 5120, 6144, 8192, 10240, 12288, 16384, 24576, 32768, 65536, 131072,
)  # fmt: skip


@dataclass
class Metrics:
    registry: CollectorRegistry
    counter_registry: CollectorRegistry
    role: str
    model: str
    requests_waiting: Gauge
    requests_running: Gauge
    kv_cache_usage_ratio: Gauge
    decode_generated_tokens: Gauge
    ttft_seconds: Histogram
    inter_token_latency_seconds: Histogram
    decode_slot_wait_seconds: Histogram
    request_tpot_seconds: Histogram
    prompt_tokens: Histogram
    prompt_reuse_distance_tokens: Histogram
    prompt_reuse_expected_samples_total: Counter
    prompt_reuse_sampled_position_ratio: Histogram
    prompt_reuse_reused_position_ratio: Histogram
    generation_tokens: Histogram
    prompt_tokens_total: Counter
    generation_tokens_total: Counter
    requests_total: Counter
    requests_arrived_total: Counter
    requests_rejected_total: Counter
    requests_expired_total: Counter
    kv_transfer_bytes_total: Counter
    kv_transfer_failures_total: Counter
    kv_transfer_seconds: Histogram
    kv_transfers_pending: Gauge
    kv_transfers_unconfirmed_total: Counter
    draining: Gauge
    drain_in_flight_requests: Gauge
    drain_aborted_requests_total: Counter
    prefix_cache_queries_total: Counter
    prefix_cache_hits_total: Counter

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
        decode_generated_tokens=gauge(
            "dopd_decode_generated_tokens", "Tokens generated so far by the sequences decoding, summed."
        ),
        ttft_seconds=hist(
            "dopd_time_to_first_token_seconds", "Time to first token.", LATENCY_BUCKETS_SECONDS
        ),
        inter_token_latency_seconds=hist(
            "dopd_inter_token_latency_seconds", "Time between consecutive output tokens.", ITL_BUCKETS_SECONDS
        ),
        decode_slot_wait_seconds=hist(
            "dopd_decode_slot_wait_seconds",
            "Decode: per sequence joining a batch, how long it waited for a slot after its first token (the "
            "prefill's) went out; its first inter-token gap is this wait plus a decode step.",
            LATENCY_BUCKETS_SECONDS,
        ),
        request_tpot_seconds=hist(
            "dopd_request_time_per_output_token_seconds",
            "Per finished request of two or more tokens, the mean time between its output tokens, first "
            "to last (a wait for a decode slot included): its TPOT as its user sees it.",
            ITL_BUCKETS_SECONDS,
        ),
        prompt_tokens=hist("dopd_prompt_tokens", "Prompt length per request, tokens.", LENGTH_BUCKETS_TOKENS),
        prompt_reuse_distance_tokens=hist(
            "dopd_prompt_reuse_distance_tokens",
            "Router: per sampled full block of an admitted prompt, the LRU stack distance since the "
            "block's (prefix's) previous use, in tokens (+Inf: first use); the share at or below C is the "
            "hit rate a prefix cache of C tokens would get.",
            REUSE_BUCKETS_TOKENS,
        ),
        prompt_reuse_sampled_position_ratio=hist(
            "dopd_prompt_reuse_sampled_position_ratio",
            "Router: per sampled full block of an admitted prompt, where in the prompt it sits (the share "
            "of the prompt's blocks before its middle).",
            REUSE_POSITION_BUCKETS,
        ),
        prompt_reuse_reused_position_ratio=hist(
            "dopd_prompt_reuse_reused_position_ratio",
            "Router: the same for the sampled blocks used before (a finite reuse distance); per position, "
            "its share of the sampled ones is the share of prompts that find more of themselves cached.",
            REUSE_POSITION_BUCKETS,
        ),
        generation_tokens=hist(
            "dopd_generation_tokens", "Generated tokens per finished request.", LENGTH_BUCKETS_TOKENS
        ),
        prompt_tokens_total=counter("dopd_prompt_tokens", "Prompt tokens processed."),
        generation_tokens_total=counter("dopd_generation_tokens", "Tokens generated."),
        requests_total=Counter(
            "dopd_requests", "Finished requests by status.", (*labels, "status"), registry=counters
        ),
        requests_arrived_total=counter(
            "dopd_requests_arrived", "Requests that reached the router, counted before admission."
        ),
        requests_rejected_total=Counter(
            "dopd_requests_rejected",
            "Requests the router's admission shed at entry, by reason and priority class.",
            (*labels, "reason", "priority"),
            registry=counters,
        ),
        requests_expired_total=Counter(
            "dopd_requests_expired",
            "Admitted requests dropped from the router's queue past the point where they could meet the SLO.",
            (*labels, "priority"),
            registry=counters,
        ),
        kv_transfer_bytes_total=counter("dopd_kv_transfer_bytes", "KV-cache bytes sent or received."),
        kv_transfer_failures_total=counter("dopd_kv_transfer_failures", "KV transfers that failed."),
        kv_transfer_seconds=hist(
            "dopd_kv_transfer_seconds", "Duration of one KV transfer.", LATENCY_BUCKETS_SECONDS
        ),
        kv_transfers_pending=gauge(
            "dopd_kv_transfers_pending",
            "KV transfers not yet confirmed by both ends (prefill: until the decode side acknowledges).",
        ),
        kv_transfers_unconfirmed_total=counter(
            "dopd_kv_transfers_unconfirmed",
            "KV transfers sent but never acknowledged by the decode side within the transfer timeout.",
        ),
        draining=gauge("dopd_draining", "1 while the process drains (SIGTERM or POST /drain), else 0."),
        drain_in_flight_requests=gauge(
            "dopd_drain_in_flight_requests", "Work left to finish before a draining process exits."
        ),
        drain_aborted_requests_total=counter(
            "dopd_drain_aborted_requests",
            "Requests ended with an error because the drain timeout passed before they finished.",
        ),
        prompt_reuse_expected_samples_total=counter(
            "dopd_prompt_reuse_expected_samples",
            "Router: full prompt blocks looked at times the reuse sampling rate (SHARDS-adj's expected "
            "samples, beside dopd_prompt_reuse_distance_tokens).",
        ),
        prefix_cache_queries_total=counter(
            "dopd_prefix_cache_queries", "Prompt tokens looked up in the prefix cache (prefill)."
        ),
        prefix_cache_hits_total=counter(
            "dopd_prefix_cache_hits", "Prompt tokens served from the prefix cache (prefill)."
        ),
    )
    if role == "router":  # exposed at zero from the start: a missing series reads as unknown
        m.prompt_reuse_distance_tokens.labels(role=role, model=model)
        m.prompt_reuse_expected_samples_total.labels(role=role, model=model)
        m.prompt_reuse_sampled_position_ratio.labels(role=role, model=model)
        m.prompt_reuse_reused_position_ratio.labels(role=role, model=model)
    if role == "decode":  # exposed at zero from the start: a missing series reads as unknown
        m.decode_slot_wait_seconds.labels(role=role, model=model)
    if role == "prefill":  # exposed at zero from the start: a missing series reads as unknown
        m.prefix_cache_queries_total.labels(role=role, model=model)
        m.prefix_cache_hits_total.labels(role=role, model=model)
    return m
