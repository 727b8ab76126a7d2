"""The objects a DisaggregatedModel owns, as plain manifests: per role a Deployment, a Service and a
PodDisruptionBudget. Pure: (model) -> dicts; the actuator applies them with server-side apply.

- Names `<model>-prefill` and `<model>-decode`; labels `dopd.io/model`, `dopd.io/role` and
  `app.kubernetes.io/managed-by: dopd` on every object and pod; the pods' selector uses the first two.
- Every child carries a controller owner reference to the DisaggregatedModel, so deleting the model
  garbage-collects them.
- The Deployment never states `spec.replicas`: the replica count belongs to the scale subresource (dopd
  in Active mode, nobody otherwise). An applied manifest that named it would make server-side apply reset
  it on every template change.
- Each pod requests `gpusPerReplica` `nvidia.com/gpu`. A template that already asks for a different
  number is an error (SpecError naming the container), never silently overridden.
- Rollouts surge and never go below the ready count (`maxUnavailable: 0`).
- Removed pods drain: a short preStop sleep lets endpoint removal reach the routers, then SIGTERM (on
  which the engines drain) with `terminationGracePeriodSeconds` = `drainSeconds` + that sleep.
- With no template, the engine's default container is used (the images and flags of `examples/`).

Callers: `controller.reconcile` (apply), tests.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from dopd_operator.api import API_VERSION, KIND, DisaggregatedModelSpec, Engine, Role
from dopd_operator.errors import SpecError

MODEL_LABEL = "dopd.io/model"
ROLE_LABEL = "dopd.io/role"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "dopd"
GPU_RESOURCE = "nvidia.com/gpu"
PRESTOP_SECONDS = 5  # endpoint removal propagates to the routers before the engine is told to drain
# Services are DNS-1035 labels (at most 63 characters): the longest suffix is "-prefill".
MAX_MODEL_NAME_LENGTH = 63 - len("-prefill")

ENGINE_PORT = {Engine.DOPD: 8000, Engine.VLLM: 8000, Engine.SGLANG: 30000}
_ENGINE_IMAGE = {
    Engine.DOPD: "ghcr.io/dopd/worker:0.1.0",
    Engine.VLLM: "vllm/vllm-openai:v0.11.0",
    Engine.SGLANG: "lmsysorg/sglang:v0.5.3",
}


def child_name(model_name: str, role: Role) -> str:
    return f"{model_name}-{role}"


def selector_labels(model_name: str, role: Role) -> dict[str, str]:
    """The labels that select one role's pods (and that the emulator, the router and the metrics use)."""
    return {MODEL_LABEL: model_name, ROLE_LABEL: role}


