"""The router's Kubernetes discovery against a real API server: it follows the EndpointSlices of the role
Services, ready endpoints taking new work and terminating ones draining. The slices here are written by
the test (as a controller other than Kubernetes' own may write them); e2e/test_drain.py has the
EndpointSlice controller write them for real pods. Addresses are in 198.18.0.0/15 and never contacted.
The router runs as the ServiceAccount of examples/router/tiny-router.yaml, with exactly its Role.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster
from dopd_e2e.operator import serviceaccount_kubeconfig
from dopd_worker.discovery import KubernetesDiscovery, WorkerSet

pytestmark = pytest.mark.e2e

ROUTER_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "router" / "tiny-router.yaml"
ROUTER_ACCOUNT = "tiny-router"


@pytest.fixture
def workers_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"disc-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def endpoint_slice(name: str, service: str, endpoints: list[tuple[str, dict[str, bool]]]) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "dopd-e2e",  # not the controller's: it leaves it
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": conditions} for ip, conditions in endpoints],
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
    }
    return yaml.safe_dump(doc)


READY = {"ready": True, "serving": True, "terminating": False}
STARTING = {"ready": False, "serving": False, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}


async def wait_for(seen: list[WorkerSet], expected: WorkerSet, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not seen or seen[-1] != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"discovery saw {seen[-1] if seen else None}, expected {expected}")
        await asyncio.sleep(0.1)


def router_account(cluster: Cluster, namespace: str, work_dir: Path) -> Path:
    """The example router's ServiceAccount, Role and RoleBinding, applied in `namespace`; a kubeconfig
    with a bound token of that ServiceAccount."""
    docs = [d for d in yaml.safe_load_all(ROUTER_EXAMPLE.read_text()) if d]
    access = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    assert len(access) == 3, [d["kind"] for d in docs]
    for doc in access:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all(access))
    return serviceaccount_kubeconfig(cluster, namespace, ROUTER_ACCOUNT, work_dir)


def test_the_example_router_account_can_read_endpoint_slices_and_nothing_else(
    k8s_cluster: Cluster, workers_namespace: str, tmp_path: Path
) -> None:
    ns = workers_namespace
    router_account(k8s_cluster, ns, tmp_path)
    who = f"system:serviceaccount:{ns}:{ROUTER_ACCOUNT}"

    def can(*args: str) -> bool:
        found = k8s_cluster.kubectl("auth", "can-i", *args, f"--as={who}", check=False)
        return found.stdout.strip() == "yes"

    assert can("list", "endpointslices.discovery.k8s.io", "-n", ns)
    assert can("watch", "endpointslices.discovery.k8s.io", "-n", ns)
    for verb, resource in [
        ("create", "endpointslices.discovery.k8s.io"),
        ("list", "pods"),
        ("get", "secrets"),
        ("list", "services"),
        ("patch", "deployments.apps"),
        ("list", "disaggregatedmodels.dopd.io"),
    ]:
        assert not can(verb, resource, "-n", ns), f"the router must not {verb} {resource}"
    assert not can("list", "endpointslices.discovery.k8s.io", "-n", "default"), "its namespace only"


def test_discovery_follows_the_endpoint_slices_of_the_role_services(
    k8s_cluster: Cluster, workers_namespace: str, tmp_path: Path
) -> None:
    ns = workers_namespace
    kubeconfig = router_account(k8s_cluster, ns, tmp_path)
    p1, d1, d2, d3 = (f"http://198.18.7.{i}:8000" for i in (1, 2, 3, 9))

    def apply(doc: str) -> None:
        k8s_cluster.kubectl("-n", ns, "apply", "-f", "-", input=doc)

    async def scenario() -> None:
        seen: list[WorkerSet] = []
        discovery = KubernetesDiscovery(
            ns,
            "tiny-prefill",
            "tiny-decode",
            None,
            "http",
            watch_timeout_seconds=5,
            kubeconfig=str(kubeconfig),  # the router's own, least-privilege account
        )
        # a slice that exists before the router starts is found by the first list
        await asyncio.to_thread(
            apply, endpoint_slice("tiny-prefill-a", "tiny-prefill", [("198.18.7.1", READY)])
        )
        task = asyncio.create_task(discovery.run(seen.append))
        try:
            await asyncio.to_thread(
                apply,
                endpoint_slice(
                    "tiny-decode-a", "tiny-decode", [("198.18.7.2", READY), ("198.18.7.9", STARTING)]
                ),
            )
            # a starting (not ready) decode pod gets no requests
            await wait_for(seen, WorkerSet(prefill=(p1,), decode=(d1,)))
            # the operator scales decode out: the new ready pod, in a second slice, joins
            await asyncio.to_thread(
                apply, endpoint_slice("tiny-decode-b", "tiny-decode", [("198.18.7.3", READY)])
            )
            await wait_for(seen, WorkerSet(prefill=(p1,), decode=(d1, d2)))
            # scale-down: the victim's endpoint turns terminating (still serving while its preStop runs):
            # no new work, and the router learns it drains rather than vanished
            await asyncio.to_thread(
                apply,
                endpoint_slice(
                    "tiny-decode-a", "tiny-decode", [("198.18.7.2", TERMINATING), ("198.18.7.9", READY)]
                ),
            )
            await wait_for(seen, WorkerSet(prefill=(p1,), decode=(d2, d3), draining=(d1,)))
            # slices of unrelated Services change nothing; the watch outlives its 5 s expiry (re-list)
            await asyncio.to_thread(
                apply, endpoint_slice("other-a", "something-else", [("198.18.7.99", READY)])
            )
            await asyncio.sleep(6)
            assert seen[-1] == WorkerSet(prefill=(p1,), decode=(d2, d3), draining=(d1,))
            # the prefill Service's slice goes away: its workers leave
            await asyncio.to_thread(
                k8s_cluster.kubectl, "-n", ns, "delete", "endpointslice", "tiny-prefill-a"
            )
            await wait_for(seen, WorkerSet(decode=(d2, d3), draining=(d1,)))
        finally:
            task.cancel()

    asyncio.run(scenario())
