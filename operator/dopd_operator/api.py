"""The DisaggregatedModel API (`dopd.io/v1alpha1`) as pydantic v2 models.

These models are the single source of truth for the custom resource: `dopd crds` generates the CRD's
OpenAPI schema from them (see `crd.py`), the operator validates every object it reads through them, and
the planner and simulator consume them. Field names are camelCase on the wire (Kubernetes convention)
and snake_case in Python; every duration and rate carries its unit in its name.

Cross-field rules live twice on purpose: as CEL `x-kubernetes-validations` (so the API server rejects
a bad object before it is stored) and as pydantic validators (so `dopd plan -f` and the operator give
the same message for files that never went through an API server).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "dopd.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DisaggregatedModel"
PLURAL = "disaggregatedmodels"
SINGULAR = "disaggregatedmodel"
SHORT_NAMES = ("dm",)
CATEGORIES = ("dopd", "llm")

Role = Literal["prefill", "decode"]
ROLES: tuple[Role, ...] = ("prefill", "decode")


class ApiModel(BaseModel):
    """Base for every API shape: camelCase aliases, unknown fields rejected, validated on assignment."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Engine(StrEnum):
    """Which serving engine runs in the pods; picks the Prometheus metric preset."""

    DOPD = "dopd"
    VLLM = "vllm"
    SGLANG = "sglang"


class ScalingMode(StrEnum):
    ACTIVE = "Active"
    ADVISORY = "Advisory"
    PAUSED = "Paused"


class MetricsUnknownPolicy(StrEnum):
    HOLD = "Hold"
    FALLBACK = "Fallback"


class ForecastModelName(StrEnum):
    AUTO = "auto"
    HOLT_WINTERS = "holt-winters"
    ARIMA = "arima"
    EWMA = "ewma"
    NAIVE = "naive"
    NONE = "none"


# --------------------------------------------------------------------------------------------- spec


class RoleSpec(ApiModel):
    """One pool of GPU pods (prefill or decode) that dopd sizes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    # format() keeps the CEL cost estimate bounded; string(int) concatenation does not.
                    "messageExpression": "'minReplicas (%d) must be <= maxReplicas (%d): raise maxReplicas or "
                    "lower minReplicas'.format([self.minReplicas, self.maxReplicas])",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas dopd keeps, even at zero load.")
    max_replicas: int = Field(8, ge=1, le=1000, description="Most replicas dopd may request.")
    gpus_per_replica: int = Field(
        1,
        ge=1,
        le=64,
        description="GPUs one replica uses (its tensor-parallel degree); counts against the GPU budget.",
    )
    startup_seconds: float = Field(
        120.0,
        ge=0,
        le=7200,
        description="Expected seconds from pod creation to Ready; dopd scales for the load at now + startup + interval.",
    )
    drain_seconds: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="Seconds a pod being removed (scale-down or rollout) gets to finish its work before it is "
        "killed: decode its sequences, prefill its prompts and their KV transfers. Sets the pods' "
        "terminationGracePeriodSeconds; the engine drains on SIGTERM.",
    )
    template: dict[str, Any] | None = Field(
        None,
        description="Pod template (a core/v1 PodTemplateSpec) for this role's Deployment; the engine preset fills it when omitted.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> RoleSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas}): "
                "raise maxReplicas or lower minReplicas"
            )
        return self


class SloSpec(ApiModel):
    """The latency objectives dopd provisions for."""

    ttft_seconds: float = Field(1.5, gt=0, le=600, description="Time-to-first-token objective, in seconds.")
    tpot_seconds: float = Field(
        0.05, gt=0, le=10, description="Time-per-output-token (inter-token latency) objective, in seconds."
    )
    percentile: float = Field(
        90.0,
        ge=50,
        le=99.9,
        description="Percentile of requests that must meet TTFT and TPOT (for example 90 = P90).",
    )
    attainment_target: float = Field(
        0.99,
        gt=0,
        le=1,
        description="Share of requests (0..1) that should meet both objectives; dopd provisions for the higher of this and the percentile.",
    )


class StepPolicy(ApiModel):
    """How far one decision may move a role, and how long a direction must be held first (HPA behaviors)."""

    max_step_replicas: int = Field(
        4, ge=1, le=1000, description="Most replicas added or removed in one decision."
    )
    max_step_percent: float = Field(
        100.0,
        gt=0,
        le=1000,
        description="Most replicas changed in one decision, as a percent of the current count; the larger of the two limits applies.",
    )
    stabilization_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Window over which recommendations are smoothed: scale-up takes the lowest, scale-down the highest recommendation in it.",
    )


class ScaleUpPolicy(StepPolicy):
    """Limits on adding replicas: fast by default, as the HPA's scale-up."""

    max_step_replicas: int = Field(4, ge=1, le=1000, description="Most replicas added in one decision.")
    max_step_percent: float = Field(
        100.0,
        gt=0,
        le=1000,
        description="Most replicas added in one decision, as a percent of the current count; the larger limit applies.",
    )
    stabilization_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Scale up to the lowest recommendation of this window (0: act at once).",
    )


