"""The operator's writes to the Kubernetes API: server-side apply of children, the scale subresource,
the status subresource. Blocking (the official `kubernetes` client); the controller calls every method
through `asyncio.to_thread`, so the event loop never waits on the API server.

Reads come from Kopf's watch-fed indexes instead (`cluster_state.py`): a tick costs no GET.
Every API failure becomes an `ActuationError` whose message names the verb, the object and, for a
403, the RBAC rule the operator's ServiceAccount lacks.
Callers: `controller.loop`, `controller.handlers`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dopd_operator.api import GROUP, PLURAL, VERSION, DisaggregatedModelStatus
from dopd_operator.errors import ActuationError

FIELD_MANAGER = "dopd"  # owns the children's applied fields
SCALE_FIELD_MANAGER = "dopd-scaler"  # owns spec.replicas through the scale subresource
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

_T = TypeVar("_T")

_RESOURCE = {
    "Deployment": ("apps", "deployments"),
    "Service": ("", "services"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
}


def _rule(verb: str, group: str, resource: str) -> str:
    return f"{verb} {resource}{'.' + group if group else ''}"


def _error(describe: str, verb: str, group: str, resource: str, exc: ApiException) -> ActuationError:
    detail = _reason(exc)
    if exc.status == 403:
        return ActuationError(
            f"{describe}: forbidden: the operator's ServiceAccount needs RBAC '{_rule(verb, group, resource)}' "
            f"(install the chart's ClusterRole or Role); API server said: {detail}"
        )
    return ActuationError(f"{describe}: HTTP {exc.status}: {detail}")


def _call(describe: str, verb: str, group: str, resource: str, call: Callable[[], _T]) -> _T:
    """Run one API request; an ApiException becomes an ActuationError naming what and, for 403, the rule."""
    try:
        return call()
    except ApiException as exc:
        raise _error(describe, verb, group, resource, exc) from None


def _reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    return str(body.get("message") or exc.reason)


def merge_patch_body(value: Any, in_list: bool = False) -> Any:
    """A JSON merge patch that replaces what it names: in objects a None stays null (merge patch deletes
    the field, so a value that became unknown does not linger), inside list items (which a merge patch
    replaces whole) None fields are dropped, since the schema does not allow nulls there."""
    if isinstance(value, dict):
        return {k: merge_patch_body(v, in_list) for k, v in value.items() if not (in_list and v is None)}
    if isinstance(value, list):
        return [merge_patch_body(item, True) for item in value]
    return value


class KubeWriter:
    """Writes through one ApiClient (the operator's ServiceAccount or kubeconfig)."""

    def __init__(
        self, api_client: client.ApiClient, on_request: Callable[[str, str], None] | None = None
    ) -> None:
        self._on_request = on_request  # (verb, resource) of each request, for the operator's metrics
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _count(self, verb: str, resource: str) -> None:
        if self._on_request is not None:
            self._on_request(verb, resource)

    def controller_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The uid in the controller owner reference of an existing child-named object; "" when it exists
        without one, None when it does not exist."""
        group, resource = _RESOURCE[kind]
        readers: dict[str, Callable[..., Any]] = {
            "Deployment": self.apps.read_namespaced_deployment,
            "Service": self.core.read_namespaced_service,
            "PodDisruptionBudget": self.policy.read_namespaced_pod_disruption_budget,
        }
        self._count("get", resource)
        try:
            found = readers[kind](name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(f"read {kind} {namespace}/{name}", "get", group, resource, exc) from None
        for ref in found.metadata.owner_references or []:
            if ref.controller:
                return str(ref.uid)
        return ""

    def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply one child under the `dopd` field manager (force: dopd owns these fields)."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        group, resource = _RESOURCE[kind]
        patchers: dict[str, Callable[..., Any]] = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget,
        }
        patch = patchers[kind]
        self._count("apply", resource)
        _call(
            f"apply {kind} {namespace}/{name}",
            "patch",
            group,
            resource,
            lambda: patch(
                name, namespace, manifest, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY
            ),
        )

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's replicas through its scale subresource."""
        self._count("patch", "deployments/scale")
        _call(
            f"scale Deployment {namespace}/{name} to {replicas}",
            "patch",
            "apps",
            "deployments/scale",
            lambda: self.apps.patch_namespaced_deployment_scale(
                name,
                namespace,
                {"spec": {"replicas": replicas}},
                field_manager=SCALE_FIELD_MANAGER,
                _content_type=MERGE,
            ),
        )

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        """Set (or, with None, remove) annotations of one pod."""
        self._count("patch", "pods")
        _call(
            f"annotate Pod {namespace}/{name}",
            "patch",
            "",
            "pods",
            lambda: self.core.patch_namespaced_pod(
                name, namespace, {"metadata": {"annotations": annotations}}, _content_type=MERGE
            ),
        )

    def write_status(self, namespace: str, name: str, status: DisaggregatedModelStatus) -> None:
        """Replace what dopd writes in the status (a merge patch; nulls remove fields gone since)."""
        body = {"status": merge_patch_body(status.model_dump(mode="json", by_alias=True))}
        self._count("patch", f"{PLURAL}/status")
        _call(
            f"update status of DisaggregatedModel {namespace}/{name}",
            "patch",
            GROUP,
            f"{PLURAL}/status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE
            ),
        )
