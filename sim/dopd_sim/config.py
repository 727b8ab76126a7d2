"""What one simulation run is configured with: the model spec (SLOs, limits, startup times), the
per-replica profile, and the knobs of the simulated serving engine.

Callers: `cluster.Simulator`, the policies (through `TickInput.config`), the CLI and the benchmark.
The spec is the operator's own `DisaggregatedModelSpec`, so a manifest a user applies is the manifest
the simulator replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from dopd_operator.api import DisaggregatedModel, DisaggregatedModelSpec, ProfileSpec
from dopd_operator.profile import PerformanceProfile, resolve_profile
from dopd_worker.scheduler import DISPATCH_DEADLINE_SHARE_OF_TTFT

if TYPE_CHECKING:
    from dopd_sim.admission import SimAdmissionConfig

QueuePolicy = Literal["fifo", "length-aware"]

DEFAULT_PRESET = "llama3-8b-h100"
DEFAULT_MAX_REPLICAS = 256


def default_spec(preset: str = DEFAULT_PRESET) -> DisaggregatedModelSpec:
    """The spec used when no manifest is given: the DOPD paper's SLOs (TTFT 1.5 s, TPOT 50 ms at P90),
    one replica minimum per role and room to grow to a few hundred GPUs."""
    return DisaggregatedModelSpec.model_validate(
        {
            "model": "llama-3-8b",
            "prefill": {"minReplicas": 1, "maxReplicas": DEFAULT_MAX_REPLICAS, "startupSeconds": 120},
            "decode": {"minReplicas": 1, "maxReplicas": DEFAULT_MAX_REPLICAS, "startupSeconds": 120},
            "slo": {"ttftSeconds": 1.5, "tpotSeconds": 0.05, "percentile": 90, "attainmentTarget": 0.99},
            "profile": {"preset": preset},
        }
    )


def load_spec(path: str | Path) -> DisaggregatedModelSpec:
    """A spec from a DisaggregatedModel manifest (or a bare spec mapping) in YAML."""
    with open(path, encoding="utf-8") as handle:
        document: Any = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a YAML mapping (a DisaggregatedModel manifest)")
    if "spec" in document:
        return DisaggregatedModel.model_validate(document).spec
    return DisaggregatedModelSpec.model_validate(document)


def load_profile(name_or_path: str) -> PerformanceProfile:
    """A preset by name, or a profile YAML/JSON file as `dopd profile` writes it (inline coefficients)."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml", ".json") and candidate.exists():
        with open(candidate, encoding="utf-8") as handle:
            document: Any = yaml.safe_load(handle)
        labels: dict[str, str] = {}
        if isinstance(document, dict) and "inline" not in document and "preset" not in document:
            labels = {k: str(document[k]) for k in ("name", "description") if k in document}
            document = {"inline": {k: v for k, v in document.items() if k not in ("name", "description")}}
        return resolve_profile(ProfileSpec.model_validate(document)).model_copy(update=labels)
    return resolve_profile(ProfileSpec(preset=name_or_path))


@dataclass(frozen=True)
class SimConfig:
    """Everything about a run except the trace and the policy."""

    spec: DisaggregatedModelSpec = field(default_factory=default_spec)
    profile: PerformanceProfile | None = None  # None: the profile the spec names
    seed: int = 0
    prefill_queue: QueuePolicy = "fifo"
    prefill_token_budget: int = 8192  # most prompt tokens in one prefill batch (one prompt always fits)
    starvation_seconds: float = 1.0  # length-aware queue: a prompt waiting this long goes next regardless
    # Length-aware queue without admission: a prompt that waited this share of the TTFT SLO goes after
    # every prompt that still can meet it (the router's --dispatch-deadline-seconds); None: no deadline.
    dispatch_deadline_share: float | None = DISPATCH_DEADLINE_SHARE_OF_TTFT
    aggregated_token_budget: int = 512  # tokens per iteration of a colocated (chunked-prefill) instance
    kv_reserve_output: bool = True  # reserve prompt+output KV at admission (no preemption)
    controller_interval_seconds: float | None = None  # None: spec.scaling.interval_seconds
    metrics_window_seconds: float | None = None  # None: spec.metrics.window_seconds
    forecast_step_seconds: float = 10.0
    timeline_step_seconds: float = 10.0
    # The router's SLO-aware admission (issue 13, `dopd_sim.admission`); None: every request is queued.
    admission: SimAdmissionConfig | None = None

    def resolved_profile(self) -> PerformanceProfile:
        return self.profile if self.profile is not None else resolve_profile(self.spec.profile)

    @property
    def interval_seconds(self) -> float:
        value = self.controller_interval_seconds
        return value if value is not None else self.spec.scaling.interval_seconds

    @property
    def window_seconds(self) -> float:
        value = self.metrics_window_seconds
        return value if value is not None else self.spec.metrics.window_seconds