class ScaleDownPolicy(StepPolicy):
    """Limits on removing replicas: slow by default, as the HPA's 300 s scale-down window."""

    max_step_replicas: int = Field(2, ge=1, le=1000, description="Most replicas removed in one decision.")
    max_step_percent: float = Field(
        50.0,
        gt=0,
        le=100,
        description="Most replicas removed in one decision, as a percent of the current count; the larger limit applies.",
    )
    stabilization_seconds: float = Field(
        300.0, ge=0, le=3600, description="Scale down only to the highest recommendation of this window."
    )


class RatioBand(ApiModel):
    """Allowed prefill-to-decode replica ratio.

    A guard against a planner gone wrong (a metric misread by orders of magnitude), or a pin for a
    ratio the user knows; not a second sizing rule. So the default is wide: workloads span two orders of
    magnitude. A reasoning model's long answers need about 1 prefill replica per 20-30 decode replicas
    (the benchmark's reasoning mix: 1P/22D at its peak), long prompts with short outputs 15-40 prefill
    replicas per decode replica (the Mooncake trace: 30P/2D to 74P/2D). The earlier default of [0.05,
    20] bound on both: it bought the reasoning pool a second prefill replica it did not need (0.6% of
    its GPU-hours) and Mooncake's up to two more decode replicas (2.2%), attainment unchanged
    (docs/benchmarks/sim.md).
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.min <= self.max",
                    "message": "ratioBand.min must be <= ratioBand.max",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    min: float = Field(0.01, gt=0, le=100, description="Smallest allowed prefill/decode replica ratio.")
    max: float = Field(100.0, gt=0, le=100, description="Largest allowed prefill/decode replica ratio.")

    @model_validator(mode="after")
    def _ordered(self) -> RatioBand:
        if self.min > self.max:
            raise ValueError(f"ratioBand.min ({self.min}) must be <= ratioBand.max ({self.max})")
        return self


class FallbackReplicas(ApiModel):
    """Replicas to hold when metrics are unknown and the policy is Fallback."""

    prefill: int = Field(1, ge=0, le=1000, description="Prefill replicas while metrics are unknown.")
    decode: int = Field(1, ge=0, le=1000, description="Decode replicas while metrics are unknown.")


class ScalingSpec(ApiModel):
    """How and how fast dopd may act."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.onMetricsUnknown != 'Fallback' || has(self.fallbackReplicas)",
                    "message": "onMetricsUnknown=Fallback needs fallbackReplicas: set it, or use onMetricsUnknown=Hold",
                    "reason": "FieldValueRequired",
                }
            ]
        }
    )

    mode: ScalingMode = Field(
        ScalingMode.ACTIVE,
        description="Active patches the Deployments; Advisory only writes the decision to status; Paused does neither.",
    )
    interval_seconds: float = Field(30.0, ge=5, le=3600, description="Seconds between decisions.")
    gpu_budget: int | None = Field(
        None, ge=1, le=100000, description="Most GPUs prefill and decode together may use; omit for no limit."
    )
    ratio_band: RatioBand = Field(
        default_factory=RatioBand, description="Allowed prefill/decode replica ratio."
    )
    scale_up: ScaleUpPolicy = Field(default_factory=ScaleUpPolicy, description="Limits on adding replicas.")
    scale_down: ScaleDownPolicy = Field(
        default_factory=ScaleDownPolicy, description="Limits on removing replicas."
    )
    tolerance: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Dead band: a scale-down smaller than this fraction of the current replicas is skipped (scale-ups to what the SLO needs always go ahead).",
    )
    on_metrics_unknown: MetricsUnknownPolicy = Field(
        MetricsUnknownPolicy.HOLD,
        description="Hold keeps the current replicas while load is unknown; Fallback moves to fallbackReplicas.",
    )
    fallback_replicas: FallbackReplicas | None = Field(
        None, description="Replicas for onMetricsUnknown=Fallback; required with that policy."
    )

    @model_validator(mode="after")
    def _fallback_given(self) -> ScalingSpec:
        if self.on_metrics_unknown is MetricsUnknownPolicy.FALLBACK and self.fallback_replicas is None:
            raise ValueError(
                "onMetricsUnknown=Fallback needs fallbackReplicas: set it, or use onMetricsUnknown=Hold"
            )
        return self


