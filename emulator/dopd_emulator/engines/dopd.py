"""The dopd worker's and router's families (worker-image/dopd_worker/metrics.py), per role as those
processes expose them. Labels: `role` (or spec.metrics.roleLabel) = prefill | decode | router, `model`,
plus the namespace label and `pod` that Prometheus' pod discovery adds in a cluster.

- router (one pod, `<name>-router`): counts each request when it is admitted
  (`dopd_requests_arrived_total`), holds the prefill queue (`dopd_requests_waiting`) and the requests in
  flight (`dopd_requests_running`), and sees the stream end to end: TTFT when the first token reaches it
  (the decode worker emits the prefill's token when the KV arrives, before the sequence waits for a
  slot; a one-token output ends at prefill), every inter-token gap (the first one holds that wait),
  prompt lengths at arrival (the demand, shed requests included), and at completion generation lengths,
  status and the request's mean gap, first token to last (`dopd_request_time_per_output_token_seconds`,
  for two or more tokens); its shed counters
  (`dopd_requests_rejected_total`, `dopd_requests_expired_total`) exist at zero and stay there (no
  admission here), as do its reuse distances of prompt blocks (`dopd_prompt_reuse_distance_tokens`,
  `dopd_prompt_reuse_expected_samples_total`: no prompt contents to hash).
- prefill worker: TTFT from the moment the router hands it the prompt (its batch start) to the first
  token; prompt tokens; the KV it ships (bytes, seconds); `requests_total{status="ok"}` per prompt.
- decode worker: the prefill's first token (counted at join), then one token per sequence per step
  (`dopd_inter_token_latency_seconds` observed per step with weight B, a joining sequence's first gap
  being its wait for the slot plus its first step, the wait also in `dopd_decode_slot_wait_seconds` at
  the join); the KV it receives; lengths and status at completion.
Bucket bounds are the worker's own (imported from dopd_worker.metrics, as the simulator's observer does).
Callers: `engines.make_recorder`.
"""

from __future__ import annotations

import numpy as np

from dopd_emulator.engines.base import EngineRecorder, LabelScheme, PodState, RequestTrack
from dopd_emulator.store import Family, FloatArray
from dopd_operator.api import Engine
from dopd_sim.stepping import SteppedSimulator
from dopd_worker.metrics import ITL_BUCKETS_SECONDS, LATENCY_BUCKETS_SECONDS, LENGTH_BUCKETS_TOKENS
from dopd_worker.prefix_reuse import REUSE_BUCKETS_TOKENS, REUSE_POSITION_BUCKETS

WAITING = Family("dopd_requests_waiting", "gauge", "Requests queued and not yet being processed.")
RUNNING = Family("dopd_requests_running", "gauge", "Requests being processed (in a batch).")
KV_USAGE = Family("dopd_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use, 0..1.")
DECODE_GENERATED = Family(
    "dopd_decode_generated_tokens",
    "gauge",
    "Tokens generated so far by the sequences decoding, summed.",
)
TTFT = Family(
    "dopd_time_to_first_token_seconds", "histogram", "Time to first token.", LATENCY_BUCKETS_SECONDS
)
ITL = Family(
    "dopd_inter_token_latency_seconds",
    "histogram",
    "Time between consecutive output tokens.",
    ITL_BUCKETS_SECONDS,
)
SLOT_WAIT = Family(
    "dopd_decode_slot_wait_seconds",
    "histogram",
    "Decode: per sequence joining a batch, how long it waited for a slot after its first token went out.",
    LATENCY_BUCKETS_SECONDS,
)
REQUEST_TPOT = Family(
    "dopd_request_time_per_output_token_seconds",
    "histogram",
    "Per finished request of two or more tokens, the mean time between its output tokens, first to last.",
    ITL_BUCKETS_SECONDS,
)
PROMPT_LENGTH = Family(
    "dopd_prompt_tokens", "histogram", "Prompt length per request, tokens.", LENGTH_BUCKETS_TOKENS
)
OUTPUT_LENGTH = Family(
    "dopd_generation_tokens", "histogram", "Generated tokens per finished request.", LENGTH_BUCKETS_TOKENS
)
KV_SECONDS = Family(
    "dopd_kv_transfer_seconds", "histogram", "Duration of one KV transfer.", LATENCY_BUCKETS_SECONDS
)
PROMPT_TOKENS = Family("dopd_prompt_tokens_total", "counter", "Prompt tokens processed.")
OUTPUT_TOKENS = Family("dopd_generation_tokens_total", "counter", "Tokens generated.")
REQUESTS = Family("dopd_requests_total", "counter", "Finished requests by status.")
KV_BYTES = Family("dopd_kv_transfer_bytes_total", "counter", "KV-cache bytes sent or received.")
ARRIVED = Family("dopd_requests_arrived_total", "counter", "Requests admitted by the router (at arrival).")
# The router's shed counters, at zero from its start as the real router exposes them; they stay there:
# the emulator has no admission (a prompt no decode replica holds is refused before it counts as an
# arrival, so it is not shed from the arrivals either).
REJECTED = Family("dopd_requests_rejected_total", "counter", "Requests the router shed at entry.")
EXPIRED = Family(
    "dopd_requests_expired_total", "counter", "Admitted requests dropped from the router's queue."
)
# The prefill worker looks every prompt up in its prefix cache and, having none, never hits: the
# operator reads a measured hit rate of 0.
CACHE_QUERIES = Family(
    "dopd_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache (prefill)."
)
CACHE_HITS = Family(
    "dopd_prefix_cache_hits_total", "counter", "Prompt tokens served from the prefix cache (prefill)."
)
# The router's reuse distances (and positions) of prompt blocks exist at zero and stay there: the emulator's requests are
# lengths without contents, so there is nothing to hash (the operator reads the curve as unknown and takes
# the hit rate, a measured 0 here, as the same at every pool size).
REUSE_DISTANCE = Family(
    "dopd_prompt_reuse_distance_tokens",
    "histogram",
    "Per sampled full block of an admitted prompt, its LRU stack distance in tokens.",
    REUSE_BUCKETS_TOKENS,
)
REUSE_EXPECTED = Family(
    "dopd_prompt_reuse_expected_samples_total", "counter", "Full prompt blocks looked at x the sampling rate."
)
REUSE_SAMPLED_POSITION = Family(
    "dopd_prompt_reuse_sampled_position_ratio",
    "histogram",
    "Per sampled full block of an admitted prompt, where in the prompt it sits.",
    REUSE_POSITION_BUCKETS,
)
REUSE_REUSED_POSITION = Family(
    "dopd_prompt_reuse_reused_position_ratio",
    "histogram",
    "The same for the sampled blocks used before.",
    REUSE_POSITION_BUCKETS,
)
SHED_LABELS = {"priority": "standard"}
REJECTED_LABELS = {**SHED_LABELS, "reason": "decode_full"}

