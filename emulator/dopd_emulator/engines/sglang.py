"""SGLang families as a prefill/decode-disaggregated deployment exposes them (`--disaggregation-mode
prefill|decode` behind its router, which sends each request to a prefill and a decode server at once).

Names and default buckets checked against python/sglang/srt/observability/metrics_collector.py (2026).
Labels: `model_name` and `engine_type` (prefill | decode: SGLang's own role label) on every family; the
scheduler's families (gauges, queue time) also carry `tp_rank` and `pp_rank` ("0"); plus the namespace
label and `pod`. The prompt/generation length histograms are those of `--collect-tokens-histogram`.

- prefill server: TTFT = arrival -> first token; queue time = arrival -> batch start; the request
  finishes there with one generated token (prompt and generation tokens, `num_requests_total`, the
  length histograms are the tokenizer's per-finished-request accounting).
- decode server: it received the request at arrival too, so its TTFT = arrival -> the sequence joins
  the batch; queue time = KV arrival -> join; inter-token latency per step with weight B (as SGLang
  records a chunk of n tokens); at completion all its prompt and generated tokens, the lengths, one
  request.
Callers: `engines.make_recorder`.
"""

from __future__ import annotations

from dopd_emulator.engines.base import EngineRecorder, PodState, RequestTrack
from dopd_emulator.store import Family, FloatArray
from dopd_operator.api import Engine

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080, 0.100, 0.200,
    0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000,
)  # fmt: skip
QUEUE_BUCKETS = (
    0.0, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 300, 400, 500, 600,
    700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000, 2500, 3000,
)  # fmt: skip
TOKENS_BUCKETS = (
    100, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 12000, 15000,
    20000, 22000, 25000, 30000, 35000, 40000, 66000, 99000, 132000, 300000, 600000, 900000, 1100000,
)  # fmt: skip

QUEUED = Family("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.")
RUNNING = Family("sglang:num_running_reqs", "gauge", "The number of running requests.")
TOKEN_USAGE = Family("sglang:token_usage", "gauge", "The token usage.")
CACHE_HIT_RATE = Family("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.")
QUEUE_TIME = Family(
    "sglang:queue_time_seconds", "histogram", "Histogram of queueing time in seconds.", QUEUE_BUCKETS
)
TTFT = Family(
    "sglang:time_to_first_token_seconds",
    "histogram",
    "Histogram of time to first token in seconds.",
    TTFT_BUCKETS,
)
ITL = Family(
    "sglang:inter_token_latency_seconds",
    "histogram",
    "Histogram of inter-token latency in seconds.",
    ITL_BUCKETS,
)
PROMPT_LENGTH = Family(
    "sglang:prompt_tokens_histogram", "histogram", "Histogram of prompt token length.", TOKENS_BUCKETS
)
OUTPUT_LENGTH = Family(
    "sglang:generation_tokens_histogram", "histogram", "Histogram of generation token length.", TOKENS_BUCKETS
)
PROMPT_TOKENS = Family("sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
OUTPUT_TOKENS = Family("sglang:generation_tokens_total", "counter", "Number of generation tokens processed.")
REQUESTS = Family("sglang:num_requests_total", "counter", "Number of requests processed.")
# by cache_source (device/host/storage); the emulator models no prefix sharing: "device" stays at 0
CACHED_TOKENS = Family(
    "sglang:cached_tokens_total", "counter", "Number of cached prompt tokens by source (device/host/storage)."
)

_SCHEDULER = (QUEUED, RUNNING, TOKEN_USAGE, CACHE_HIT_RATE, QUEUE_TIME)


class SglangRecorder(EngineRecorder):
    engine = Engine.SGLANG
    families = (
        *_SCHEDULER,
        TTFT,
        ITL,
        PROMPT_LENGTH,
        OUTPUT_LENGTH,
        PROMPT_TOKENS,
        OUTPUT_TOKENS,
        REQUESTS,
        CACHED_TOKENS,
    )

    def families_for(self, role: str) -> tuple[Family, ...]:
        return self.families

    def labels(self, family: Family, role: str) -> dict[str, str]:
        labels = {"model_name": self.scheme.model, self.scheme.role_label: role}
        if family in _SCHEDULER:
            labels.update(tp_rank="0", pp_rank="0")
        if family is CACHED_TOKENS:
            labels.update(cache_source="device")
        return labels

    def _finished(self, pod: str, prompt_tokens: int, output_tokens: int) -> None:
        self.inc(PROMPT_TOKENS.name, pod, prompt_tokens)
        self.inc(OUTPUT_TOKENS.name, pod, output_tokens)
        self.inc(REQUESTS.name, pod)
        self.observe(PROMPT_LENGTH.name, pod, prompt_tokens)
        self.observe(OUTPUT_LENGTH.name, pod, output_tokens)

    def on_first_token(self, pod: str, track: RequestTrack) -> None:
        assert track.first_token_s is not None and track.prefill_start_s is not None
        self.observe(TTFT.name, pod, track.first_token_s - track.arrival_s)
        self.observe(QUEUE_TIME.name, pod, track.prefill_start_s - track.arrival_s)
        self._finished(pod, track.input_tokens, 1)

    def on_joined(self, pod: str, track: RequestTrack) -> None:
        assert track.join_s is not None and track.kv_arrival_s is not None
        self.observe(TTFT.name, pod, track.join_s - track.arrival_s)
        self.observe(QUEUE_TIME.name, pod, track.join_s - track.kv_arrival_s)

    def on_steps(self, pod: str, step_seconds: FloatArray, sequences: int) -> None:
        self.observe(ITL.name, pod, step_seconds, weight=sequences)

    def on_finished(self, pod: str, role: str, track: RequestTrack) -> None:
        if role == "decode":
            self._finished(pod, track.input_tokens, track.output_tokens)

    def on_gauges(self, pod: str, role: str, state: PodState) -> None:
        self.set(QUEUED.name, pod, state.waiting)
        self.set(RUNNING.name, pod, state.running)
        self.set(TOKEN_USAGE.name, pod, state.kv_usage)
        self.set(CACHE_HIT_RATE.name, pod, 0.0)
