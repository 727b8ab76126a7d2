"""What an SRE checks before trusting an autoscaler with GPUs, part 2: the cluster around it.

- GPU capacity: pods the scheduler cannot place (not enough `nvidia.com/gpu` on the KWOK nodes) are not
  capacity; the model reports CapacityBlocked with the deficit in GPUs, stops piling on, and recovers
  when GPU nodes are added. The startup time is learned from the pods.
- Conflicts: a real HorizontalPodAutoscaler (the controller-manager runs the HPA controller) and a real
  `kubectl scale` are detected, reported, and never fought.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import CLUSTER_DIR, Cluster
from dopd_e2e.operator import wait_until
from dopd_e2e.scenario import Scenario, model, scenario, write_trace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def s(k8s_cluster: Cluster, prometheus_factory: Any, tmp_path: Path) -> Iterator[Scenario]:
    with scenario(k8s_cluster, prometheus_factory, tmp_path, emulators=1, prefix="cluster") as found:
        found.start_operator()
        yield found
        assert not found.operator_errors(), f"the operator logged errors: {found.operator_errors()[:3]}"


def _reasons(s: Scenario, name: str) -> list[str]:
    return [str(e.get("reason")) for e in s.events(name)]


def _free_gpus(cluster: Cluster) -> int:
    nodes = yaml.safe_load(cluster.kubectl("get", "nodes", "-o", "yaml").stdout)["items"]
    pods = yaml.safe_load(cluster.kubectl("get", "pods", "-A", "-o", "yaml").stdout)["items"]
    total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in nodes)
    used = sum(
        int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for p in pods
        if p["spec"].get("nodeName") and p["status"].get("phase") in ("Pending", "Running")
        for c in p["spec"]["containers"]
    )
    return total - used


@pytest.fixture
def extra_nodes(k8s_cluster: Cluster) -> Iterator[list[str]]:
    added: list[str] = []
    yield added
    for name in added:
        k8s_cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def _add_gpu_node(cluster: Cluster, name: str, gpus: int) -> None:
    template = (CLUSTER_DIR / "kwok" / "gpu-node.yaml.in").read_text()
    cluster.kubectl(
        "apply", "-f", "-", input=template.replace("__NAME__", name).replace("__GPUS__", str(gpus))
    )


def test_unschedulable_pods_block_scaling_report_the_gpu_deficit_and_recover_with_more_nodes(
    s: Scenario, tmp_path: Path, extra_nodes: list[str]
) -> None:
    free = _free_gpus(s.cluster)
    # decode pods of 8 GPUs each: 6 of them need more GPUs than the cluster has free
    assert free < 6 * 8 + 1, f"the test needs a cluster with fewer than 49 free GPUs, it has {free}"
    doc = model("big", s.namespace, decode={"gpusPerReplica": 8, "maxReplicas": 6, "minReplicas": 1})
    s.apply(doc)
    s.wait_children("big")
    s.emulate(doc, write_trace(tmp_path / "big.csv", [(90, 900)], isl=100, osl=700, seed=11), at_end="loop")
    blocked = s.wait_condition(
        "big", "CapacityBlocked", "True", 150, "CapacityBlocked=True once decode pods cannot be placed"
    )
    assert "decode pod(s) cannot be scheduled: the cluster is" in blocked["message"], blocked["message"]
    assert "nvidia.com/gpu short" in blocked["message"]
    s.wait_event("big", "CapacityBlocked")
    assert _reasons(s, "big").count("CapacityBlocked") == 1
    status = s.dm("big")["status"]
    assert status["decode"]["unschedulable"] >= 1
    # while pods are pending, dopd does not pile on more replicas
    stuck = {s.replicas("big")[1]}
    for _ in range(6):
        time.sleep(2)
        stuck.add(s.replicas("big")[1])
    assert len(stuck) == 1, f"decode replicas kept growing while pods were unschedulable: {sorted(stuck)}"
    # Ready pods taught dopd the startup time (KWOK's pods start in about a second, the spec says 10 s)
    learned = s.dm("big")["status"]["prefill"].get("startupSeconds") or s.dm("big")["status"]["decode"].get(
        "startupSeconds"
    )
    assert learned is not None and learned < 10, s.dm("big")["status"]

    deficit = int(blocked["message"].split("the cluster is ")[1].split(" ")[0])
    for index in range((deficit + 7) // 8 + 1):
        name = f"gpu-node-extra-{index}"
        _add_gpu_node(s.cluster, name, 8)
        extra_nodes.append(name)
    s.wait_condition("big", "CapacityBlocked", "False", 120, "CapacityBlocked=False once GPU nodes are added")
    assert s.dm("big")["status"]["decode"]["unschedulable"] == 0


def test_an_hpa_on_a_pool_is_reported_and_never_fought(s: Scenario, tmp_path: Path) -> None:
    doc = model("contested", s.namespace)
    s.apply(doc)
    s.wait_children("contested")
    s.emulate(
        doc, write_trace(tmp_path / "contested.csv", [(40, 900)], isl=100, osl=700, seed=12), at_end="loop"
    )
    wait_until(lambda: s.replicas("contested")[1] >= 2, 90, "dopd to scale decode under load")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "legacy-hpa", "namespace": s.namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "contested-decode"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                }
            ],
        },
    }
    s.apply(hpa)
    conflict = s.wait_condition(
        "contested", "ScalingConflict", "True", 60, "ScalingConflict=True for the HPA"
    )
    assert "HorizontalPodAutoscaler legacy-hpa scales Deployment contested-decode" in conflict["message"]
    s.wait_event("contested", "ScalingConflict")
    assert s.condition("contested", "ScalingActive")["reason"] == "ScalingConflict"
    # while the HPA exists dopd patches nothing: the replicas are whatever the HPA leaves them at
    scale_events = _reasons(s, "contested").count("ScaledUp") + _reasons(s, "contested").count("ScaledDown")
    time.sleep(15)
    assert (
        _reasons(s, "contested").count("ScaledUp") + _reasons(s, "contested").count("ScaledDown")
        == scale_events
    )
    s.cluster.kubectl("-n", s.namespace, "delete", "hpa", "legacy-hpa")
    s.wait_condition("contested", "ScalingConflict", "False", 60, "dopd to resume once the HPA is gone")


def test_a_manual_kubectl_scale_is_honoured_for_the_hold_off_then_dopd_resumes(
    s: Scenario, tmp_path: Path
) -> None:
    doc = model("manual", s.namespace)
    s.apply(doc)
    s.wait_children("manual")
    s.emulate(
        doc, write_trace(tmp_path / "manual.csv", [(40, 900)], isl=100, osl=700, seed=13), at_end="loop"
    )
    wait_until(lambda: s.replicas("manual")[1] >= 2, 90, "dopd to scale decode under load")
    time.sleep(6)
    settled = s.replicas("manual")[1]
    s.cluster.kubectl("-n", s.namespace, "scale", "deployment/manual-decode", "--replicas=7")
    scaled_at = time.monotonic()
    conflict = s.wait_condition(
        "manual", "ScalingConflict", "True", 30, "ScalingConflict=True after kubectl scale"
    )
    assert "decode Deployment's replicas were changed to 7" in conflict["message"], conflict["message"]
    # the hold-off is the 20 s scale-down window, at least 30 s: the person's 7 stands meanwhile
    while time.monotonic() - scaled_at < 25:
        assert s.replicas("manual")[1] == 7, "dopd fought a manual scale inside the hold-off"
        time.sleep(2)
    wait_until(lambda: s.replicas("manual")[1] != 7, 60, "dopd to take the replicas back after the hold-off")
    assert abs(s.replicas("manual")[1] - settled) <= 1
    assert s.condition("manual", "ScalingConflict").get("status") == "False"
