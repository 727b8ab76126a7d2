"""The planner's inputs and outputs: what it observes, what it is told about the future, what it decides.

`Observation` is built by the operator from Prometheus and the cluster (and by the simulator from its
own event log), `LoadForecast` by the forecaster; `Decision` goes to the actuator, the status, the
Events and the simulator. The planner's memory between ticks is `PlannerState`, which is the status
type itself so it round-trips through the custom resource unchanged.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dopd_operator.api import PlannerStateStatus

PlannerState = PlannerStateStatus


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RoleObservation(_Frozen):
    """What the cluster says about one role's pods."""

    current: int = Field(0, ge=0, description="spec.replicas of the role's Deployment.")
    ready: int = Field(0, ge=0, description="Ready pods.")
    pending: int = Field(0, ge=0, description="Pods not yet Ready (starting or waiting for a node).")
    unschedulable: int = Field(0, ge=0, description="Pending pods the scheduler cannot place (no GPUs).")
    startup_seconds: float | None = Field(
        None,
        ge=0,
        description="Learned seconds from pod creation to Ready (recent pods); None: use the spec's "
        "startupSeconds prior.",
    )


class Observation(_Frozen):
    """Load over the metrics window. None means unknown, which is never treated as zero."""

    arrival_rate_rps: float | None = Field(None, ge=0, description="Requests per second.")
    shed_rate_rps: float | None = Field(
        None,
        ge=0,
        description="Of those, requests per second the router turned away (shed at entry or expired in "
        "its queue), which no engine served; 0 for presets that count arrivals at the engines (vLLM, "
        "SGLang), which see only what was admitted. None: unknown. The prefill correction learns only "
        "while it is known and at most 2% of the arrivals (the latency is otherwise admission's doing).",
    )
    input_tokens_mean: float | None = Field(None, ge=0, description="Mean prompt tokens.")
    input_tokens_p90: float | None = Field(None, ge=0, description="P90 prompt tokens.")
    output_tokens_mean: float | None = Field(None, ge=0, description="Mean output tokens.")
    output_tokens_p90: float | None = Field(None, ge=0, description="P90 output tokens.")
    input_tokens_trend_per_s: float | None = Field(
        None,
        description="How fast the mean prompt moves: this metrics window's mean less the window's before, "
        "over the window (tokens per second). None: unknown (the window's lengths are sized for).",
    )
    input_tokens_trend_noise_per_s: float | None = Field(
        None,
        ge=0,
        description="Standard error of that slope: what two windows of the same mix differ by, from the "
        "lengths' spread and the requests in each. The planner extrapolates only the rise beyond it.",
    )
    output_tokens_trend_per_s: float | None = Field(
        None, description="The same for the mean output (of the requests finished in each window)."
    )
    output_tokens_trend_noise_per_s: float | None = Field(
        None, ge=0, description="Standard error of the output slope."
    )
    arrival_rate_trend_rps_per_s: float | None = Field(
        None, description="Slope of the arrival rate over the recent past (PromQL deriv), rps per second."
    )
    arrival_rate_trend_noise_rps_per_s: float | None = Field(
        None,
        ge=0,
        description="Standard error of that slope under the observed burstiness (what a load with no "
        "trend shows); the trend guard extrapolates only the rise beyond it. None: unknown (the whole "
        "slope is extrapolated).",
    )
    arrival_rate_trend_span_seconds: float | None = Field(
        None,
        gt=0,
        description="Set while the arrival series is younger than the trend window: the seconds of data "
        "the trend was fitted over; the trend guard extrapolates it no further ahead than that. None: the "
        "whole trend window.",
    )
    arrival_level_age_seconds: float | None = Field(
        None,
        ge=0,
        description="Seconds since the arrival rate stepped to its current level, when it did within the "
        "trend window (a level change: the rate, burstiness and trend are then read from the change on). "
        "None: no step seen.",
    )
    arrival_scv: float | None = Field(
        None,
        ge=0,
        description="Burstiness: squared coefficient of variation of inter-arrival times (Poisson = 1).",
    )
    prefix_cache_hit_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of prompt tokens served from the prefix cache over the window (vLLM "
        "prefix_cache_hits/prefix_cache_queries, SGLang cache_hit_rate); None: unknown, sized as no hits.",
    )
    prefix_reuse_share_within: tuple[tuple[float, float], ...] | None = Field(
        None,
        description="The router's reuse distances of prompt blocks over the window, as (cache tokens, "
        "share of prompt-block tokens reused within them): the shape of the hit rate against the prefill "
        "pool's cache size, anchored at prefix_cache_hit_rate (docs/planner.md). None: unknown, the hit "
        "rate is taken as the same at every pool size.",
    )
    prefix_hit_mix: tuple[tuple[float, float], ...] | None = Field(
        None,
        description="How the prefix-cache hits fall on prompts, from where in their prompts the router's "
        "sampled blocks were reused: (share of a prompt served from the cache, share of the prompt tokens "
        "in prompts served so) pairs; the rest hit nothing (docs/planner.md). None: unknown, every prompt "
        "is taken to hit the mean rate.",
    )
    prefix_reuse_unread: str | None = Field(
        None,
        description="Why the router's reuse curve is not used although the engine preset reads one (its "
        "series missing, or several routers each sampling only their own prompts), for the decision's "
        "reason; None when it is used, or when there is nothing to measure (an idle window).",
    )
    prefill_queue_depth: float | None = Field(None, ge=0, description="Requests waiting for prefill.")
    decode_queue_depth: float | None = Field(
        None,
        ge=0,
        description="Sequences at the decode pods waiting to join a batch (their KV arriving, or no slot "
        "or KV free), all replicas.",
    )
    decode_kv_usage: float | None = Field(None, ge=0, le=1, description="Mean decode KV usage 0..1.")
    decode_running: float | None = Field(None, ge=0, description="Sequences decoding, all replicas.")
    decode_generated_tokens_mean: float | None = Field(
        None,
        ge=0,
        description="Mean tokens generated so far by the sequences decoding on the decode replicas; None "
        "where the engine does not report it.",
    )
    latency_percentile: float | None = Field(
        None,
        gt=0,
        lt=100,
        description="Percentile (for example 90) at which ttft_seconds and tpot_seconds were measured; "
        "the planner predicts latency at this same percentile when it corrects the profile.",
    )
    ttft_seconds: float | None = Field(
        None,
        ge=0,
        description="Observed TTFT at `latency_percentile` (queue + prefill, and the KV transfer where "
        "`ttft_includes_kv_transfer`).",
    )
    ttft_includes_kv_transfer: bool = Field(
        True,
        description="Whether `ttft_seconds` includes the prompt's KV transfer to decode: dopd's router "
        "times the first token the decode worker emits when the KV has arrived (as users see it); "
        "vLLM's and SGLang's prefill pods time queue + prefill only. The prefill correction compares "
        "like with like.",
    )
    tpot_seconds: float | None = Field(
        None, ge=0, description="Observed TPOT (inter-token latency) at `latency_percentile`."
    )
    tpot_mean_seconds: float | None = Field(
        None,
        ge=0,
        description="Mean TPOT over the window as users see it, waits for a decode slot included: the "
        "histogram's sum over its count, exact where a percentile read from buckets is not (linear "
        "interpolation within a bucket 20-25% wide reads up to 17% high). The resident output lengths "
        "(Little's law over the decode stage) divide by it where `request_tpot_mean_seconds` is unknown; "
        "the decode correction reads it only while every slot is taken and the SLO is missed "
        "(`decode_step_mean_seconds` otherwise).",
    )
    request_tpot_mean_seconds: float | None = Field(
        None,
        ge=0,
        description="Mean over the requests finished in the window of each one's mean gap, first token "
        "to last, slot waits included (dopd's router's per-request TPOT histogram, its sum over its "
        "count): the gap over a sequence's whole life, where the inter-token gaps are the window's "
        "steps. The resident output lengths (Little's law: a resident's time in the decode stage is its "
        "life) divide by it. Unknown where the preset reads no per-request TPOT (vLLM, SGLang).",
    )
    decode_step_mean_seconds: float | None = Field(
        None,
        ge=0,
        description="Mean decode step over the window: the inter-token gaps' mean with the sequences' "
        "waits for a decode slot left out (vLLM's and SGLang's inter-token histograms; dopd's router's "
        "less the decode pods' slot waits). The decode correction learns the engine's speed from it: "
        "a wait is a pool short of slots, not a slow engine.",
    )
    ttft_attainment: float | None = Field(None, ge=0, le=1, description="Share meeting the TTFT SLO.")
    tpot_attainment: float | None = Field(None, ge=0, le=1, description="Share meeting the TPOT SLO.")
    prefill: RoleObservation = Field(default_factory=RoleObservation)
    decode: RoleObservation = Field(default_factory=RoleObservation)
    problems: tuple[str, ...] = Field((), description="Why some metric is unknown, for people.")

    @model_validator(mode="after")
    def _percentile_given_with_latency(self) -> Observation:
        if (
            self.ttft_seconds is not None or self.tpot_seconds is not None
        ) and self.latency_percentile is None:
            raise ValueError(
                "latency_percentile is required with ttft_seconds/tpot_seconds: say at which percentile "
                "the latencies were measured, so the planner predicts at the same one"
            )
        return self

    @property
    def load_known(self) -> bool:
        """True when everything the capacity model needs is known. With no arrivals at all (a known
        zero rate) there is nothing to size, so unknown lengths (no request in the window to measure)
        do not make the load unknown."""
        if self.arrival_rate_rps is None:
            return False
        return self.arrival_rate_rps == 0 or None not in (self.input_tokens_mean, self.output_tokens_mean)

    @property
    def served_rate_rps(self) -> float | None:
        """Requests per second the engines were given: arrivals less what the router shed; None when
        either is unknown."""
        if self.arrival_rate_rps is None or self.shed_rate_rps is None:
            return None
        return max(self.arrival_rate_rps - self.shed_rate_rps, 0.0)

    @property
    def given_rate_rps(self) -> float:
        """The rate the engines were given: the served rate where the shed rate is known, else the
        arrivals (all of them, as a router that sheds nothing gives them); 0 where both are unknown."""
        served = self.served_rate_rps
        return served if served is not None else self.arrival_rate_rps or 0.0

    @property
    def unknown_reason(self) -> str:
        """Why the load is unknown, for people: the metrics layer's problems, else the missing inputs."""
        missing = [
            name
            for name, value in (
                ("arrival rate", self.arrival_rate_rps),
                ("prompt length", self.input_tokens_mean),
                ("output length", self.output_tokens_mean),
            )
            if value is None
        ]
        return "; ".join(self.problems) or "unknown: " + ", ".join(missing)

    @property
    def idle(self) -> bool:
        """No request arrived in the window and none left a length to measure."""
        return self.arrival_rate_rps == 0 and None in (self.input_tokens_mean, self.output_tokens_mean)

    def role(self, role: str) -> RoleObservation:
        return self.prefill if role == "prefill" else self.decode