class ForecastSpec(ApiModel):
    """Load forecasting from Prometheus history."""

    model: ForecastModelName = Field(
        ForecastModelName.AUTO,
        description="Forecast model; auto picks by backtest, none scales on current load only.",
    )
    quantile: float = Field(0.9, ge=0.5, lt=1, description="Upper quantile of the forecast to provision for.")
    history_seconds: float = Field(3600.0, ge=60, le=30 * 86400, description="How much history to fit on.")
    season_seconds: float | None = Field(
        None,
        gt=0,
        description="Seasonal period of the load (for example 86400 for daily); omit to detect or ignore.",
    )


class PrefillCoefficients(ApiModel):
    """Prefill batch time T = a + b*sum(l) + c*sum(l^2), l = prompt length in tokens."""

    a_seconds: float = Field(..., ge=0, description="Fixed cost per prefill batch, seconds.")
    b_seconds_per_token: float = Field(..., ge=0, description="Linear cost per prompt token, seconds.")
    c_seconds_per_token2: float = Field(
        0.0, ge=0, description="Quadratic (attention) cost per squared prompt token, seconds."
    )

    def batch_seconds(self, prompt_tokens: Sequence[float]) -> float:
        """T for one batch of prompts of these lengths (the fixed cost `a` even for none: callers that
        mean no batch at all say so, as `PerformanceProfile.prefill_batch_seconds` does)."""
        total = sum(prompt_tokens)
        squares = sum(length * length for length in prompt_tokens)
        return self.a_seconds + self.b_seconds_per_token * total + self.c_seconds_per_token2 * squares


class DecodeCoefficients(ApiModel):
    """Decode step time T = a + b*sum(ctx) + c*B, ctx = context length of each of the B sequences."""

    a_seconds: float = Field(..., ge=0, description="Fixed cost per decode step, seconds.")
    b_seconds_per_context_token: float = Field(
        ..., ge=0, description="Cost per token of context across the batch, seconds."
    )
    c_seconds_per_sequence: float = Field(..., ge=0, description="Cost per sequence in the batch, seconds.")

    def step_seconds(self, batch_size: float, context_tokens: float) -> float:
        """T for one step of `batch_size` sequences holding `context_tokens` of context in all."""
        return (
            self.a_seconds
            + self.b_seconds_per_context_token * context_tokens
            + self.c_seconds_per_sequence * batch_size
        )


class InlineProfile(ApiModel):
    """A per-replica performance profile given inline (DistServe's latency model)."""

    prefill: PrefillCoefficients = Field(..., description="Prefill latency coefficients.")
    decode: DecodeCoefficients = Field(..., description="Decode step latency coefficients.")
    kv_capacity_tokens: int = Field(
        ..., ge=1, description="KV-cache capacity of one decode replica, in tokens."
    )
    max_batch_size: int = Field(256, ge=1, le=4096, description="Most sequences one decode replica batches.")
    kv_bytes_per_token: int = Field(
        0, ge=0, description="KV-cache bytes per token (all layers); sizes the prefill-to-decode transfer."
    )
    kv_transfer_bytes_per_second: float = Field(
        25e9, gt=0, description="Bandwidth of the prefill-to-decode KV transfer, bytes per second."
    )