def owner_reference(model_name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": model_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(model_name: str, namespace: str, uid: str, role: Role) -> dict[str, Any]:
    return {
        "name": child_name(model_name, role),
        "namespace": namespace,
        "labels": {**selector_labels(model_name, role), MANAGED_BY_LABEL: MANAGED_BY},
        "ownerReferences": [owner_reference(model_name, uid)],
    }


def default_container(spec: DisaggregatedModelSpec, role: Role) -> dict[str, Any]:
    """The engine's container for a role when the spec gives no template."""
    port = ENGINE_PORT[spec.engine]
    args: list[str]
    if spec.engine is Engine.VLLM:
        kv_role = "kv_producer" if role == "prefill" else "kv_consumer"
        args = [
            "--model",
            spec.model,
            "--port",
            str(port),
            "--kv-transfer-config",
            f'{{"kv_connector":"NixlConnector","kv_role":"{kv_role}"}}',
        ]
    elif spec.engine is Engine.SGLANG:
        args = [
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            spec.model,
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--enable-metrics",
            "--disaggregation-mode",
            role,
        ]
    else:
        args = ["worker", "--role", role, "--model", spec.model, "--host", "0.0.0.0", "--port", str(port)]
        args += ["--drain-timeout-seconds", f"{spec.role(role).drain_seconds:g}"]
        if role == "decode":  # waiting sequences join timely ones first (dopd_worker.join_order)
            args += ["--tpot-slo-seconds", f"{spec.slo.tpot_seconds:g}"]
    container: dict[str, Any] = {
        "name": spec.engine.value,
        "image": _ENGINE_IMAGE[spec.engine],
        "args": args,
        "ports": [{"name": "http", "containerPort": port}],
        # Ready only once the engine answers: a rollout (maxUnavailable 0) waits for the new pod before
        # it retires an old one, and the routers only send work to Ready endpoints.
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 2},
    }
    if spec.engine is Engine.DOPD:
        # the decode worker publishes its KV-transfer address: the pod's, not loopback
        container["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    return container


def _gpu_count(container: dict[str, Any]) -> int | None:
    resources = container.get("resources") or {}
    for section in ("limits", "requests"):
        value = (resources.get(section) or {}).get(GPU_RESOURCE)
        if value is not None:
            return int(str(value))
    return None


def _drain(pod_spec: dict[str, Any], engine: dict[str, Any], drain_seconds: float) -> None:
    """A removed pod first waits PRESTOP_SECONDS (so the endpoint removal reaches the routers before the
    engine stops taking work), then gets SIGTERM, on which the engine drains; it is killed only after
    `drainSeconds` more. A template's own grace period or preStop hook is kept."""
    pod_spec.setdefault("terminationGracePeriodSeconds", math.ceil(drain_seconds) + PRESTOP_SECONDS)
    lifecycle = engine.setdefault("lifecycle", {})
    lifecycle.setdefault("preStop", {"sleep": {"seconds": PRESTOP_SECONDS}})


def pod_template(spec: DisaggregatedModelSpec, model_name: str, role: Role) -> dict[str, Any]:
    """The role's pod template: the user's (or the engine default), with dopd's labels and GPUs."""
    field = f"spec.{role}.template"
    role_spec = spec.role(role)
    template = copy.deepcopy(role_spec.template) if role_spec.template is not None else {}
    if not isinstance(template, dict):
        raise SpecError(field, "must be a pod template (an object with metadata and spec)")
    pod_spec = template.setdefault("spec", {})
    if not isinstance(pod_spec, dict):
        raise SpecError(f"{field}.spec", "must be a pod spec (an object with containers)")
    if role_spec.template is None:
        pod_spec["containers"] = [default_container(spec, role)]
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError(
            f"{field}.spec.containers", "the pod template has no containers: add the engine's container"
        )
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name") or not container.get("image"):
            raise SpecError(f"{field}.spec.containers[{index}]", "every container needs a name and an image")
    asked = [(c["name"], n) for c in containers if (n := _gpu_count(c)) is not None]
    wanted = role_spec.gpus_per_replica
    total = sum(n for _, n in asked)
    if asked and total != wanted:
        named = ", ".join(f"{name}: {n}" for name, n in asked)
        raise SpecError(
            f"spec.{role}.gpusPerReplica",
            f"is {wanted} but the template's containers request {total} {GPU_RESOURCE} ({named}): make them agree",
        )
    if not asked:
        first = containers[0]
        resources = first.setdefault("resources", {})
        resources.setdefault("limits", {})[GPU_RESOURCE] = wanted
    _drain(pod_spec, containers[0], role_spec.drain_seconds)
    metadata = template.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise SpecError(f"{field}.metadata", "must be an object")
    labels = dict(metadata.get("labels") or {})
    labels.update(selector_labels(model_name, role))
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    metadata["labels"] = labels
    return template


def deployment(
    spec: DisaggregatedModelSpec, model_name: str, namespace: str, uid: str, role: Role
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(model_name, namespace, uid, role),
        "spec": {
            "selector": {"matchLabels": selector_labels(model_name, role)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod_template(spec, model_name, role),
        },
    }


def _service_port(template: dict[str, Any], engine: Engine) -> int:
    for container in template["spec"]["containers"]:
        for port in container.get("ports") or []:
            if isinstance(port, dict) and "containerPort" in port:
                return int(port["containerPort"])
    return ENGINE_PORT[engine]


def service(
    spec: DisaggregatedModelSpec, model_name: str, namespace: str, uid: str, role: Role
) -> dict[str, Any]:
    port = _service_port(pod_template(spec, model_name, role), spec.engine)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(model_name, namespace, uid, role),
        "spec": {
            "selector": selector_labels(model_name, role),
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(model_name: str, namespace: str, uid: str, role: Role) -> dict[str, Any]:
    """Voluntary evictions (node drains) take one pod of a role at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(model_name, namespace, uid, role),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(model_name, role)}},
    }


def children(spec: DisaggregatedModelSpec, model_name: str, namespace: str, uid: str) -> list[dict[str, Any]]:
    """Every child of one model, in apply order (Deployments first: they are what users wait for)."""
    if len(model_name) > MAX_MODEL_NAME_LENGTH:
        raise SpecError(
            "metadata.name",
            f"is {len(model_name)} characters; at most {MAX_MODEL_NAME_LENGTH} leave room for the "
            "'-prefill'/'-decode' Service names (63 at most): choose a shorter name",
        )
    roles: tuple[Role, Role] = ("prefill", "decode")
    return [
        *(deployment(spec, model_name, namespace, uid, role) for role in roles),
        *(service(spec, model_name, namespace, uid, role) for role in roles),
        *(pod_disruption_budget(model_name, namespace, uid, role) for role in roles),
    ]
