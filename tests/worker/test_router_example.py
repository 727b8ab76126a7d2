"""examples/router/tiny-router.yaml fits the model it fronts: its arguments are ones the router accepts,
it discovers the Services dopd creates for that model, its SLO flags are the model's, the chart's
engine PodMonitor selects it, and it runs unprivileged. (e2e/test_worker_discovery.py runs discovery
with its Role on a real API server.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dopd_operator.api import DisaggregatedModel
from dopd_operator.controller.children import MODEL_LABEL, child_name
from dopd_worker.cli import router

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _docs() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "router" / "tiny-router.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_the_router_arguments_parse_and_match_the_model_they_front() -> None:
    model = DisaggregatedModel.model_validate(
        yaml.safe_load((EXAMPLES / "dopd-worker-tiny.yaml").read_text())
    )
    docs = _docs()
    pod = docs["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    namespace = model.metadata.namespace or "default"
    # Kubernetes expands $(POD_NAMESPACE) from the env the container declares
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]
    args = [a.replace("$(POD_NAMESPACE)", namespace) for a in container["args"]]
    assert args[0] == "router"
    params = router.make_context("router", args[1:]).params
    name = model.metadata.name
    assert params["k8s_namespace"] == namespace
    assert params["k8s_prefill_service"] == child_name(name, "prefill")
    assert params["k8s_decode_service"] == child_name(name, "decode")
    assert params["model"] == model.spec.model
    assert params["ttft_slo_seconds"] == model.spec.slo.ttft_seconds
    assert params["tpot_slo_seconds"] == model.spec.slo.tpot_seconds
    assert (params["host"], params["port"]) == ("0.0.0.0", 8000)
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert docs["Service"]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_the_router_is_scraped_as_the_dopd_preset_expects_and_runs_unprivileged() -> None:
    docs = _docs()
    pod = docs["Deployment"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    # the chart's engine PodMonitor: managed-by dopd with a dopd.io/role, which becomes `role`
    assert labels["app.kubernetes.io/managed-by"] == "dopd" and labels["dopd.io/role"] == "router"
    # not dopd.io/model: the operator would take it for one of the model's engine pods
    assert MODEL_LABEL not in labels
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert docs["Role"]["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
    ]
    assert pod["spec"]["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