class ProfileSpec(ApiModel):
    """Which per-replica performance profile the planner uses: a named preset or inline coefficients."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.preset) != has(self.inline)",
                    "message": "profile needs exactly one of preset or inline",
                }
            ]
        }
    )

    preset: str | None = Field(
        None, description="A built-in profile name (see `dopd profiles`), for example llama3-8b-h100."
    )
    inline: InlineProfile | None = Field(None, description="Coefficients given inline instead of a preset.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ProfileSpec:
        if (self.preset is None) == (self.inline is None):
            raise ValueError("profile needs exactly one of preset or inline")
        return self


class MetricsSpec(ApiModel):
    """How dopd finds this model's series in Prometheus. The Prometheus URL is operator configuration."""

    namespace_label: str = Field(
        "namespace",
        min_length=1,
        max_length=128,
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        description="Label that carries the Kubernetes namespace on the engine's series.",
    )
    role_label: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        description="Label whose value (prefill or decode) tells the two pools' series apart; omit for the "
        "engine's default: `role` for dopd (the worker sets it) and vllm (relabel the pod label "
        "dopd.io/role to `role` in the scrape config; the chart's PodMonitor does), `engine_type` for sglang.",
    )
    selector: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="Extra label matchers (exact values) that pick this model's series, for example {model_name: llama-3-8b}.",
    )
    window_seconds: float = Field(
        60.0, ge=10, le=3600, description="Window for rates and quantiles, seconds."
    )


def _default_profile() -> ProfileSpec:
    return ProfileSpec(preset="llama3-8b-h100")