_BY_ROLE: dict[str, tuple[Family, ...]] = {
    "router": (
        WAITING,
        RUNNING,
        TTFT,
        ITL,
        REQUEST_TPOT,
        PROMPT_LENGTH,
        OUTPUT_LENGTH,
        PROMPT_TOKENS,
        OUTPUT_TOKENS,
        ARRIVED,
        REJECTED,
        EXPIRED,
        REUSE_DISTANCE,
        REUSE_EXPECTED,
        REUSE_SAMPLED_POSITION,
        REUSE_REUSED_POSITION,
    ),
    "prefill": (
        WAITING,
        RUNNING,
        KV_USAGE,
        TTFT,
        PROMPT_LENGTH,
        PROMPT_TOKENS,
        KV_BYTES,
        KV_SECONDS,
        CACHE_QUERIES,
        CACHE_HITS,
    ),
    "decode": (
        WAITING,
        RUNNING,
        KV_USAGE,
        DECODE_GENERATED,
        ITL,
        SLOT_WAIT,
        OUTPUT_LENGTH,
        OUTPUT_TOKENS,
        KV_BYTES,
        KV_SECONDS,
    ),
}


class DopdRecorder(EngineRecorder):
    engine = Engine.DOPD
    families = (
        WAITING,
        RUNNING,
        KV_USAGE,
        DECODE_GENERATED,
        TTFT,
        ITL,
        SLOT_WAIT,
        REQUEST_TPOT,
        PROMPT_LENGTH,
        OUTPUT_LENGTH,
        KV_SECONDS,
        PROMPT_TOKENS,
        OUTPUT_TOKENS,
        REQUESTS,
        KV_BYTES,
        ARRIVED,
        REJECTED,
        EXPIRED,
        CACHE_QUERIES,
        CACHE_HITS,
        REUSE_DISTANCE,
        REUSE_EXPECTED,
        REUSE_SAMPLED_POSITION,
        REUSE_REUSED_POSITION,
    )

    def __init__(self, sim: SteppedSimulator, scheme: LabelScheme, router_pod: str | None = None) -> None:
        super().__init__(sim, scheme, router_pod)
        # per decode pod: the slot waits of the sequences that joined since its last reported steps
        self._waits: dict[str, list[float]] = {}

    def families_for(self, role: str) -> tuple[Family, ...]:
        return _BY_ROLE[role]

    def labels(self, family: Family, role: str) -> dict[str, str]:
        shed = REJECTED_LABELS if family is REJECTED else SHED_LABELS if family is EXPIRED else {}
        return {self.scheme.role_label: role, "model": self.scheme.model, **shed}

    @property
    def _router(self) -> str:
        assert self.router_pod is not None
        return self.router_pod

    def _first_token_at_router(self, track: RequestTrack, now_s: float) -> None:
        self.observe(TTFT.name, self._router, now_s - track.arrival_s)
        self.inc(OUTPUT_TOKENS.name, self._router)

    def on_arrived(self, track: RequestTrack) -> None:
        # the router records the demand at arrival: admitted or shed, every prompt's length counts
        router = self._router
        self.inc(ARRIVED.name, router)
        self.inc(PROMPT_TOKENS.name, router, track.input_tokens)
        self.observe(PROMPT_LENGTH.name, router, track.input_tokens)

    def on_rejected(self, track: RequestTrack) -> None:
        self.inc(REQUESTS.name, self._router, status="rejected")

    def on_first_token(self, pod: str, track: RequestTrack) -> None:
        assert track.first_token_s is not None and track.prefill_start_s is not None
        self.observe(TTFT.name, pod, track.first_token_s - track.prefill_start_s)
        self.inc(PROMPT_TOKENS.name, pod, track.input_tokens)
        self.inc(CACHE_QUERIES.name, pod, track.input_tokens)
        self.observe(PROMPT_LENGTH.name, pod, track.input_tokens)
        self.inc(REQUESTS.name, pod, status="ok")
        if track.output_tokens > 1:  # the simulator ships KV only for sequences that go on decoding
            self.inc(KV_BYTES.name, pod, track.input_tokens * self.kv_bytes_per_token)
            self.observe(KV_SECONDS.name, pod, track.input_tokens * self.kv_seconds_per_token)
        else:
            self._first_token_at_router(track, track.first_token_s)

    def on_kv_arrived(self, track: RequestTrack) -> None:
        # the decode worker emits the prefill's token as the KV arrives, before any wait for a slot
        assert track.kv_arrival_s is not None
        self._first_token_at_router(track, track.kv_arrival_s)

    def on_joined(self, pod: str, track: RequestTrack) -> None:
        assert track.join_s is not None and track.kv_arrival_s is not None
        self.inc(KV_BYTES.name, pod, track.input_tokens * self.kv_bytes_per_token)
        self.observe(KV_SECONDS.name, pod, track.input_tokens * self.kv_seconds_per_token)
        self.inc(OUTPUT_TOKENS.name, pod)  # the prefill's token, emitted by this pod
        # the wait for the slot lengthens the sequence's first gap (its first step is the next one), and
        # is counted apart as the worker counts it
        waited_s = track.join_s - track.kv_arrival_s
        self.observe(SLOT_WAIT.name, pod, waited_s)
        self._waits.setdefault(pod, []).append(waited_s)

    def on_steps(self, pod: str, step_seconds: FloatArray, sequences: int) -> None:
        tokens = float(len(step_seconds) * sequences)
        waits = self._waits.pop(pod, [])[:sequences]  # the sequences that joined before these steps
        for where in (pod, self._router):
            if waits:  # their first gap is their wait plus the first step; the others' is the step
                self.observe(ITL.name, where, step_seconds[0], weight=float(sequences - len(waits)))
                self.observe(ITL.name, where, step_seconds[0] + np.asarray(waits, dtype=np.float64))
                self.observe(ITL.name, where, step_seconds[1:], weight=sequences)
            else:
                self.observe(ITL.name, where, step_seconds, weight=sequences)
            self.inc(OUTPUT_TOKENS.name, where, tokens)

    def on_finished(self, pod: str, role: str, track: RequestTrack) -> None:
        if role == "decode":
            self.observe(OUTPUT_LENGTH.name, pod, track.output_tokens)
            self.inc(REQUESTS.name, pod, status="ok")
        router = self._router
        self.observe(OUTPUT_LENGTH.name, router, track.output_tokens)
        self.inc(REQUESTS.name, router, status="ok")
        if role == "decode":  # its TPOT as the router streamed it: first token (at the KV) to the last
            assert track.finish_s is not None and track.kv_arrival_s is not None
            self.observe(
                REQUEST_TPOT.name, router, (track.finish_s - track.kv_arrival_s) / (track.output_tokens - 1)
            )

    def removed(self, instance: str, now_s: float) -> None:
        self._waits.pop(instance, None)
        super().removed(instance, now_s)

    def on_gauges(self, pod: str, role: str, state: PodState) -> None:
        # The router hands a prompt to a prefill worker only when it has room: the rest queue at the router.
        self.set(WAITING.name, pod, state.assigned if role == "prefill" else state.waiting)
        self.set(RUNNING.name, pod, state.running)
        self.set(KV_USAGE.name, pod, state.kv_usage)
        if role == "decode":
            self.set(DECODE_GENERATED.name, pod, state.generated_tokens)

    def on_router_gauges(self, queued: int, in_flight: int) -> None:
        self.set(WAITING.name, self._router, queued)
        self.set(RUNNING.name, self._router, in_flight)
