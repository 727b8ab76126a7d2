"""What an SRE checks before trusting an autoscaler with GPUs, part 3: who it is and how many of it run.

- Least privilege: the operator runs with a ServiceAccount token bound to exactly the RBAC the Helm
  chart ships (rendered by the real Helm, applied to the real API server) and does its whole job; it
  cannot read Secrets; it never takes over a Deployment it does not own; a missing permission fails
  with a message naming the rule.
- High availability: two operator processes with Kopf peering; the one there first acts, alone (a
  newcomer does not take over); when it is killed the other takes over within a bounded time, and no
  tick is acted on twice.
- Its own observability: /metrics families and JSON logs carrying the model and the tick.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster
from dopd_e2e.operator import (
    REPO,
    OperatorProcess,
    get_json,
    patch_dm,
    serviceaccount_kubeconfig,
    wait_until,
)
from dopd_e2e.scenario import Scenario, model, scenario, write_trace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHART = REPO / "charts" / "dopd"
PEERING_CRDS = CHART / "crds" / "kopf.dev_peerings.yaml"
# Kopf's peering lifetime (handlers.PEERING_LIFETIME_SECONDS) + one interval + watch reconnection slack:
# the documented bound on a takeover (docs/operations.md, "High availability").
TAKEOVER_BOUND_SECONDS = 45.0


@pytest.fixture
def s(k8s_cluster: Cluster, prometheus_factory: Any, tmp_path: Path) -> Iterator[Scenario]:
    with scenario(k8s_cluster, prometheus_factory, tmp_path, emulators=1, prefix="sec") as found:
        yield found


def _chart_rbac(cluster: Cluster, release_namespace: str, watched: str) -> str:
    """The chart's ServiceAccount and RBAC for one watched namespace, as Helm renders them."""
    return cluster.helm(
        "template",
        "dopd",
        str(CHART),
        "--namespace",
        release_namespace,
        "--set",
        "prometheus.url=http://prometheus.invalid:9090",
        "--set",
        f"watchNamespaces={{{watched}}}",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ).stdout


def _scale_times(s: Scenario, name: str, role: str) -> list[datetime]:
    return sorted(
        datetime.fromisoformat(str(e.get("lastTimestamp") or e.get("eventTime")).replace("Z", "+00:00"))
        for e in s.events(name)
        if e.get("reason") in ("ScaledUp", "ScaledDown") and str(e.get("message")).startswith(f"{role} ")
    )


def test_the_operator_does_its_job_with_exactly_the_charts_rbac_and_no_more(
    s: Scenario, tmp_path: Path
) -> None:
    ops = f"ops-{uuid.uuid4().hex[:6]}"
    s.cluster.kubectl("create", "namespace", ops)
    try:
        s.cluster.kubectl("apply", "-f", "-", input=_chart_rbac(s.cluster, ops, s.namespace))
        kubeconfig = serviceaccount_kubeconfig(s.cluster, ops, "dopd", tmp_path)
        who = f"system:serviceaccount:{ops}:dopd"
        for verb, resource in (("get", "secrets"), ("list", "secrets"), ("delete", "deployments")):
            answer = s.cluster.kubectl(
                "auth", "can-i", verb, resource, "-n", s.namespace, "--as", who, check=False
            )
            assert answer.stdout.strip() == "no", f"the chart's RBAC must not allow {verb} {resource}"

        # a Deployment that is not the model's, under the name its decode child would take
        foreign = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "taken-decode", "namespace": s.namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "theirs"}},
                "template": {
                    "metadata": {"labels": {"app": "theirs"}},
                    "spec": {"containers": [{"name": "c", "image": "theirs:1"}]},
                },
            },
        }
        s.apply(foreign)
        operator = s.start_operator(kubeconfig=kubeconfig)

        doc = model("scoped", s.namespace)
        s.apply(doc)
        s.wait_children("scoped")
        s.emulate(
            doc, write_trace(tmp_path / "scoped.csv", [(40, 900)], isl=100, osl=700, seed=21), at_end="loop"
        )
        wait_until(lambda: s.replicas("scoped")[1] >= 2, 120, "the least-privileged operator to scale decode")
        status = s.dm("scoped")["status"]
        assert s.condition("scoped", "MetricsHealthy")["status"] == "True", status

        s.apply(model("taken", s.namespace))
        refused = s.wait_condition(
            "taken",
            "SpecValid",
            "False",
            30,
            "SpecValid=False for a child name taken by a foreign Deployment",
        )
        assert "a Deployment named taken-decode already exists" in refused["message"], refused
        theirs = get_json(s.cluster, "-n", s.namespace, "get", "deployment", "taken-decode")
        assert theirs["spec"]["template"]["spec"]["containers"][0]["image"] == "theirs:1"
        assert not theirs["metadata"].get("ownerReferences")

        # take one permission away: the failure names the missing rule
        role = yaml.safe_load(
            s.cluster.kubectl("-n", s.namespace, "get", "role", "dopd", "-o", "yaml").stdout
        )
        role["rules"] = [r for r in role["rules"] if "deployments/scale" not in r["resources"]]
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            role["metadata"].pop(key, None)
        s.cluster.kubectl("replace", "-f", "-", input=yaml.safe_dump(role))
        patch_dm(s.cluster, s.namespace, "scoped", {"spec": {"decode": {"minReplicas": 6}}})
        failed = wait_until(
            lambda: [e for e in s.events("scoped") if e.get("reason") == "ScaleFailed"],
            60,
            "a ScaleFailed event once deployments/scale is forbidden",
        )
        assert "needs RBAC 'patch deployments/scale.apps'" in failed[0]["message"], failed[0]["message"]
        active = s.condition("scoped", "ScalingActive")
        assert active is not None and active["reason"] == "ScaleFailed"
        assert operator.alive()
    finally:
        s.cluster.kubectl("delete", "namespace", ops, "--wait=false", check=False)
        s.cluster.kubectl(
            "delete", "clusterrole,clusterrolebinding", "dopd", "--ignore-not-found", check=False
        )


