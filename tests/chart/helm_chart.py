"""Render the dopd chart with the real Helm of the cluster build, for the tests in tests/chart/.

Helm is found as e2e/dopd_e2e/cluster.py finds it (the build's bin dir, then PATH), through its
`Cluster` helper pointed at an empty kubeconfig: `helm lint` and `helm template` need no cluster.
When Helm is absent the tests fail with `run make cluster-build`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dopd_e2e.cluster import Cluster, default_bin_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dopd"
RELEASE = "dopd"
NAMESPACE = "dopd-system"
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


@dataclass
class Chart:
    """The chart and the Helm binary that renders it."""

    tools: Cluster

    @classmethod
    def offline(cls) -> Chart:
        return cls(Cluster(kubeconfig=Path(os.devnull), bin_dir=default_bin_dir()))

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run helm; never raises on a non-zero exit (the tests read returncode and stderr)."""
        return self.tools.helm(*args, check=False, timeout=120)

    def _template(
        self, *args: str, url: str | None, namespace: str = NAMESPACE
    ) -> subprocess.CompletedProcess[str]:
        url_args = ("--set", f"prometheus.url={url}") if url is not None else ()
        return self.helm("template", RELEASE, str(CHART), "--namespace", namespace, *url_args, *args)

    def template_text(self, *args: str, url: str | None = PROMETHEUS_URL, namespace: str = NAMESPACE) -> str:
        """`helm template` of the chart as release dopd in `namespace`; raises with stderr on failure.

        url: `prometheus.url` (given with --set, which overrides a values file's; None gives none)."""
        proc = self._template(*args, url=url, namespace=namespace)
        if proc.returncode != 0:
            raise AssertionError(f"helm template {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout

    def template_error(self, *args: str, url: str | None = PROMETHEUS_URL) -> str:
        """Helm's error (stderr) for a rendering that must fail; raises if it renders."""
        proc = self._template(*args, url=url)
        if proc.returncode == 0:
            raise AssertionError(f"helm template {' '.join(args)} rendered; it should have failed")
        return proc.stderr

    def render(
        self, *args: str, url: str | None = PROMETHEUS_URL, namespace: str = NAMESPACE
    ) -> list[dict[str, Any]]:
        """The objects `helm template` renders."""
        return [
            doc for doc in yaml.safe_load_all(self.template_text(*args, url=url, namespace=namespace)) if doc
        ]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {[o['metadata']['name'] for o in found]}"
    return found[0]


def names(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of each object; '' for cluster-scoped ones."""
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects}
