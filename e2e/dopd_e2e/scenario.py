"""The pieces an operator end-to-end test is made of: a namespace watched by a real `dopd run`, a real
Prometheus scraping a set of engine emulators (one per model, on ports reserved up front so one
Prometheus config covers them all), DisaggregatedModel manifests, workloads written as trace files, and
readers of what a user would look at (`kubectl get dm`, Deployments, Events).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dopd_e2e.cluster import Cluster
from dopd_e2e.operator import OperatorProcess, condition, get_json, install_crd, start_operator, wait_until
from dopd_e2e.prometheus import Prometheus
from dopd_emulator.config import ClusterReplicas, EmulatorConfig, TraceLoad
from dopd_emulator.emulator import Emulator
from dopd_operator.api import DisaggregatedModel
from dopd_worker.ports import free_ports


@dataclass
class Scenario:
    cluster: Cluster
    namespace: str
    prometheus: Prometheus
    ports: list[int]
    work: Path
    operators: list[OperatorProcess] = field(default_factory=list)
    emulators: list[Emulator] = field(default_factory=list)

    @property
    def operator(self) -> OperatorProcess:
        return self.operators[-1]

    def start_operator(self, **kwargs: Any) -> OperatorProcess:
        kwargs.setdefault("namespaces", [self.namespace])
        env = {"DOPD_SCRAPE_INTERVAL_SECONDS": "1", **dict(kwargs.pop("env", {}))}
        operator = start_operator(self.cluster, self.prometheus.url, env=env, **kwargs)
        self.operators.append(operator)
        return operator

    def apply(self, doc: Mapping[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(dict(doc)))

    def emulate(self, doc: Mapping[str, Any], trace: Path, at_end: str = "stop") -> Emulator:
        """Start the engine emulator of a model on the next reserved port; it follows the model's pods."""
        config = EmulatorConfig.for_model(
            DisaggregatedModel.model_validate(doc),
            load=TraceLoad(trace=str(trace), at_end=at_end),  # type: ignore[arg-type]
            replicas=ClusterReplicas(kubeconfig=str(self.cluster.kubeconfig), poll_seconds=1.0),
        ).model_copy(update={"port": self.ports.pop(0)})
        emulator = Emulator(config)
        emulator.start()
        self.emulators.append(emulator)
        return emulator

    def replicas(self, name: str) -> tuple[int, int]:
        """spec.replicas of the model's prefill and decode Deployments."""

        def one(role: str) -> int:
            deployment = get_json(self.cluster, "-n", self.namespace, "get", "deployment", f"{name}-{role}")
            return int(deployment["spec"]["replicas"])

        return one("prefill"), one("decode")

    def dm(self, name: str) -> dict[str, Any]:
        return dict(get_json(self.cluster, "-n", self.namespace, "get", "dm", name))

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        """The model's condition of that type ({} while it has none)."""
        return dict(condition(self.dm(name), type_) or {})

    def wait_condition(
        self, name: str, type_: str, status: str, timeout_s: float, what: str = ""
    ) -> dict[str, Any]:
        """Poll until the model's condition has `status`; returns the condition."""

        def reached() -> dict[str, Any] | None:
            current = self.condition(name, type_)
            return current if current.get("status") == status else None

        return wait_until(reached, timeout_s, what or f"{type_}={status} on {name}")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = get_json(
            self.cluster,
            "-n",
            self.namespace,
            "get",
            "events",
            "--field-selector",
            f"involvedObject.name={name}",
        )
        return sorted(found["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def wait_event(self, name: str, reason: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Poll until an Event with `reason` is recorded for the model; returns all its Events.
        Kopf posts Events from a background queue, so one can land after the status it goes with."""

        def recorded() -> list[dict[str, Any]] | None:
            found = self.events(name)
            return found if any(e.get("reason") == reason for e in found) else None

        return wait_until(recorded, timeout_s, f"a {reason} Event for {name}")

    def has_children(self, name: str) -> bool:
        found = self.cluster.kubectl(
            "-n", self.namespace, "get", "deployments", "-l", f"dopd.io/model={name}", "-o", "name"
        ).stdout.split()
        return len(found) == 2

    def wait_children(self, name: str, timeout_s: float = 60) -> None:
        wait_until(lambda: self.has_children(name), timeout_s, f"{name}'s Deployments")

    def operator_errors(self) -> list[dict[str, Any]]:
        """dopd's own errors and failed Kopf handlers, from every operator process of the scenario.
        Kopf's retried API requests (a 429 while the API server warms up a new CRD) are not failures."""
        return [
            record
            for operator in self.operators
            for record in operator.log_records()
            if record.get("level") in ("error", "critical")
            and (str(record.get("logger", "")).startswith("dopd") or record.get("logger") == "kopf.objects")
        ]


@contextmanager
def scenario(
    cluster: Cluster, prometheus_factory: Any, work: Path, emulators: int = 4, prefix: str = "dm"
) -> Iterator[Scenario]:
    """A fresh namespace, a Prometheus scraping `emulators` reserved ports every second; stops all it
    started (operators, emulators) and deletes the namespace at the end."""
    install_crd(cluster)
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    ports = free_ports(emulators)
    prometheus = prometheus_factory({"engines": [f"127.0.0.1:{p}" for p in ports]}, scrape_interval="1s")
    found = Scenario(cluster, namespace, prometheus, ports, work)
    try:
        yield found
    finally:
        for emulator in found.emulators:
            emulator.stop()
        for operator in found.operators:
            operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def model(name: str, namespace: str, mode: str = "Active", **spec: Any) -> dict[str, Any]:
    """A vLLM DisaggregatedModel sized for tests: 5 s interval, 20 s scale-down window, no forecast."""
    base: dict[str, Any] = {
        "engine": "vllm",
        "model": f"org/{name}",
        "prefill": {"minReplicas": 1, "maxReplicas": 8, "startupSeconds": 10},
        "decode": {"minReplicas": 1, "maxReplicas": 8, "startupSeconds": 10},
        "scaling": {
            "mode": mode,
            "intervalSeconds": 5,
            "tolerance": 0,
            "scaleUp": {"maxStepReplicas": 8},
            "scaleDown": {"stabilizationSeconds": 20, "maxStepReplicas": 8, "maxStepPercent": 100},
        },
        "forecast": {"model": "none"},
        "profile": {"preset": "llama3-8b-h100"},
        "metrics": {"windowSeconds": 15, "selector": {"model_name": f"org/{name}"}},
    }
    for key, value in spec.items():
        base[key] = (
            {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def write_trace(path: Path, phases: list[tuple[float, float]], isl: float, osl: float, seed: int) -> Path:
    """A canonical CSV trace: Poisson arrivals at each (rate rps, seconds) phase, log-normal lengths
    around `isl` prompt and `osl` output tokens."""
    rng = np.random.default_rng(seed)
    rows, start = [], 0.0
    for rate, seconds in phases:
        count = rng.poisson(rate * seconds)
        for t in np.sort(rng.uniform(start, start + seconds, count)):
            prompt = max(1, round(rng.lognormal(np.log(isl), 0.3)))
            output = max(2, round(rng.lognormal(np.log(osl), 0.3)))
            rows.append(f"{t:.4f},{prompt},{output}")
        start += seconds
    path.write_text("timestamp_s,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    return path
