"""Helpers for the emulator tests: a thread-free `Emulation` over a given trace, and scrape parsing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from dopd_emulator.config import EmulatorConfig, StaticReplicas, TraceLoad
from dopd_emulator.core import Emulation
from dopd_emulator.replicas import ReplicaSnapshot
from dopd_forecaster.traces import Trace
from dopd_operator.api import DisaggregatedModelSpec, Engine
from dopd_operator.profile import PerformanceProfile
from dopd_sim.config import default_spec

# What Debian's Prometheus 2.42 sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def spec_for(
    engine: str, metrics: Mapping[str, Any] | None = None, model: str = "m"
) -> DisaggregatedModelSpec:
    """The default spec with another engine, served model name and spec.metrics (validated)."""
    document = default_spec().model_dump(by_alias=True)
    document.update(engine=engine, model=model)
    if metrics is not None:
        document["metrics"] = dict(metrics)
    return DisaggregatedModelSpec.model_validate(document)


def emulation(
    engine: str,
    trace: Trace,
    prefill: int = 1,
    decode: int = 1,
    profile: PerformanceProfile | None = None,
    spec: DisaggregatedModelSpec | None = None,
    at_end: str = "stop",
    **config: Any,
) -> Emulation:
    """An Emulation of model `m1` in namespace `llm` over `trace`, with `prefill`/`decode` pods at time 0."""
    emulator_config = EmulatorConfig.model_validate(
        {
            "namespace": "llm",
            "name": "m1",
            "spec": spec or spec_for(engine),
            "profile": profile,
            "load": TraceLoad(trace="given by the test", at_end=at_end),  # type: ignore[arg-type]
            "replicas": StaticReplicas(prefill=prefill, decode=decode),
            **config,
        }
    )
    assert emulator_config.engine == Engine(engine)
    emulation = Emulation(emulator_config, trace=trace)
    emulation.apply_replicas(pods(prefill, decode))
    return emulation


def pods(prefill: int, decode: int) -> ReplicaSnapshot:
    return ReplicaSnapshot(
        tuple(f"m1-prefill-{i}" for i in range(prefill)), tuple(f"m1-decode-{i}" for i in range(decode))
    )


def run_to(emulation: Emulation, end_s: float, step_s: float = 0.1) -> None:
    """Advance in `step_s` steps, as the wall-clock loop does."""
    time_s = emulation.sim.now_s
    while time_s < end_s - 1e-9:
        time_s = min(time_s + step_s, end_s)
        emulation.advance_to(time_s)


def scrape(emulation: Emulation) -> list[Metric]:
    """The classic text format (prometheus_client's OpenMetrics output for names with ':' declares the
    family unescaped and the samples escaped, which its own strict parser refuses; Prometheus takes it)."""
    body, content_type = emulation.render(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    return list(text_string_to_metric_families(body.decode()))


def value(metrics: list[Metric], sample_name: str, **labels: str) -> float:
    """The value of the one sample named `sample_name` whose labels include `labels`."""
    found = [
        s.value
        for m in metrics
        for s in m.samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} samples {sample_name}{labels}")
    return float(found[0])


def pods_with(metrics: list[Metric], sample_name: str) -> set[str]:
    return {s.labels["pod"] for m in metrics for s in m.samples if s.name == sample_name}
