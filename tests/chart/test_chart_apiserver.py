"""The rendered chart on the real local API server (the suite's `k8s_cluster` fixture, dopd_e2e.fixtures).

`kubectl apply --dry-run=server` runs every object through the API server's schemas, defaulting and
admission exactly as `helm install` would, without persisting it: the CRD, the RBAC, the Deployment,
the Service, the PodDisruptionBudget and the Kopf peering objects. Kopf's peering CRDs (the chart's
crds/ folder, which Helm installs before the templates) are applied for real first, as Helm does, so
the peering objects have a kind to be checked against. The operator's pod is also checked against the
restricted Pod Security Standard, enforced on its namespace.

The ServiceMonitor and the PodMonitor need the Prometheus Operator's CRDs, which the local cluster does
not have; tests/chart/test_chart_render.py checks their shape.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster

from .helm_chart import CHART, PROMETHEUS_URL, Chart, one

pytestmark = pytest.mark.e2e

# Namespaces of these tests alone, so nothing they create meets another test's objects.
NAMESPACE = "dopd-chart-check"
WATCHED = ("chart-check-llm", "chart-check-llm-staging")
NAMESPACED = (
    *("-f", str(CHART / "ci" / "namespaced-values.yaml")),
    *("--set", f"watchNamespaces={{{','.join(WATCHED)}}}"),
    *("--set", "serviceMonitor.enabled=false", "--set", "enginePodMonitor.enabled=false"),
)
KOPF_CRDS = ("crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.fixture(scope="module")
def cluster(k8s_cluster: Cluster, chart: Chart) -> Cluster:
    """The session's cluster with the release namespace (restricted Pod Security enforced), the watched
    namespaces, Kopf's peering CRDs and the operator's ServiceAccount (a pod names it)."""
    restricted = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    namespaces = [namespace(NAMESPACE, restricted), *(namespace(n, {}) for n in WATCHED)]
    k8s_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces))
    k8s_cluster.kubectl("apply", "-f", str(CHART / "crds"))
    k8s_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *KOPF_CRDS)
    service_account = one(chart.render(namespace=NAMESPACE), "ServiceAccount")
    k8s_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(service_account))
    return k8s_cluster


def dry_run(cluster: Cluster, manifest: str) -> tuple[int, str, str]:
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("args", "url"),
    [
        ((), PROMETHEUS_URL),
        (NAMESPACED, None),  # the values file has its https URL
        (("--set", "crds.keep=false", "--set", "replicaCount=3"), PROMETHEUS_URL),
    ],
    ids=["defaults", "watched-namespaces-https-token-ca", "three-replicas-no-keep"],
)
def test_the_api_server_accepts_every_rendered_object(
    cluster: Cluster, chart: Chart, args: tuple[str, ...], url: str | None
) -> None:
    manifest = chart.template_text(*args, url=url, namespace=NAMESPACE)
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    code, stdout, stderr = dry_run(cluster, manifest)
    assert code == 0, stderr
    assert stdout.count("(server dry run)") == len(objects), stdout
    # The Deployment's pod template passes the restricted Pod Security Standard (a warning otherwise).
    assert "would violate PodSecurity" not in stderr, stderr


def operator_pod(chart: Chart) -> dict[str, Any]:
    template = one(chart.render(namespace=NAMESPACE), "Deployment")["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "dopd-pod-security-check", "namespace": NAMESPACE},
        "spec": template["spec"],
    }


def test_the_operator_pod_is_admitted_under_restricted_pod_security(cluster: Cluster, chart: Chart) -> None:
    code, _, stderr = dry_run(cluster, yaml.safe_dump(operator_pod(chart)))
    assert code == 0, stderr


def test_restricted_pod_security_is_really_enforced_there(cluster: Cluster, chart: Chart) -> None:
    # The counterfactual of the test above: the same pod allowed to escalate privileges is refused.
    pod = copy.deepcopy(operator_pod(chart))
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    code, _, stderr = dry_run(cluster, yaml.safe_dump(pod))
    assert code != 0
    assert "violates PodSecurity" in stderr and "allowPrivilegeEscalation" in stderr


def test_helm_install_prints_the_next_steps_and_uninstall_removes_the_operator(cluster: Cluster) -> None:
    # A release of its own (names, namespace, peering) so it meets nothing of another test's; the CRD is
    # left to the tests that own it (crds.enabled=false), Kopf's peering CRDs already exist (Helm skips them).
    release, namespace_name = "notes", "dopd-notes"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace(namespace_name, {})))
    try:
        installed = cluster.helm(
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace_name,
            "--set",
            f"prometheus.url={PROMETHEUS_URL}",
            "--set",
            "crds.enabled=false",
            "--set",
            f"peering.name={namespace_name}",
        )
        notes = installed.stdout.split("NOTES:", 1)[1]
        assert f"reads\nmetrics from {PROMETHEUS_URL}" in notes
        assert "kubectl apply -f examples/vllm-llama3-8b.yaml" in notes
        assert "kubectl get dm -A" in notes
        assert "kubectl describe dm llama3-8b -n llm" in notes
        assert "kubectl apply -f crds/dopd.io_disaggregatedmodels.yaml" in notes  # crds.enabled=false
        cluster.kubectl("get", "clusterkopfpeering", namespace_name)
        cluster.kubectl("get", "clusterrole", f"{release}-dopd")
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace_name, check=False)
        cluster.kubectl("delete", "namespace", namespace_name, "--wait=false", check=False)
    for kind, name in (("clusterkopfpeering", namespace_name), ("clusterrole", f"{release}-dopd")):
        gone = cluster.kubectl("get", kind, name, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