def test_two_replicas_one_acts_the_other_takes_over_when_it_dies(s: Scenario, tmp_path: Path) -> None:
    s.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRDS))
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        s.cluster.wait_crd_established(crd)
    s.apply(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering",
            "metadata": {"name": "dopd", "namespace": s.namespace},
        }
    )
    first = s.start_operator(standalone=False, peering="dopd")
    second = s.start_operator(standalone=False, peering="dopd")

    def priority(operator: OperatorProcess) -> int:
        started = [str(r.get("message")) for r in operator.log_records()]
        found = [re.search(r"peering dopd \(priority (\d+)\)", m) for m in started]
        return next(int(m.group(1)) for m in found if m)

    def in_the_peering() -> int:
        status = get_json(s.cluster, "-n", s.namespace, "get", "kopfpeering", "dopd").get("status") or {}
        return len(status)

    wait_until(lambda: in_the_peering() >= 2, 60, "both replicas in the peering")
    # The replica that was there first outranks the newcomer (`cli_run.peering_priority`): the newcomer
    # pauses from its start and the first acts throughout, with no handover to whichever drew higher.
    assert priority(first) > priority(second)
    doc = model("ha", s.namespace)
    s.apply(doc)
    s.wait_children("ha")
    s.emulate(
        doc, write_trace(tmp_path / "ha.csv", [(20, 40), (60, 900)], isl=100, osl=700, seed=22), at_end="loop"
    )
    wait_until(lambda: s.replicas("ha")[1] >= 2, 120, "the active replica to scale decode")

    def deciders() -> set[int]:
        return {
            index
            for index, operator in enumerate((first, second))
            for record in operator.log_records()
            if record.get("model") == f"{s.namespace}/ha" and record.get("tick") is not None
        }

    time.sleep(10)
    acting = deciders()
    assert acting == {0}, f"the first replica acts, alone; ticked: {acting}"
    active, standby = first, second
    ticks_before = sum(1 for r in standby.log_records() if r.get("tick") is not None)
    assert ticks_before == 0

    active.kill()
    killed = time.monotonic()
    wait_until(
        lambda: any(r.get("tick") is not None for r in standby.log_records()),
        TAKEOVER_BOUND_SECONDS + 15,
        "the standby replica to take over",
    )
    took = time.monotonic() - killed
    assert took <= TAKEOVER_BOUND_SECONDS, f"takeover took {took:.0f}s"
    # the load keeps growing after the takeover, and the survivor acts on it
    wait_until(lambda: s.replicas("ha")[1] >= 3, 120, "the survivor to keep scaling")
    for role in ("prefill", "decode"):
        times = _scale_times(s, "ha", role)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(g >= 4.0 for g in gaps), f"two {role} scale actions inside one 5 s interval: {gaps}"
    assert not s.operator_errors(), s.operator_errors()[:3]


def test_the_operator_exposes_its_own_metrics_and_structured_logs(s: Scenario, tmp_path: Path) -> None:
    operator = s.start_operator()
    doc = model("observed", s.namespace)
    s.apply(doc)
    s.wait_children("observed")
    s.emulate(
        doc, write_trace(tmp_path / "observed.csv", [(40, 900)], isl=100, osl=700, seed=23), at_end="loop"
    )
    wait_until(lambda: s.replicas("observed")[1] >= 2, 120, "a scale-up")
    text = operator.metrics_text()
    for family in (
        'dopd_operator_ticks_total{outcome="planned"}',
        "dopd_operator_tick_duration_seconds_bucket",
        'dopd_operator_scale_actions_total{direction="up",role="decode"}',
        "dopd_operator_forecast_fit_seconds_count",
        'dopd_operator_decisions_total{changed="true"}',
        'dopd_operator_models{condition="MetricsHealthy",status="True"}',
    ):
        assert family in text, f"{family} missing from the operator's /metrics"
    records = [r for r in operator.log_records() if r.get("model") == f"{s.namespace}/observed"]
    assert records and all(
        isinstance(r.get("tick"), int) and r.get("time") and r.get("level") for r in records
    )
    assert any("decided" in str(r.get("message")) for r in records)