class PodLoad(_Frozen):
    """One pod's work right now: what removing it would cost (scale-down victims are the cheapest)."""

    inflight: float = Field(..., ge=0, description="Requests running or waiting on the pod.")
    kv_usage: float | None = Field(None, ge=0, le=1, description="KV-cache usage 0..1 (decode pods).")


class LoadForecast(_Frozen):
    """The forecaster's answer for the planner's lead time."""

    model: str = Field(..., description="Model that produced it (auto's pick, or the configured one).")
    horizon_seconds: float = Field(..., ge=0, description="Lead time it is for.")
    quantile: float = Field(..., gt=0, lt=1, description="Quantile of the upper value.")
    arrival_rate_rps_mean: float = Field(..., ge=0, description="Point forecast.")
    arrival_rate_rps_upper: float = Field(..., ge=0, description="Upper-quantile forecast.")
    arrival_rate_rps_upper_uncapped: float | None = Field(
        None,
        ge=0,
        description="The forecaster's own upper quantile when it passed the history's peak rate and was "
        "capped there (never below the point forecast); None when not capped.",
    )


class Clamp(_Frozen):
    """One safety stage changing one role's replicas. `stage` is a CamelCase reason (HPA style)."""

    stage: str
    role: str
    before: int
    after: int
    reason: str