class DisaggregatedModelSpec(ApiModel):
    """The desired state of one disaggregated model deployment."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.scaling.gpuBudget) || self.prefill.minReplicas * self.prefill.gpusPerReplica"
                    " + self.decode.minReplicas * self.decode.gpusPerReplica <= self.scaling.gpuBudget",
                    "message": "scaling.gpuBudget is smaller than the GPUs the minimum replicas need: "
                    "raise gpuBudget or lower prefill/decode minReplicas",
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    engine: Engine = Field(Engine.DOPD, description="Serving engine in the pods: dopd, vllm or sglang.")
    model: str = Field(
        ..., min_length=1, max_length=253, description="Served model name (as clients request it)."
    )
    prefill: RoleSpec = Field(default_factory=RoleSpec, description="The prefill pool.")
    decode: RoleSpec = Field(default_factory=RoleSpec, description="The decode pool.")
    slo: SloSpec = Field(default_factory=SloSpec, description="Latency objectives.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Scaling mode, budget and limits.")
    forecast: ForecastSpec = Field(default_factory=ForecastSpec, description="Load forecasting.")
    profile: ProfileSpec = Field(
        default_factory=_default_profile, description="Per-replica performance profile."
    )
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Prometheus label matchers.")

    def role(self, role: Role) -> RoleSpec:
        return self.prefill if role == "prefill" else self.decode

    @model_validator(mode="after")
    def _budget_fits_minimums(self) -> DisaggregatedModelSpec:
        budget = self.scaling.gpu_budget
        if budget is not None:
            need = (
                self.prefill.min_replicas * self.prefill.gpus_per_replica
                + self.decode.min_replicas * self.decode.gpus_per_replica
            )
            if need > budget:
                raise ValueError(
                    f"scaling.gpuBudget ({budget}) is smaller than the GPUs the minimum replicas need ({need}): "
                    "raise gpuBudget or lower prefill/decode minReplicas"
                )
        return self


# ------------------------------------------------------------------------------------------- status


class RoleStatus(ApiModel):
    desired: int = Field(0, ge=0, description="Replicas dopd decided on.")
    current: int = Field(0, ge=0, description="Replicas the Deployment has (spec.replicas).")
    ready: int = Field(0, ge=0, description="Ready replicas.")
    unschedulable: int = Field(0, ge=0, description="Pods the scheduler cannot place (not enough GPUs).")
    startup_seconds: float | None = Field(
        None, description="Learned seconds from pod creation to Ready (recent pods); sets the lead time."
    )
    summary: str = Field("0/0", description="ready/desired, for kubectl get.")


class ObservedLoad(ApiModel):
    arrival_rate_rps: float | None = Field(None, description="Requests per second over the metrics window.")
    shed_rate_rps: float | None = Field(
        None,
        description="Of those, requests per second the router turned away (shed at entry or expired in its "
        "queue); 0 for vLLM and SGLang, whose arrivals are counted at the engines.",
    )
    input_tokens_mean: float | None = Field(None, description="Mean prompt length, tokens.")
    input_tokens_p90: float | None = Field(None, description="P90 prompt length, tokens.")
    output_tokens_mean: float | None = Field(None, description="Mean output length, tokens.")
    output_tokens_p90: float | None = Field(None, description="P90 output length, tokens.")
    queue_depth: float | None = Field(None, description="Requests waiting for prefill.")
    decode_queue_depth: float | None = Field(
        None, description="Sequences at the decode pods waiting to join a batch (a slot or KV free)."
    )
    kv_usage: float | None = Field(None, description="Mean decode KV-cache usage, 0..1.")


class ForecastStatus(ApiModel):
    model: str = Field(..., description="Forecast model used.")
    horizon_seconds: float = Field(..., description="Lead time the forecast is for.")
    quantile: float = Field(..., description="Quantile provisioned for.")
    arrival_rate_rps_mean: float = Field(..., description="Forecast mean arrival rate, requests per second.")
    arrival_rate_rps_upper: float = Field(..., description="Forecast upper-quantile arrival rate.")


class ClampRecord(ApiModel):
    stage: str = Field(..., description="Safety stage that changed the value (CamelCase).")
    role: str = Field(..., description="prefill or decode.")
    before: int = Field(..., description="Replicas before the stage.")
    after: int = Field(..., description="Replicas after the stage.")
    reason: str = Field(..., description="Why, for people.")


class DecisionRecord(ApiModel):
    time: datetime = Field(..., description="When the decision was made.")
    prefill: int = Field(..., ge=0, description="Prefill replicas decided.")
    decode: int = Field(..., ge=0, description="Decode replicas decided.")
    raw_prefill: int = Field(
        ..., ge=0, description="Prefill replicas the capacity model asked for, before safety."
    )
    raw_decode: int = Field(
        ..., ge=0, description="Decode replicas the capacity model asked for, before safety."
    )
    reasons: list[str] = Field(default_factory=list, description="Why, in order, for people.")
    clamps: list[ClampRecord] = Field(
        default_factory=list, description="Every safety stage that changed the answer."
    )


class Recommendation(ApiModel):
    """One raw recommendation, kept for stabilization windows (planner state)."""

    time: datetime = Field(..., description="When it was made.")
    prefill: int = Field(..., ge=0, description="Recommended prefill replicas.")
    decode: int = Field(..., ge=0, description="Recommended decode replicas.")


class ReadySince(ApiModel):
    """A role's Ready replica count and since when it has held it."""

    count: int = Field(..., ge=0, description="Ready replicas.")
    since: datetime = Field(..., description="When the planner first saw this count.")


class OutputLengths(ApiModel):
    """Output tokens as one metrics window measured them."""

    mean: float = Field(..., ge=0, description="Mean output tokens.")
    p90: float | None = Field(None, ge=0, description="P90 output tokens; None: unknown.")


class KvInUse(ApiModel):
    """The decode pool's KV cache in use at one tick."""

    time: datetime = Field(..., description="When it was read.")
    replicas: float = Field(
        ...,
        ge=0,
        description=(
            "KV in use, in replicas' worth: the mean KV usage times the Ready decode replicas; where the "
            "queue for a decode slot grew since the reading before, times the arrivals over the admissions "
            "(the KV the pool would hold were it admitting what arrives)."
        ),
    )
    waiting: float | None = Field(
        None, ge=0, description="Sequences waiting for a decode slot then (unset where unknown)."
    )


