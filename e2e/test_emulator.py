"""The engine emulator against the real parts: its replicas follow the Ready pods of Deployments labelled as
the operator labels its children (real API server, KWOK GPU nodes), and a real Prometheus scraping it
sees the load per replica and the latency move when the decode Deployment is scaled with kubectl."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster
from dopd_e2e.prometheus import Prometheus
from dopd_emulator.config import ClusterReplicas, EmulatorConfig, TraceLoad
from dopd_emulator.emulator import Emulator
from dopd_operator.api import DisaggregatedModelSpec

pytestmark = pytest.mark.e2e

NAME = "llama"


def eventually(what: str, check: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"emu-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    eventually(  # pods need the namespace's default ServiceAccount, made by the controller-manager
        "the default ServiceAccount",
        lambda: k8s_cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
    )
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(role: str, replicas: int) -> str:
    """A role's Deployment as the operator makes it: its pods labelled dopd.io/model and dopd.io/role,
    one nvidia.com/gpu each (placed on KWOK's fake GPU nodes, which mark them Ready)."""
    labels = {"dopd.io/model": NAME, "dopd.io/role": role}
    gpu = {"nvidia.com/gpu": "1"}
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"{NAME}-{role}", "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "engine",
                                "image": "registry.k8s.io/pause:3.10",
                                "resources": {"requests": gpu, "limits": gpu},
                            }
                        ]
                    },
                },
            },
        }
    )


def ready_pods(cluster: Cluster, ns: str, role: str) -> list[str]:
    listing = json.loads(
        cluster.kubectl(
            "-n", ns, "get", "pods", "-l", f"dopd.io/model={NAME},dopd.io/role={role}", "-o", "json"
        ).stdout
    )
    return sorted(
        p["metadata"]["name"]
        for p in listing["items"]
        if "deletionTimestamp" not in p["metadata"]
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    )


def scalar(prom: Prometheus, promql: str) -> float | None:
    result: list[dict[str, Any]] = prom.query(promql)
    return float(result[0]["value"][1]) if result else None


def test_the_emulator_follows_the_ready_pods_and_prometheus_sees_scaling_move_the_load(
    k8s_cluster: Cluster, prometheus_factory: Callable[..., Prometheus], namespace: str
) -> None:
    ns = namespace
    for role, replicas in (("prefill", 2), ("decode", 1)):
        k8s_cluster.kubectl("-n", ns, "apply", "-f", "-", input=deployment(role, replicas))
    eventually("2 prefill and 1 decode pods Ready", lambda: [len(ready_pods(k8s_cluster, ns, r)) for r in ("prefill", "decode")] == [2, 1])  # fmt: skip

    spec = DisaggregatedModelSpec.model_validate(
        {"engine": "vllm", "model": "m", "profile": {"preset": "llama3-8b-h100"}}
    )
    config = EmulatorConfig(
        namespace=ns,
        name=NAME,
        spec=spec,
        # 25 rps of Azure-like requests: one Llama-3-8B/H100 decode replica holds ~52 sequences.
        load=TraceLoad(trace="synthetic:poisson,rate_rps=25,duration_s=900", seed=1),
        replicas=ClusterReplicas(kubeconfig=str(k8s_cluster.kubeconfig), poll_seconds=0.5),
    )
    with Emulator(config) as emulator:
        prom = prometheus_factory([f"127.0.0.1:{emulator.port}"])
        prom.wait_targets_up()

        def following() -> bool:
            ready = emulator.truth().ready
            return all(ready[r] == ready_pods(k8s_cluster, ns, r) for r in ("prefill", "decode"))

        selector = f'namespace="{ns}",role="decode"'
        running = f'avg({{__name__=~"vllm[:_]num_requests_running",{selector}}})'
        pods = f'count({{__name__=~"vllm[:_]num_requests_running",{selector}}})'
        itl = (
            f'sum(rate({{__name__=~"vllm[:_]inter_token_latency_seconds_sum",{selector}}}[10s])) / '
            f'sum(rate({{__name__=~"vllm[:_]inter_token_latency_seconds_count",{selector}}}[10s]))'
        )

        def settled(threshold: Callable[[float], bool], query: str = running) -> Callable[[], bool]:
            def check() -> bool:
                value = scalar(prom, query)
                return value is not None and threshold(value)

            return check

        assert following()
        eventually("one busy decode replica", settled(lambda v: v > 40))
        eventually("a full inter-token window", lambda: scalar(prom, itl) is not None)
        one_replica_itl = scalar(prom, itl)
        assert one_replica_itl is not None and one_replica_itl > 0.0095  # ~10.9 ms at ~52 sequences

        k8s_cluster.kubectl("-n", ns, "scale", f"deployment/{NAME}-decode", "--replicas=4")
        eventually("the emulator to follow 4 Ready decode pods", lambda: following() and len(emulator.truth().ready["decode"]) == 4)  # fmt: skip
        eventually("4 decode pods in Prometheus", settled(lambda v: v == 4, pods))
        eventually("the load spread over them", settled(lambda v: v < 20))  # ~10 each
        eventually("shorter steps", settled(lambda v: v < 0.9 * one_replica_itl, itl))  # ~7.9 ms

        k8s_cluster.kubectl("-n", ns, "scale", f"deployment/{NAME}-decode", "--replicas=1")
        eventually("the emulator to follow 1 Ready decode pod", lambda: following() and len(emulator.truth().ready["decode"]) == 1)  # fmt: skip
        # The pods that went away drain their sequences; then their series vanish (stale in Prometheus).
        eventually("the drained pods' series to vanish", settled(lambda v: v == 1, pods), timeout_s=120)
        assert emulator.truth().draining["decode"] == []
        eventually("one busy decode replica again", settled(lambda v: v > 40))
        assert emulator.failure is None