class CapacityEstimate(_Frozen):
    """What the capacity model concluded, for status and for people."""

    load_rps: float = Field(..., description="Arrival rate the decision provisions for.")
    prefill_service_seconds_mean: float = Field(
        ..., description="E[T_p(ISL)] over the prompt-length distribution."
    )
    prefill_rps_per_replica: float = Field(..., description="Service rate of one prefill replica (1/E[T_p]).")
    decode_batch_size: int = Field(..., description="B*: largest batch meeting TPOT that fits KV.")
    decode_step_seconds: float = Field(..., description="Step time at B*.")
    decode_rps_per_replica: float = Field(..., description="Requests per second one decode replica sustains.")
    sustainable_rps: float = Field(
        ...,
        description="A rate the decided layout serves within the SLOs: the provisioned load, or the budget "
        "frontier's rate when the GPU budget binds (a lower bound on the layout's capacity).",
    )
    ttft_reachable: bool = Field(
        ..., description="False when one P90 prompt alone takes longer than the TTFT SLO."
    )
    tpot_reachable: bool = Field(..., description="False when a batch of one already misses the TPOT SLO.")


class Decision(_Frozen):
    """Everything one planning tick concluded."""

    prefill: int
    decode: int
    raw_prefill: int
    raw_decode: int
    gpus: int
    reasons: tuple[str, ...]
    clamps: tuple[Clamp, ...]
    capacity: CapacityEstimate | None
    state: PlannerState
    metrics_healthy: bool
    scaling_limited: bool
    capacity_blocked: bool

    @property
    def ratio(self) -> float | None:
        """Prefill/decode replica ratio, None with no decode replicas."""
        return self.prefill / self.decode if self.decode else None