class PlannerStateStatus(ApiModel):
    """The planner's memory, kept in status so a restarted operator resumes without flapping."""

    recommendations: list[Recommendation] = Field(
        default_factory=list, description="Recent recommendations (bounded by the longest window)."
    )
    last_scale_up_time: datetime | None = Field(None, description="Last time either role scaled up.")
    last_scale_down_time: datetime | None = Field(None, description="Last time either role scaled down.")
    prefill_correction: float = Field(
        1.0, description="Observed/predicted TTFT factor applied to the profile."
    )
    decode_correction: float = Field(
        1.0, description="Observed/predicted TPOT factor applied to the profile."
    )
    prefill_ready: ReadySince | None = Field(
        None,
        description="Ready prefill replicas and since when: the TTFT window a correction learns from must "
        "have been measured on the current layout.",
    )
    decode_ready: ReadySince | None = Field(
        None,
        description="Ready decode replicas and since when: the TPOT window a correction learns from must "
        "have been measured on the current layout.",
    )
    output_lengths_free_slots: OutputLengths | None = Field(
        None,
        description="The output lengths last measured while the decode pool had free slots: sized with "
        "while its slots are full, when the sequences finishing are the join order's pick, not the "
        "demand's mix.",
    )
    decode_slots_full_time: datetime | None = Field(
        None,
        description="When the decode pool's slots (or its KV cache) were last seen full: the output "
        "lengths stay held until what it seated then has finished.",
    )
    arrivals_stepped_time: datetime | None = Field(
        None,
        description="When the arrivals last stepped to a new level, while the output lengths measured "
        "since are not the demand's mix (the window and the P90 output's generation after it): the decode "
        "pool is sized for those measured before the step until then.",
    )
    output_lengths_held_since: datetime | None = Field(
        None,
        description="When the output lengths began to be held for full decode slots: a hold lasts one "
        "lead time, until the replicas ordered for the held lengths serve; slots still full then say "
        "the held lengths were short of the demand's.",
    )
    decode_kv_in_use: list[KvInUse] = Field(
        default_factory=list,
        description="The decode KV in use at the last few ticks: where it rises beyond its noise, the decode "
        "pool is sized for where it leads in a lead time.",
    )


class SloAttainmentStatus(ApiModel):
    ttft: float | None = Field(None, description="Share of requests meeting the TTFT objective, 0..1.")
    tpot: float | None = Field(None, description="Share of requests meeting the TPOT objective, 0..1.")
    summary: str = Field("-", description="Worse of the two as a percent, for kubectl get.")


class Condition(ApiModel):
    type: str = Field(..., description="Ready, MetricsHealthy, ScalingLimited or CapacityBlocked.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="CamelCase reason.")
    message: str = Field("", description="For people.")
    last_transition_time: datetime | None = Field(None, description="When status last changed.")
    observed_generation: int | None = Field(None, description="Spec generation the condition is for.")


class DisaggregatedModelStatus(ApiModel):
    observed_generation: int | None = Field(None, description="Spec generation last acted on.")
    prefill: RoleStatus = Field(default_factory=RoleStatus, description="Prefill replicas.")
    decode: RoleStatus = Field(default_factory=RoleStatus, description="Decode replicas.")
    ratio: str | None = Field(None, description="Decided prefill:decode ratio, for example 2:1 (0.67 P/D).")
    gpus: int | None = Field(None, description="GPUs the decided replicas use.")
    load: ObservedLoad | None = Field(None, description="Load observed at the last decision.")
    forecast: ForecastStatus | None = Field(None, description="Forecast used by the last decision.")
    last_decision: DecisionRecord | None = Field(None, description="The last decision and its reasons.")
    history: list[DecisionRecord] = Field(
        default_factory=list, description="The last few decisions that changed replicas (newest last)."
    )
    planner: PlannerStateStatus = Field(default_factory=PlannerStateStatus, description="Planner state.")
    slo_attainment: SloAttainmentStatus | None = Field(None, description="Measured SLO attainment.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, MetricsHealthy, ScalingLimited, CapacityBlocked."
    )


class ObjectMeta(BaseModel):
    """The few metadata fields dopd reads; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1)
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class DisaggregatedModel(ApiModel):
    """A prefill/decode-disaggregated model that dopd keeps at the right size and P/D ratio."""

    api_version: Literal["dopd.io/v1alpha1"] = Field("dopd.io/v1alpha1", description="dopd.io/v1alpha1")
    kind: Literal["DisaggregatedModel"] = Field("DisaggregatedModel", description="DisaggregatedModel")
    metadata: ObjectMeta
    spec: DisaggregatedModelSpec
    status: DisaggregatedModelStatus | None = None
