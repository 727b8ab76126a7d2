"""The project's CRD and examples on a real API server: what `kubectl apply` and `kubectl get dm` show."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster
from dopd_operator.api import DisaggregatedModel, DisaggregatedModelSpec

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "dopd.io_disaggregatedmodels.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def dm_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    k8s_cluster.wait_crd_established("disaggregatedmodels.dopd.io")
    name = f"dm-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _in_namespace(doc: dict[str, Any], namespace: str) -> str:
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    return yaml.safe_dump(doc)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_accepted_and_defaulted_like_the_python_types(
    k8s_cluster: Cluster, dm_namespace: str, example: Path
) -> None:
    doc = yaml.safe_load(example.read_text())
    k8s_cluster.kubectl("apply", "-f", "-", input=_in_namespace(doc, dm_namespace))
    stored = yaml.safe_load(
        k8s_cluster.kubectl("-n", dm_namespace, "get", "dm", doc["metadata"]["name"], "-o", "yaml").stdout
    )
    # The server's structural defaulting and pydantic's defaults agree, field for field.
    assert (
        DisaggregatedModelSpec.model_validate(stored["spec"]) == DisaggregatedModel.model_validate(doc).spec
    )
    assert stored["spec"]["scaling"]["scaleDown"]["stabilizationSeconds"] == pytest.approx(
        DisaggregatedModel.model_validate(doc).spec.scaling.scale_down.stabilization_seconds
    )


def test_omitted_sections_get_whole_defaults_from_the_server(k8s_cluster: Cluster, dm_namespace: str) -> None:
    doc = {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "bare"},
        "spec": {"model": "m"},
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=_in_namespace(doc, dm_namespace))
    spec = yaml.safe_load(k8s_cluster.kubectl("-n", dm_namespace, "get", "dm", "bare", "-o", "yaml").stdout)[
        "spec"
    ]
    assert spec["scaling"]["mode"] == "Active"
    assert spec["scaling"]["scaleDown"]["stabilizationSeconds"] == 300
    assert spec["profile"] == {"preset": "llama3-8b-h100"}
    assert spec["slo"]["ttftSeconds"] == 1.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"model": "m", "scaling": {"gpuBudget": 1}},
            "scaling.gpuBudget is smaller than the GPUs",
            id="budget-below-minimums",
        ),
        pytest.param(
            {"model": "m", "scaling": {"ratioBand": {"min": 4, "max": 1}}},
            "ratioBand.min must be <= ratioBand.max",
            id="ratio-band-reversed",
        ),
        pytest.param(
            {"model": "m", "scaling": {"onMetricsUnknown": "Fallback"}},
            "onMetricsUnknown=Fallback needs fallbackReplicas",
            id="fallback-without-replicas",
        ),
        pytest.param(
            {"model": "m", "scaling": {"mode": "Sometimes"}},
            'Unsupported value: "Sometimes"',
            id="unknown-mode",
        ),
        pytest.param({"model": ""}, "spec.model in body should be at least 1 chars long", id="empty-model"),
    ],
)
def test_server_rejects_specs_that_cannot_work(
    k8s_cluster: Cluster, dm_namespace: str, spec: dict[str, Any], message: str
) -> None:
    doc = {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    out = k8s_cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=_in_namespace(doc, dm_namespace), check=False
    )
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_kubectl_get_dm_shows_the_printer_columns(k8s_cluster: Cluster, dm_namespace: str) -> None:
    doc = {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "cols"},
        "spec": {"model": "m"},
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=_in_namespace(doc, dm_namespace))
    status = {
        "status": {
            "prefill": {"desired": 3, "current": 3, "ready": 2, "summary": "2/3"},
            "decode": {"desired": 2, "current": 2, "ready": 2, "summary": "2/2"},
            "ratio": "3:2",
            "gpus": 5,
            "load": {"arrivalRateRps": 12.5},
            "sloAttainment": {"ttft": 0.995, "tpot": 0.99, "summary": "99.0%"},
        }
    }
    k8s_cluster.kubectl(
        "-n",
        dm_namespace,
        "patch",
        "dm",
        "cols",
        "--subresource=status",
        "--type=merge",
        "-p",
        yaml.safe_dump(status),
    )
    table = k8s_cluster.kubectl("-n", dm_namespace, "get", "dm", "cols").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PREFILL",
        "DECODE",
        "RATIO",
        "GPUS",
        "LOAD-RPS",
        "SLO",
        "MODE",
        "AGE",
    ]
    assert table[1].split()[:8] == ["cols", "2/3", "2/2", "3:2", "5", "12.5", "99.0%", "Active"]
