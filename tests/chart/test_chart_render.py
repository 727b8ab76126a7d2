"""The dopd chart as `helm lint` and `helm template` see it: what a platform engineer installs.

Needs the Helm binary of the cluster build (`make cluster-build`), hence the e2e mark; no cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .helm_chart import CHART, NAMESPACE, PROMETHEUS_URL, ROOT, Chart, names, of_kind, one

pytestmark = pytest.mark.e2e

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACED = str(CHART / "ci" / "namespaced-values.yaml")

# The operator's permissions, copied from the operator's configuration contract
# (docs/operations.md, "RBAC"): (API group, resource) -> verbs. Never Secrets, no wildcards.
NAMESPACED_RULES: dict[tuple[str, str], set[str]] = {
    ("dopd.io", "disaggregatedmodels"): {"get", "list", "watch", "patch"},
    ("dopd.io", "disaggregatedmodels/status"): {"get", "patch", "update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments/scale"): {"get", "patch", "update"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
}
CLUSTER_RULES: dict[tuple[str, str], set[str]] = {
    ("", "namespaces"): {"get", "list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
}


def permissions(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """A Role's rules as (group, resource) -> verbs; a rule with names or URLs would be a test failure."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {var["name"]: var["value"] for var in container["env"]}


# ---------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: Path(p).name)
def test_strict_lint_is_clean(chart: Chart, values: Path) -> None:
    proc = chart.helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


def test_lint_without_the_prometheus_url_names_the_missing_value(chart: Chart) -> None:
    # Helm's lint mode turns a template's `fail` into an [INFO] line (so charts with required values
    # lint), while `helm install` and `helm template` stop on it (tested below).
    proc = chart.helm("lint", str(CHART))
    assert "Fail: prometheus.url is required" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ rendering


def test_defaults_render_a_cluster_wide_operator(chart: Chart) -> None:
    objects = chart.render()
    assert names(objects) == {
        ("CustomResourceDefinition", "", "disaggregatedmodels.dopd.io"),
        ("ServiceAccount", NAMESPACE, "dopd"),
        ("ClusterRole", "", "dopd"),
        ("ClusterRoleBinding", "", "dopd"),
        ("Deployment", NAMESPACE, "dopd"),
        ("Service", NAMESPACE, "dopd-metrics"),
        ("PodDisruptionBudget", NAMESPACE, "dopd"),
        ("ClusterKopfPeering", "", "dopd"),
    }
    assert one(objects, "Deployment")["spec"]["replicas"] == 2


def test_template_without_the_prometheus_url_fails_naming_the_value(chart: Chart) -> None:
    assert "prometheus.url is required" in chart.template_error(url=None)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("replicaCont=3", "replicaCont"),
        ("prometheus.urll=http://x:9090", "urll"),
        ("crds.enable=false", "enable"),
        ("serviceMonitor.intervall=10s", "intervall"),
    ],
    ids=["top-level", "nested", "crds", "servicemonitor"],
)
def test_a_misspelled_value_fails_with_a_schema_message_naming_it(
    chart: Chart, setting: str, named: str
) -> None:
    message = chart.template_error("--set", setting)
    assert "don't meet the specifications of the schema" in message and named in message, message


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("logFormat=yaml", "logFormat"),
        ("replicaCount=0", "replicaCount"),
        ("prometheus.url=prometheus:9090", "url"),
        ("watchNamespaces={LLM}", "watchNamespaces"),
    ],
    ids=["enum", "minimum", "url-without-scheme", "namespace-name"],
)
def test_an_invalid_value_fails_with_a_schema_message_naming_it(
    chart: Chart, setting: str, named: str
) -> None:
    message = chart.template_error("--set", setting)
    assert "don't meet the specifications of the schema" in message and named in message, message


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["prometheus.caConfigMap.name=ca"], "a CA bundle only applies to https"),
        (["peering.standalone=true"], "peering.standalone=true with replicaCount=2"),
        (["healthPort=8080"], "metricsPort and healthPort are both 8080"),
        (
            ["serviceMonitor.enabled=true", "metricsService.enabled=false"],
            "needs metricsService.enabled=true",
        ),
        (["serviceAccount.create=false"], "serviceAccount.create=false needs serviceAccount.name"),
        (["extraEnv[0].name=DOPD_PEERING", "extraEnv[0].value=x"], "extraEnv sets DOPD_PEERING"),
        (["extraEnv[0].name=DOPD_STANDALONE", "extraEnv[0].value=yes"], "extraEnv sets DOPD_STANDALONE"),
    ],
    ids=[
        "ca-with-http",
        "standalone-with-two-replicas",
        "same-ports",
        "monitor-without-service",
        "no-serviceaccount",
        "extraenv-overrides-the-chart",
        "extraenv-bypasses-the-standalone-check",
    ],
)
def test_conflicting_values_fail_with_the_fix(chart: Chart, settings: list[str], message: str) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    assert message in chart.template_error(*args)


