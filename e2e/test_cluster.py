"""The local control plane is a real Kubernetes: schema/CEL validation, scheduling onto fake GPU
nodes, garbage collection, RBAC and Helm all behave as on a real cluster.

Each test works in a namespace of its own on the session's cluster (``k8s_cluster`` fixture).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster, read_versions

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(__file__).resolve().parent / "testdata"
PROJECT_CRD = REPO / "crds" / "dopd.io_disaggregatedmodels.yaml"


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    # pods need the namespace's default ServiceAccount, made by the controller-manager
    wait_until(
        "the default ServiceAccount",
        lambda: k8s_cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
    )
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def gpu_deployment(name: str, replicas: int, gpus: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [
                            {
                                "name": "worker",
                                "image": "registry.k8s.io/pause:3.10",
                                "resources": {
                                    "requests": {"nvidia.com/gpu": str(gpus)},
                                    "limits": {"nvidia.com/gpu": str(gpus)},
                                },
                            }
                        ]
                    },
                },
            },
        }
    )


def pods(cluster: Cluster, ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "-n", ns, "pods", "-l", selector)["items"]
    return items


def is_running_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status", {})
    ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
    return status.get("phase") == "Running" and bool(ready) and ready[0]["status"] == "True"


def test_server_reports_its_real_version(k8s_cluster: Cluster) -> None:
    version = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    if not k8s_cluster.external:
        # the version ldflags of build.sh; without them this is v0.0.0-master+$Format:%H$
        assert version["serverVersion"]["gitVersion"] == read_versions()["K8S_VERSION"]
    assert version["serverVersion"]["gitVersion"].startswith("v1.")


def test_fake_gpu_nodes_are_ready_with_gpu_capacity(k8s_cluster: Cluster) -> None:
    nodes = [
        n
        for n in get_json(k8s_cluster, "nodes")["items"]
        if int(n["status"].get("allocatable", {}).get("nvidia.com/gpu", "0")) > 0
    ]
    assert nodes, (
        "no node with nvidia.com/gpu capacity; on an external cluster add (fake) GPU nodes, "
        "see docs/local-cluster.md"
    )
    if not k8s_cluster.external:
        # the defaults of up.sh: DOPD_GPU_NODES=4, DOPD_GPUS_PER_NODE=8
        assert sorted(n["metadata"]["name"] for n in nodes) == [f"gpu-node-{i}" for i in range(4)]
        assert {n["status"]["allocatable"]["nvidia.com/gpu"] for n in nodes} == {"8"}
    for node in nodes:
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", node["metadata"]["name"]


def test_crd_schema_and_cel_rules_are_enforced(k8s_cluster: Cluster, namespace: str) -> None:
    """A tiny CRD of our own: the API server rejects a schema violation and a CEL violation."""
    k8s_cluster.kubectl("apply", "-f", str(TESTDATA / "widget-crd.yaml"))
    k8s_cluster.wait_crd_established("widgets.e2e.dopd.io")

    def widget(spec: dict[str, Any]) -> str:
        obj = {"apiVersion": "e2e.dopd.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
        return yaml.safe_dump(obj)

    bad_cel = k8s_cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=widget({"minReplicas": 5, "maxReplicas": 2}), check=False
    )
    assert bad_cel.returncode != 0
    assert "minReplicas must be <= maxReplicas" in bad_cel.stderr

    bad_type = k8s_cluster.kubectl(
        "-n",
        namespace,
        "create",
        "-f",
        "-",
        input=widget({"minReplicas": "two", "maxReplicas": 2}),
        check=False,
    )
    assert bad_type.returncode != 0
    assert 'spec.minReplicas: Invalid value: "string": spec.minReplicas in body must be of type integer' in (
        bad_type.stderr
    )

    k8s_cluster.kubectl(
        "-n", namespace, "create", "-f", "-", input=widget({"minReplicas": 1, "maxReplicas": 2})
    )


def test_three_gpu_replicas_run_and_oversized_pods_stay_pending(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.kubectl("-n", namespace, "apply", "-f", "-", input=gpu_deployment("fits", 3, 1))
    wait_until(
        "3 Running, Ready pods",
        lambda: sum(is_running_ready(p) for p in pods(k8s_cluster, namespace, "app=fits")) == 3,
    )
    nodes = {p["spec"]["nodeName"] for p in pods(k8s_cluster, namespace, "app=fits")}
    if not k8s_cluster.external:
        assert all(n.startswith("gpu-node-") for n in nodes), nodes

    # 9 GPUs per pod: no node has that many (8 each), so the scheduler leaves the pod Pending
    k8s_cluster.kubectl("-n", namespace, "apply", "-f", "-", input=gpu_deployment("too-big", 1, 9))

    def unschedulable() -> bool:
        found = pods(k8s_cluster, namespace, "app=too-big")
        return bool(found) and any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in found[0].get("status", {}).get("conditions", [])
        )

    wait_until("the scheduler to mark the pod Unschedulable", unschedulable)
    pod = pods(k8s_cluster, namespace, "app=too-big")[0]
    assert pod["status"]["phase"] == "Pending"
    cond = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond


def test_deleting_an_owner_garbage_collects_what_it_owns(k8s_cluster: Cluster, namespace: str) -> None:
    # an explicit ownerReference between two ConfigMaps
    owner = json.loads(
        k8s_cluster.kubectl("-n", namespace, "create", "configmap", "owner", "-o", "json").stdout
    )
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
        "data": {"k": "v"},
    }
    k8s_cluster.kubectl("-n", namespace, "create", "-f", "-", input=yaml.safe_dump(owned))
    # and the Deployment -> ReplicaSet -> Pod chain made by the controllers
    k8s_cluster.kubectl("-n", namespace, "apply", "-f", "-", input=gpu_deployment("gc", 2, 1))
    wait_until("2 pods", lambda: len(pods(k8s_cluster, namespace, "app=gc")) == 2)

    k8s_cluster.kubectl("-n", namespace, "delete", "configmap", "owner", "--wait=false")
    k8s_cluster.kubectl("-n", namespace, "delete", "deployment", "gc", "--wait=false")

    def gone() -> bool:
        cm = k8s_cluster.kubectl("-n", namespace, "get", "configmap", "owned", check=False)
        rs = get_json(k8s_cluster, "-n", namespace, "replicasets", "-l", "app=gc")["items"]
        return (
            cm.returncode != 0
            and "NotFound" in cm.stderr
            and not rs
            and not pods(k8s_cluster, namespace, "app=gc")
        )

    wait_until("the garbage collector to delete the owned objects", gone)


def test_rbac_refuses_a_verb_the_role_lacks(k8s_cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    ns = namespace
    k8s_cluster.kubectl("-n", ns, "create", "serviceaccount", "limited")
    k8s_cluster.kubectl(
        "-n", ns, "create", "role", "deploy-reader", "--verb=get,list,watch", "--resource=deployments.apps"
    )
    k8s_cluster.kubectl(
        "-n", ns, "create", "rolebinding", "limited", "--role=deploy-reader", f"--serviceaccount={ns}:limited"
    )
    k8s_cluster.kubectl("-n", ns, "apply", "-f", "-", input=gpu_deployment("target", 1, 0))
    token = k8s_cluster.kubectl("-n", ns, "create", "token", "limited", "--duration=10m").stdout.strip()

    # a kubeconfig that authenticates only with the ServiceAccount's token (no admin client cert)
    admin = yaml.safe_load(k8s_cluster.kubectl("config", "view", "--raw", "--minify", "-o", "yaml").stdout)
    cluster_entry = admin["clusters"][0]
    sa_kubeconfig = tmp_path / "limited.kubeconfig"
    sa_kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster_entry],
                "users": [{"name": "limited", "user": {"token": token}}],
                "contexts": [
                    {"name": "limited", "context": {"cluster": cluster_entry["name"], "user": "limited"}}
                ],
                "current-context": "limited",
            }
        )
    )
    as_sa = ("--kubeconfig", str(sa_kubeconfig), "-n", ns)

    allowed = k8s_cluster.kubectl(*as_sa, "get", "deployment", "target", "-o", "name")
    assert allowed.stdout.strip() == "deployment.apps/target"

    refused = k8s_cluster.kubectl(
        *as_sa, "patch", "deployment", "target", "-p", '{"spec":{"replicas":2}}', check=False
    )
    assert refused.returncode != 0
    assert (
        f'User "system:serviceaccount:{ns}:limited" cannot patch resource "deployments" in API group "apps"'
        in refused.stderr
    ), refused.stderr
    assert "Forbidden" in refused.stderr or "forbidden" in refused.stderr


def test_helm_install_and_uninstall_a_tiny_chart(k8s_cluster: Cluster, namespace: str) -> None:
    chart = str(TESTDATA / "charts" / "tiny")
    k8s_cluster.helm(
        "install", "tiny", chart, "-n", namespace, "--set", "greeting=bonjour", "--wait", "--timeout", "90s"
    )
    cm = get_json(k8s_cluster, "-n", namespace, "configmap", "tiny-tiny")
    assert cm["data"]["greeting"] == "bonjour"
    # helm saw the server's real version through Capabilities
    assert cm["data"]["kubeVersion"].startswith("v1.")
    deploy = get_json(k8s_cluster, "-n", namespace, "deployment", "tiny-tiny")
    assert deploy["status"].get("readyReplicas") == 2
    listed = json.loads(k8s_cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in listed] == [("tiny", "deployed")]

    k8s_cluster.helm("uninstall", "tiny", "-n", namespace, "--wait", "--timeout", "90s")
    assert json.loads(k8s_cluster.helm("list", "-n", namespace, "-o", "json").stdout) == []
    missing = k8s_cluster.kubectl("-n", namespace, "get", "configmap", "tiny-tiny", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_helm_refuses_a_chart_whose_kube_version_the_server_does_not_meet(
    k8s_cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "future"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: future\nversion: 0.1.0\nkubeVersion: '>=9.0.0-0'\n"
    )
    refused = k8s_cluster.helm("install", "future", str(chart), "-n", namespace, check=False)
    assert refused.returncode != 0
    assert "incompatible with Kubernetes" in refused.stderr, refused.stderr


def test_a_failing_kubectl_raises_with_the_server_message(k8s_cluster: Cluster) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        k8s_cluster.kubectl("get", "no-such-resource-type")
    assert "the server doesn't have a resource type" in str(info.value.stderr)


def minimal_value(schema: dict[str, Any]) -> Any:
    """The smallest value an OpenAPI v3 schema accepts: required fields only, lowest bounds."""
    if "default" in schema:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("x-kubernetes-int-or-string"):
        return 1
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal_value(props.get(name, {})) for name in schema.get("required", [])}
    if kind in ("integer", "number"):
        low = schema.get("minimum", 1)
        if schema.get("exclusiveMinimum"):
            low += 1
        return max(low, 1) if "maximum" not in schema else min(max(low, 1), schema["maximum"])
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "boolean":
        return False
    if kind == "array":
        return [minimal_value(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    return {}


def cel_rules_about(schema: dict[str, Any], word: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = schema.get("x-kubernetes-validations", [])
    return [r for r in rules if word in r["rule"]]


def test_project_crd_rejects_schema_and_cel_violations(k8s_cluster: Cluster, namespace: str) -> None:
    """The project's CRD (crds/) on a real API server: its schema and CEL rules reject bad objects."""
    assert PROJECT_CRD.is_file(), f"{PROJECT_CRD} is missing; generate the CRDs (make crds)"
    crd = yaml.safe_load(PROJECT_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(PROJECT_CRD))
    k8s_cluster.wait_crd_established(crd["metadata"]["name"])

    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    prefill_schema = spec_schema["properties"]["prefill"]

    def create(spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        obj = {
            "apiVersion": f"{group}/{version['name']}",
            "kind": kind,
            "metadata": {"name": "m", "namespace": namespace},
            "spec": spec,
        }
        return k8s_cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False
        )

    base = minimal_value(spec_schema)
    base["prefill"] = minimal_value(prefill_schema)
    base["prefill"]["minReplicas"], base["prefill"]["maxReplicas"] = 1, 2
    ok = create(base)
    assert ok.returncode == 0, f"a minimal valid {kind} was rejected: {ok.stderr}"

    inverted = json.loads(json.dumps(base))
    inverted["prefill"]["minReplicas"], inverted["prefill"]["maxReplicas"] = 3, 1
    refused = create(inverted)
    assert refused.returncode != 0
    rules = [r for r in cel_rules_about(prefill_schema, "minReplicas") if "maxReplicas" in r["rule"]]
    assert rules, "the CRD has no CEL rule on spec.prefill comparing minReplicas and maxReplicas"
    assert f'The {kind} "m" is invalid' in refused.stderr, refused.stderr
    assert "spec.prefill: Invalid value" in refused.stderr, refused.stderr
    static = [r["message"] for r in rules if "message" in r and "messageExpression" not in r]
    if static:
        assert any(msg in refused.stderr for msg in static), (static, refused.stderr)
    else:  # a messageExpression renders the values into the message
        assert "minReplicas" in refused.stderr, refused.stderr

    wrong_type = json.loads(json.dumps(base))
    wrong_type["prefill"]["minReplicas"] = "three"
    refused = create(wrong_type)
    assert refused.returncode != 0
    assert (
        'spec.prefill.minReplicas: Invalid value: "string": '
        "spec.prefill.minReplicas in body must be of type integer"
    ) in refused.stderr, refused.stderr
