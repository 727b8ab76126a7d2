"""vLLM (V1) families as a prefill/decode-disaggregated deployment exposes them (the KV connector setup
behind a proxy: the proxy sends a request to a prefill pod with max_tokens=1, then to a decode pod).

Names and default buckets checked against vllm/v1/metrics/loggers.py and buckets.py (2026). Labels:
`model_name`, `engine` ("0"), the role label (vLLM has none: the scrape config relabels the pod label
dopd.io/role, the chart's PodMonitor does), plus the namespace label and `pod`. Every pod registers
every family up front, as vLLM does; a prefill pod's inter-token histogram simply stays empty.

- prefill pod: TTFT = arrival -> first token (the proxy sends at arrival, the prompt waits in the pod);
  queue time = arrival -> batch start; the request finishes there at once (one token,
  finished_reason="length"); prompt tokens; prefix cache queried for the whole prompt, never hit (the
  emulator models no prefix sharing).
- decode pod: the request arrives when prefill ends, so its TTFT = that -> the sequence joins the batch
  (KV transfer + wait for room); queue time = KV arrival -> join, recorded at completion as vLLM does;
  one generated token at join and one per sequence per step; inter-token latency per step with weight
  B; finished_reason="stop" with the request's prompt and output lengths.
- `legacy_names`: also the names vLLM removed in 2026 (`vllm:gpu_cache_usage_perc`,
  `vllm:time_per_output_token_seconds`), for the presets' fallback path.
Callers: `engines.make_recorder`.
"""

from __future__ import annotations

from dopd_emulator.engines.base import EngineRecorder, LabelScheme, PodState, RequestTrack
from dopd_emulator.store import Family, FloatArray
from dopd_operator.api import Engine
from dopd_sim.stepping import SteppedSimulator

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISHED_REASONS = ("stop", "length", "abort")


def tokens_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to max_model_len (`build_1_2_5_buckets`)."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return tuple(buckets)
            buckets.append(float(mantissa * scale))
        scale *= 10


WAITING = Family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
RUNNING = Family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
KV_USAGE = Family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
TTFT = Family(
    "vllm:time_to_first_token_seconds",
    "histogram",
    "Histogram of time to first token in seconds.",
    TTFT_BUCKETS,
)
ITL = Family(
    "vllm:inter_token_latency_seconds",
    "histogram",
    "Histogram of inter-token latency in seconds.",
    ITL_BUCKETS,
)
QUEUE = Family(
    "vllm:request_queue_time_seconds",
    "histogram",
    "Histogram of time spent in WAITING phase for request.",
    REQUEST_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
OUTPUT_TOKENS = Family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.")
SUCCESS = Family("vllm:request_success_total", "counter", "Count of successfully processed requests.")
CACHE_QUERIES = Family(
    "vllm:prefix_cache_queries_total",
    "counter",
    "Prefix cache queries, in terms of number of queried tokens.",
)
CACHE_HITS = Family(
    "vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens."
)
PREEMPTIONS = Family(
    "vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine."
)
LEGACY_KV_USAGE = Family(
    "vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage. (removed in 2026)"
)
LEGACY_TPOT = Family(
    "vllm:time_per_output_token_seconds",
    "histogram",
    "Histogram of time per output token in seconds. (removed in 2026)",
    ITL_BUCKETS,
)


class VllmRecorder(EngineRecorder):
    engine = Engine.VLLM

    def __init__(
        self, sim: SteppedSimulator, scheme: LabelScheme, max_model_len: int, legacy_names: bool = False
    ) -> None:
        self.prompt_length = Family(
            "vllm:request_prompt_tokens",
            "histogram",
            "Number of prefill tokens processed.",
            tokens_buckets(max_model_len),
        )
        self.output_length = Family(
            "vllm:request_generation_tokens", "histogram", "Number of generation tokens processed.",
            tokens_buckets(max_model_len),
        )  # fmt: skip
        self.legacy_names = legacy_names
        current = (
            WAITING, RUNNING, KV_USAGE, TTFT, ITL, QUEUE, self.prompt_length, self.output_length, PROMPT_TOKENS,
            OUTPUT_TOKENS, SUCCESS, CACHE_QUERIES, CACHE_HITS, PREEMPTIONS,
        )  # fmt: skip
        self.families = (*current, LEGACY_KV_USAGE, LEGACY_TPOT) if legacy_names else current
        super().__init__(sim, scheme)

    def families_for(self, role: str) -> tuple[Family, ...]:
        return tuple(f for f in self.families if f is not SUCCESS)

    def register(self, role: str, pod: str) -> None:
        super().register(role, pod)
        for reason in FINISHED_REASONS:  # vLLM creates one child per FinishReason up front
            labels = self.series_labels(SUCCESS, role, pod, finished_reason=reason)
            self.store.ensure(SUCCESS.name, labels, role, pod)

    def labels(self, family: Family, role: str) -> dict[str, str]:
        return {"model_name": self.scheme.model, "engine": "0", self.scheme.role_label: role}

    def _itl(self, pod: str, values: FloatArray | float, weight: float) -> None:
        self.observe(ITL.name, pod, values, weight)
        if self.legacy_names:
            self.observe(LEGACY_TPOT.name, pod, values, weight)

    def on_first_token(self, pod: str, track: RequestTrack) -> None:
        assert track.first_token_s is not None and track.prefill_start_s is not None
        self.observe(TTFT.name, pod, track.first_token_s - track.arrival_s)
        self.observe(QUEUE.name, pod, track.prefill_start_s - track.arrival_s)
        self.inc(PROMPT_TOKENS.name, pod, track.input_tokens)
        self.inc(CACHE_QUERIES.name, pod, track.input_tokens)
        self.inc(OUTPUT_TOKENS.name, pod)
        self.observe(self.prompt_length.name, pod, track.input_tokens)
        self.observe(self.output_length.name, pod, 1)
        self.inc(SUCCESS.name, pod, finished_reason="length")

    def on_joined(self, pod: str, track: RequestTrack) -> None:
        assert track.join_s is not None and track.first_token_s is not None
        self.observe(TTFT.name, pod, track.join_s - track.first_token_s)
        self.inc(OUTPUT_TOKENS.name, pod)

    def on_steps(self, pod: str, step_seconds: FloatArray, sequences: int) -> None:
        self._itl(pod, step_seconds, sequences)
        self.inc(OUTPUT_TOKENS.name, pod, float(len(step_seconds) * sequences))

    def on_finished(self, pod: str, role: str, track: RequestTrack) -> None:
        if role != "decode":
            return  # a one-token output: the prefill pod counted it at its first token
        assert track.join_s is not None and track.kv_arrival_s is not None
        self.observe(QUEUE.name, pod, track.join_s - track.kv_arrival_s)
        self.observe(self.prompt_length.name, pod, track.input_tokens)
        self.observe(self.output_length.name, pod, track.output_tokens)
        self.inc(SUCCESS.name, pod, finished_reason="stop")

    def on_gauges(self, pod: str, role: str, state: PodState) -> None:
        self.set(WAITING.name, pod, state.waiting)
        self.set(RUNNING.name, pod, state.running)
        self.set(KV_USAGE.name, pod, state.kv_usage)
        if self.legacy_names:
            self.set(LEGACY_KV_USAGE.name, pod, state.kv_usage)