# ----------------------------------------------------------------------------------------- CRDs


def test_the_templated_crd_is_the_crd_of_crds_folder(chart: Chart) -> None:
    rendered = one(chart.render(), "CustomResourceDefinition")
    source = yaml.safe_load((ROOT / "crds" / "dopd.io_disaggregatedmodels.yaml").read_text())
    assert rendered["spec"] == source["spec"]
    assert rendered["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crds_keep_false_drops_the_keep_annotation(chart: Chart) -> None:
    rendered = one(chart.render("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in rendered["metadata"]


def test_crds_disabled_renders_no_dopd_crd_and_only_kopfs_from_the_crds_folder(chart: Chart) -> None:
    assert of_kind(chart.render("--set", "crds.enabled=false"), "CustomResourceDefinition") == []
    with_folder = chart.render("--set", "crds.enabled=false", "--include-crds")
    crds = {o["metadata"]["name"] for o in of_kind(with_folder, "CustomResourceDefinition")}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


# ----------------------------------------------------------------------------------------- RBAC


def test_cluster_wide_rbac_is_exactly_the_documented_rules(chart: Chart) -> None:
    objects = chart.render("--show-only", "templates/rbac.yaml")
    assert {o["kind"] for o in objects} == {"ClusterRole", "ClusterRoleBinding"}
    assert permissions(one(objects, "ClusterRole")) == {**NAMESPACED_RULES, **CLUSTER_RULES}
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "dopd",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dopd", "namespace": NAMESPACE}]


def test_watched_namespaces_get_a_role_each_and_a_cluster_role_for_cluster_scoped_rules(chart: Chart) -> None:
    objects = chart.render("-f", NAMESPACED, "--show-only", "templates/rbac.yaml", url=None)
    roles = {o["metadata"]["namespace"]: permissions(o) for o in of_kind(objects, "Role")}
    assert roles == {"llm": NAMESPACED_RULES, "llm-staging": NAMESPACED_RULES}
    assert permissions(one(objects, "ClusterRole")) == CLUSTER_RULES
    bindings = of_kind(objects, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"llm", "llm-staging"}
    for binding in [*bindings, one(objects, "ClusterRoleBinding")]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dopd", "namespace": NAMESPACE}]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: Path(p).name)
def test_no_rule_grants_secrets_or_a_wildcard(chart: Chart, values: Path) -> None:
    for role in [
        o for o in chart.render("-f", str(values), url=None) if o["kind"] in ("Role", "ClusterRole")
    ]:
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"], rule
            assert "*" not in [*rule["apiGroups"], *rule["resources"], *rule["verbs"]], rule


def test_rbac_create_false_renders_no_rbac(chart: Chart) -> None:
    kinds = {o["kind"] for o in chart.render("--set", "rbac.create=false")}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


# ----------------------------------------------------------------------------------- Deployment


def test_the_pod_is_locked_down(chart: Chart) -> None:
    pod = one(chart.render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # Python needs a writable /tmp on the read-only root filesystem.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert set(container["resources"]) == {"requests", "limits"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["serviceAccountName"] == "dopd"


def test_run_as_user_null_leaves_the_uid_to_the_platform(chart: Chart) -> None:
    pod = one(chart.render("--set", "podSecurityContext.runAsUser=null"), "Deployment")["spec"]["template"][
        "spec"
    ]
    assert "runAsUser" not in pod["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_probes_hit_healthz_on_the_health_port(chart: Chart) -> None:
    container = one(chart.render("--set", "healthPort=9000"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 9000}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_default_environment_is_the_operator_contract(chart: Chart) -> None:
    deployment = one(chart.render(), "Deployment")
    assert env_of(deployment) == {
        "DOPD_PROMETHEUS_URL": PROMETHEUS_URL,
        "DOPD_PROMETHEUS_TIMEOUT_SECONDS": "10",
        "DOPD_METRICS_PORT": "8080",
        "DOPD_HEALTH_PORT": "8081",
        "DOPD_BIND_ADDRESS": "0.0.0.0",
        "DOPD_PEERING": "dopd",
        "DOPD_LOG_FORMAT": "json",
    }
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["run"]


def test_namespaced_environment_points_at_the_mounted_token_and_ca(chart: Chart) -> None:
    deployment = one(chart.render("-f", NAMESPACED, url=None), "Deployment")
    env = env_of(deployment)
    assert env["DOPD_NAMESPACES"] == "llm,llm-staging"
    assert env["DOPD_PROMETHEUS_URL"] == "https://prometheus.monitoring.svc:9091"
    assert env["DOPD_LOG_FORMAT"] == "text"
    assert env["HTTPS_PROXY"] == "http://proxy.internal:3128"
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The file the operator is told to read is where the kubelet puts the key.
    token = volumes["prometheus-token"]["secret"]
    assert token["secretName"] == "prometheus-token"
    assert (
        env["DOPD_PROMETHEUS_BEARER_TOKEN_FILE"]
        == f"{mounts['prometheus-token']}/{token['items'][0]['path']}"
    )
    assert token["items"][0]["key"] == "token"
    ca = volumes["prometheus-ca"]["configMap"]
    assert ca["name"] == "prometheus-ca"
    assert env["DOPD_PROMETHEUS_CA_FILE"] == f"{mounts['prometheus-ca']}/{ca['items'][0]['path']}"
    assert ca["items"][0]["key"] == "ca.crt"


def test_standalone_runs_without_peering(chart: Chart) -> None:
    objects = chart.render("--set", "replicaCount=1", "--set", "peering.standalone=true")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["run", "--standalone"]
    assert "DOPD_PEERING" not in env_of(deployment)
    assert not of_kind(objects, "ClusterKopfPeering") and not of_kind(objects, "KopfPeering")


def test_watched_namespaces_get_a_kopf_peering_each(chart: Chart) -> None:
    objects = chart.render("-f", NAMESPACED, url=None)
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in of_kind(objects, "KopfPeering")} == {
        ("llm", "dopd"),
        ("llm-staging", "dopd"),
    }
    assert of_kind(objects, "ClusterKopfPeering") == []


# -------------------------------------------------------------------------------------- metrics


def test_the_service_monitor_scrapes_the_metrics_service_which_selects_the_operator(chart: Chart) -> None:
    objects = chart.render("-f", NAMESPACED, url=None)
    service = one(objects, "Service")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_monitors_are_off_by_default(chart: Chart) -> None:
    kinds = {o["kind"] for o in chart.render()}
    assert "ServiceMonitor" not in kinds and "PodMonitor" not in kinds


def test_the_engine_pod_monitor_labels_series_with_role_and_namespace(chart: Chart) -> None:
    monitor = one(chart.render("-f", NAMESPACED, url=None), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm", "llm-staging"]}
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "dopd"}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    # vLLM's series carry no role: dopd's vllm preset reads the pod label dopd.io/role as `role`.
    assert relabel["role"] == ["__meta_kubernetes_pod_label_dopd_io_role"]
    assert relabel["namespace"] == ["__meta_kubernetes_namespace"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"


def test_engine_pod_monitor_watches_every_namespace_when_the_operator_does(chart: Chart) -> None:
    monitor = one(chart.render("--set", "enginePodMonitor.enabled=true"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
