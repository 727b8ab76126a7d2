"""The router's Kubernetes discovery against a real API server: it follows the role Services' Endpoints."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster
from dopd_worker.discovery import KubernetesDiscovery, WorkerSet

pytestmark = pytest.mark.e2e


@pytest.fixture
def workers_namespace(k8s_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    name = f"disc-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def endpoints(name: str, ready: list[str], not_ready: list[str] = []) -> str:  # noqa: B006
    subset: dict[str, Any] = {"ports": [{"name": "http", "port": 8000}]}
    if ready:
        subset["addresses"] = [{"ip": ip} for ip in ready]
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name}, "subsets": [subset]}
    )


async def wait_for(seen: list[WorkerSet], expected: WorkerSet, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not seen or seen[-1] != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"discovery saw {seen[-1] if seen else None}, expected {expected}")
        await asyncio.sleep(0.1)


def test_discovery_follows_ready_endpoints_of_the_role_services(
    k8s_cluster: Cluster, workers_namespace: str
) -> None:
    ns = workers_namespace

    def apply(doc: str) -> None:
        k8s_cluster.kubectl("-n", ns, "apply", "-f", "-", input=doc)

    async def scenario() -> None:
        seen: list[WorkerSet] = []
        discovery = KubernetesDiscovery(ns, "tiny-prefill", "tiny-decode", None, "http")
        task = asyncio.create_task(discovery.run(seen.append))
        try:
            await asyncio.to_thread(apply, endpoints("tiny-prefill", ["10.1.0.1"]))
            await asyncio.to_thread(apply, endpoints("tiny-decode", ["10.1.0.2"], not_ready=["10.1.0.9"]))
            # a starting (not ready) decode pod gets no requests
            await wait_for(
                seen, WorkerSet(prefill=("http://10.1.0.1:8000",), decode=("http://10.1.0.2:8000",))
            )
            # the operator scales decode out: the new ready pod joins
            await asyncio.to_thread(apply, endpoints("tiny-decode", ["10.1.0.2", "10.1.0.3"]))
            await wait_for(
                seen,
                WorkerSet(
                    prefill=("http://10.1.0.1:8000",), decode=("http://10.1.0.2:8000", "http://10.1.0.3:8000")
                ),
            )
            # Endpoints of unrelated Services change nothing
            await asyncio.to_thread(apply, endpoints("something-else", ["10.9.9.9"]))
            # the Service goes away: its workers leave
            await asyncio.to_thread(k8s_cluster.kubectl, "-n", ns, "delete", "endpoints", "tiny-prefill")
            await wait_for(seen, WorkerSet(decode=("http://10.1.0.2:8000", "http://10.1.0.3:8000")))
        finally:
            task.cancel()

    asyncio.run(scenario())
