"""The emulator's external shapes, validated once: its configuration (what to emulate, which load,
where the replicas come from), the faults tests switch on through the control endpoint, and the
ground truth it reports. Callers: cli (builds an EmulatorConfig), emulator/core, server, tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dopd_operator.api import DisaggregatedModel, DisaggregatedModelSpec, Engine
from dopd_operator.profile import PerformanceProfile
from dopd_sim.config import QueuePolicy, default_spec


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TraceLoad(_Shape):
    """The load, exactly as `dopd simulate --trace` takes it: a trace file or `synthetic:KIND[,k=v...]`,
    cut to `duration_seconds`, time-compressed, then rate-scaled (dopd_sim.workload.load_workload)."""

    trace: str = Field(..., min_length=1)
    rate_scale: float = Field(1.0, gt=0)
    time_compression: float = Field(1.0, gt=0)
    seed: int = 0
    duration_seconds: float | None = Field(None, gt=0)
    at_end: Literal["loop", "stop"] = Field(
        "loop", description="At the trace's end, replay it again (loop) or send nothing more (stop)."
    )


class StaticReplicas(_Shape):
    """Fixed replica counts (tests without a cluster); pods are named `<name>-<role>-<i>`."""

    source: Literal["static"] = "static"
    prefill: int = Field(1, ge=0, le=1000)
    decode: int = Field(1, ge=0, le=1000)


class ClusterReplicas(_Shape):
    """Follow the Ready pods labelled dopd.io/model=<name>, dopd.io/role=prefill|decode in the namespace."""

    source: Literal["cluster"] = "cluster"
    kubeconfig: str | None = Field(
        None, description="Kubeconfig file; None: $KUBECONFIG or ~/.kube/config, else the in-cluster account."
    )
    poll_seconds: float = Field(1.0, ge=0.1, le=30.0)


class EmulatorConfig(_Shape):
    """What to emulate. The engine, served model name, metric labels, GPUs per replica and profile come
    from `spec` (a DisaggregatedModel's spec); `profile` overrides the spec's profile."""

    namespace: str = Field(..., min_length=1, max_length=63)
    name: str = Field(..., min_length=1, max_length=63, description="The DisaggregatedModel's name.")
    load: TraceLoad
    replicas: StaticReplicas | ClusterReplicas = Field(..., discriminator="source")
    spec: DisaggregatedModelSpec = Field(default_factory=default_spec)
    profile: PerformanceProfile | None = None
    queue: QueuePolicy = "fifo"
    port: int = Field(0, ge=0, le=65535, description="Port on 127.0.0.1; 0 picks a free one.")
    step_seconds: float = Field(0.1, ge=0.01, le=1.0, description="Wall-clock period of the engine loop.")
    log_every_seconds: float = Field(10.0, gt=0)
    vllm_max_model_len: int = Field(8192, ge=1, description="Caps vLLM's token-length histogram buckets.")
    vllm_legacy_names: bool = Field(False, description="Also expose the vLLM names removed in 2026.")

    @classmethod
    def for_model(
        cls,
        model: DisaggregatedModel,
        load: TraceLoad,
        replicas: StaticReplicas | ClusterReplicas,
        **fields: object,
    ) -> EmulatorConfig:
        """A config for a DisaggregatedModel object (namespace "default" when its metadata has none)."""
        return cls.model_validate(
            {
                "namespace": model.metadata.namespace or "default",
                "name": model.metadata.name,
                "spec": model.spec,
                "load": load,
                "replicas": replicas,
                **fields,
            }
        )

    @property
    def engine(self) -> Engine:
        return self.spec.engine


SeriesRole = Literal["prefill", "decode", "router"]  # the dopd router's series have a role of their own


class FamilyFault(_Shape):
    """A fault on one family (as /metrics names it, counters with `_total`), on every role or one."""

    family: str = Field(..., min_length=1)
    role: SeriesRole | None = None


class Faults(_Shape):
    """Faults a real engine cannot produce on demand: a family not exposed at all, a family whose values
    are NaN (gauges and counters; a histogram's sum, as one NaN observation leaves it), or a target that
    stops answering (/metrics answers 503, so Prometheus marks it down and every series goes stale)."""

    omit: tuple[FamilyFault, ...] = ()
    nan: tuple[FamilyFault, ...] = ()
    stale: bool = False


class PodTruth(_Shape):
    """One replica as its gauges show it (dopd_emulator.engines.base explains each number)."""

    role: Literal["prefill", "decode"]
    draining: bool
    assigned: int = Field(..., description="Handed to this pod, not yet in its batch.")
    waiting: int = Field(..., description="assigned + this pod's share of its role's shared queue.")
    running: int = Field(..., description="Prompts in the prefill batch, or sequences in the decode batch.")
    kv_usage: float


class GroundTruth(_Shape):
    """What the emulated engines are really doing, for tests to compare with what Prometheus shows."""

    engine: Engine
    namespace: str
    name: str
    model: str
    time_s: float = Field(..., description="Seconds of emulated time since start (wall-clock seconds).")
    arrival_rate_rps: float = Field(..., description="Arrivals over the last 10 s.")
    arrivals_total: int
    rejected_total: int
    completed_total: int
    ttft_met_total: int = Field(
        ..., description="Completed requests whose TTFT (arrival to first token) is within the SLO."
    )
    tpot_met_total: int = Field(
        ...,
        description=(
            "Completed requests whose TPOT (the mean gap after the first token: KV transfer and any wait "
            "for decode room included) is within the SLO."
        ),
    )
    slo_met_total: int = Field(
        ...,
        description=(
            "Completed requests within both SLOs, each request scored as `dopd simulate` scores it: what a "
            "user sees, which the engines' latency histograms do not all show (vLLM's inter-token latency "
            "leaves out a wait for decode room)."
        ),
    )
    prefill_queue: int
    decode_waiting: int = Field(..., description="Sequences whose KV arrived, waiting for decode room.")
    ready: dict[Literal["prefill", "decode"], list[str]]
    draining: dict[Literal["prefill", "decode"], list[str]]
    pods: dict[str, PodTruth]
    decode_running_per_replica: float | None = Field(
        ..., description="Mean sequences per ready decode replica; None with no ready decode replica."
    )
    trace_copies: int = Field(..., description="Copies of the trace queued so far (1 + loops).")
    trace_ended: bool
    cluster_error: str | None = None
