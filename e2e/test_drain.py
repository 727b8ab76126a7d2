"""Scale-down and rollouts that lose nothing, end to end: under steady load from the official `openai`
client, the operator (`dopd run`) scales decode 4 -> 1 and prefill 3 -> 1, then a template change rolls
both pools; no response fails or comes back short, and no KV transfer is left pending.

What is real: the API server, controller-manager (Deployments, ReplicaSets, the EndpointSlice
controller), scheduler, the operator, Prometheus, the router, and every worker (a `dopd worker` process
on the CPU with the `tiny` model, its KV transfers over gloo between pod addresses). What stands in:
KWOK for the nodes, and `dopd_e2e.kubelet` for the kubelet (it runs each pod's container command in a
network namespace holding the pod's 198.18.x address, probes readiness, runs preStop, sends SIGTERM and
enforces the grace period). docs/drain.md describes the harness.

The scale-down is driven by the spec's bounds (min = max = the target), so it happens whatever the
planner would make of the load; the operator carries it out.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster
from dopd_e2e.kubelet import KUBELET_LABEL, KUBELET_LABEL_VALUE, NetnsKubelet
from dopd_e2e.netns import NetnsUnavailable, PodNetwork
from dopd_e2e.operator import OperatorProcess, get_json, install_crd, patch_dm, start_operator, wait_until
from dopd_e2e.prometheus import Prometheus, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "tiny"
MAX_TOKENS = 16
LONG_MAX_TOKENS = 2000  # client 0's: longer than the 5 s preStop sleep, so drains find sequences running
DRAIN_SECONDS = 120  # the API default; a long request left on a victim must finish within it
LOAD_CLIENTS = 4  # each sends one kind: completion, chat, completion stream, chat stream


@pytest.fixture(scope="session")
def pod_network() -> Iterator[PodNetwork]:
    """The 198.18.0.0/15 pod network (netns.py), torn down at the end of the session, even on failure."""
    network = PodNetwork()
    try:
        network.up()
    except NetnsUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    atexit.register(network.down)  # an interrupted session too
    try:
        yield network
    finally:
        network.down()


def _role(role: str, replicas: int) -> dict[str, Any]:
    args = ["worker", "--role", role, "--model", MODEL, "--host", "0.0.0.0", "--port", "8000"]
    args += ["--kv-host", "$(POD_IP)", "--kv-cache-tokens", "8192", "--transfer-timeout-seconds", "10"]
    args += ["--drain-timeout-seconds", str(DRAIN_SECONDS), "--log-level", "info"]
    return {
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "startupSeconds": 20,
        "drainSeconds": DRAIN_SECONDS,
        "template": {
            "metadata": {"labels": {KUBELET_LABEL: KUBELET_LABEL_VALUE}},
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "image": "ghcr.io/dopd/worker:0.1.0",
                        "args": args,
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "OMP_NUM_THREADS", "value": "1"},
                        ],
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "readinessProbe": {
                            "httpGet": {"path": "/health", "port": "http"},
                            "periodSeconds": 1,
                        },
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ]
            },
        },
    }


def _model(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": MODEL, "namespace": namespace},
        "spec": {
            "engine": "dopd",
            "model": MODEL,
            "prefill": _role("prefill", 3),
            "decode": _role("decode", 4),
            "slo": {"ttftSeconds": 2.0, "tpotSeconds": 0.2},
            "scaling": {
                "intervalSeconds": 5,
                "gpuBudget": 16,
                "scaleUp": {"maxStepReplicas": 8},
                "scaleDown": {"stabilizationSeconds": 0, "maxStepReplicas": 8, "maxStepPercent": 100},
            },
            "forecast": {"model": "none"},
            "metrics": {"windowSeconds": 15, "selector": {"model": MODEL}},
            "profile": {
                "inline": {
                    "prefill": {"aSeconds": 0.004, "bSecondsPerToken": 0.00002, "cSecondsPerToken2": 0.0},
                    "decode": {
                        "aSeconds": 0.003,
                        "bSecondsPerContextToken": 1e-7,
                        "cSecondsPerSequence": 0.0002,
                    },
                    "kvCapacityTokens": 8192,
                    "maxBatchSize": 64,
                    "kvBytesPerToken": 4096,
                    "kvTransferBytesPerSecond": 1.0e9,
                }
            },
        },
    }


def _scrape_config(targets_file: Path, namespace: str, router_port: int) -> dict[str, Any]:
    """Prometheus scrapes the pods the harness runs (its file_sd file: what Kubernetes service discovery
    would find, which Debian's Prometheus lacks) and the router."""
    return {
        "scrape_configs": [
            {
                "job_name": "dopd-pods",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            },
            {
                "job_name": "dopd-router",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{router_port}"], "labels": {"namespace": namespace}}
                ],
            },
        ]
    }


@dataclass
class Outcome:
    started_seconds: float
    kind: str  # completion | chat, streamed or not
    ok: bool
    detail: str
    seconds: float = field(default=0.0)


@dataclass
class Load:
    """LOAD_CLIENTS loops of the official openai client against the router, until `stop` (bounded)."""

    base_url: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    max_requests_per_client: int = 5000

    async def _one(self, client: Any, i: int) -> Outcome:
        import openai

        started = time.monotonic()
        chat, stream = i % 2 == 1, (i // 2) % 2 == 1
        kind = f"{'chat' if chat else 'completion'}{' stream' if stream else ''}"
        max_tokens = LONG_MAX_TOKENS if i % LOAD_CLIENTS == 0 else MAX_TOKENS
        extra = {"ignore_eos": True}
        try:
            if chat:
                call = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"request {i}: " + "tell me more " * (i % 7)}],
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=stream,
                    extra_body=extra,
                )
            else:
                call = client.completions.create(
                    model=MODEL,
                    prompt=f"request {i}: " + "lorem ipsum " * (i % 9),
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=stream,
                    extra_body=extra,
                )
            response = await call
            if stream:
                finish = None
                async for chunk in response:
                    if chunk.choices:
                        finish = chunk.choices[0].finish_reason or finish
                # a stream cut short never says "length": the router only forwards the decode's own end
                return Outcome(started, kind, finish == "length", f"finish_reason {finish}")
            tokens, finish = response.usage.completion_tokens, response.choices[0].finish_reason
            return Outcome(
                started, kind, tokens == max_tokens and finish == "length", f"{tokens} tokens, {finish}"
            )
        except openai.APIError as exc:
            return Outcome(started, kind, False, f"{type(exc).__name__}: {exc}")

    async def _client_loop(self, index: int) -> None:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=120)
        for n in range(self.max_requests_per_client):
            if self.stop.is_set():
                break
            outcome = await self._one(client, index + LOAD_CLIENTS * n)
            outcome.seconds = time.monotonic() - outcome.started_seconds
            self.outcomes.append(outcome)
        await client.close()

    def run(self) -> None:
        async def main() -> None:
            await asyncio.gather(*(self._client_loop(i) for i in range(LOAD_CLIENTS)))

        asyncio.run(main())

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.started_seconds < end]


@dataclass
class Harness:
    cluster: Cluster
    namespace: str
    kubelet: NetnsKubelet
    prometheus: Prometheus
    operator: OperatorProcess
    router: subprocess.Popen[bytes]
    router_url: str
    router_log: Path


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def h(
    k8s_cluster: Cluster,
    pod_network: PodNetwork,
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> Iterator[Harness]:
    install_crd(k8s_cluster)
    namespace = f"drain-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", namespace)
    kubelet = NetnsKubelet(k8s_cluster.kubeconfig, namespace, pod_network, tmp_path)
    kubelet.start()
    router_port = free_port()
    prometheus = prometheus_factory(
        {},
        extra_config=_scrape_config(kubelet.scrape_targets_path, namespace, router_port),
        scrape_interval="1s",
    )
    operator = start_operator(
        k8s_cluster, prometheus.url, namespaces=[namespace], env={"DOPD_SCRAPE_INTERVAL_SECONDS": "1"}
    )
    router_log = tmp_path / "router.log"
    router_args = [
        *("-m", "dopd_worker", "router", "--model", MODEL, "--host", "127.0.0.1", "--port", str(router_port)),
        *("--k8s-namespace", namespace, "--k8s-prefill-service", f"{MODEL}-prefill"),
        *("--k8s-decode-service", f"{MODEL}-decode", "--max-retries", "1", "--log-level", "info"),
    ]
    router = subprocess.Popen(
        [sys.executable, *router_args],
        env=k8s_cluster.run_env(),
        stdout=router_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield Harness(
            k8s_cluster,
            namespace,
            kubelet,
            prometheus,
            operator,
            router,
            f"http://127.0.0.1:{router_port}",
            router_log,
        )
    finally:
        router.kill()
        router.wait(timeout=30)
        operator.stop()
        kubelet.stop()
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _deployment(h: Harness, role: str) -> dict[str, Any]:
    return dict(get_json(h.cluster, "-n", h.namespace, "get", "deployment", f"{MODEL}-{role}"))


def _settled(h: Harness, prefill: int, decode: int) -> bool:
    """Both Deployments at their counts, rolled out, and exactly that many processes serving."""
    for role, want in (("prefill", prefill), ("decode", decode)):
        dep = _deployment(h, role)
        status = dep.get("status") or {}
        if (
            dep["spec"].get("replicas") != want
            or status.get("observedGeneration") != dep["metadata"]["generation"]
            or status.get("updatedReplicas") != want
            or status.get("readyReplicas") != want
            or status.get("replicas") != want  # no old or surplus pod left
            or len(h.kubelet.running(role)) != want
        ):
            return False
    if h.kubelet.terminating():
        return False
    workers = _json(f"{h.router_url}/workers")
    usable = [u for u, w in workers.items() if w["present"] and w["healthy"]]
    return len(usable) == prefill + decode


def _router_health(h: Harness) -> bool:
    try:
        return bool(_json(f"{h.router_url}/health")["status"] == "ok")
    except OSError:
        return False


def test_scale_down_and_rollout_under_load_lose_nothing(h: Harness) -> None:
    h.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_model(h.namespace)))
    wait_until(lambda: _router_health(h), 60, "the router")
    wait_until(lambda: _settled(h, 3, 4), 300, "3 prefill + 4 decode workers serving", interval_s=1.0)
    assert not h.kubelet.errors, h.kubelet.errors

    load = Load(f"{h.router_url}/v1")
    loader = threading.Thread(target=load.run, name="openai-load", daemon=True)
    loader.start()
    try:
        wait_until(lambda: len(load.outcomes) >= 40, 120, "steady load")
        t_scale = time.monotonic()
        patch_dm(
            h.cluster,
            h.namespace,
            MODEL,
            {
                "spec": {
                    "prefill": {"minReplicas": 1, "maxReplicas": 1},
                    "decode": {"minReplicas": 1, "maxReplicas": 1},
                }
            },
        )
        wait_until(lambda: _settled(h, 1, 1), 240, "the operator's scale-down to 1 + 1", interval_s=1.0)
        t_scaled = time.monotonic()
        scaled_down = h.kubelet.finished()
        assert sorted(r.role for r in scaled_down) == ["decode"] * 3 + ["prefill"] * 2

        rollout = {"template": {"metadata": {"annotations": {"e2e.dopd.io/rollout": "2"}}}}
        patch_dm(h.cluster, h.namespace, MODEL, {"spec": {"prefill": rollout, "decode": rollout}})
        wait_until(
            lambda: len(h.kubelet.finished()) == 7 and _settled(h, 1, 1),
            300,
            "both pools rolled",
            interval_s=1.0,
        )
        t_rolled = time.monotonic()
        settled_count = len(load.outcomes)
        wait_until(lambda: len(load.outcomes) >= settled_count + 20, 120, "load on the rolled pools")
    finally:
        load.stop.set()
        loader.join(timeout=180)

    # Zero failed or truncated responses, and the load really ran through each change.
    failed = [o for o in load.outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {len(load.outcomes)} failed: {failed[:5]}"
    assert len(load.between(t_scale, t_scaled)) >= 10, "load during the scale-down"
    assert len(load.between(t_scaled, t_rolled)) >= 10, "load during the rollout"
    assert {o.kind for o in load.outcomes} == {"completion", "completion stream", "chat", "chat stream"}

    # Every removed pod drained: SIGTERM after its preStop, exit 0 well within the grace period, with
    # nothing left pending (prefill: every KV transfer acknowledged by its decode peer).
    finished = h.kubelet.finished()
    longest = max(o.seconds for o in load.outcomes)
    print(f"\n{len(load.outcomes)} requests, longest {longest:.1f}s; drains (pod, exit, summary):")
    for run in finished:
        print(f"  {run.name} {run.exit_code} {run.drain_summary()}")
    assert len(finished) == 7
    for run in finished:
        summary = run.drain_summary()
        assert run.exit_code == 0 and not run.killed_at_grace_end, (
            run.name,
            run.exit_code,
            run.log()[-3000:],
        )
        assert summary is not None and summary["aborted"] == 0, (run.name, summary)
        assert summary["kv_transfers_pending"] == 0, (run.name, summary)
        if run.role == "prefill":
            assert summary["kv_transfers_unconfirmed"] == 0 and summary["kv_transfers_failed"] == 0, summary
        else:
            assert summary["kv_acks_failed"] == 0, summary
    assert any(
        r.role == "prefill" and (r.drain_summary() or {}).get("kv_transfers_confirmed", 0) > 0
        for r in finished
    )
    # The survivors hold nothing either, and nobody saw an unconfirmed transfer.
    for run in h.kubelet.running():
        health = _json(f"http://{run.address}:8000/health")
        assert health["pending_transfers"] == 0, (run.name, health)
        metrics = urllib.request.urlopen(f"http://{run.address}:8000/metrics", timeout=5).read().decode()
        assert "dopd_kv_transfers_unconfirmed_total" not in metrics or all(
            line.endswith(" 0.0")
            for line in metrics.splitlines()
            if line.startswith("dopd_kv_transfers_unconfirmed_total")
        ), metrics
    assert not h.kubelet.errors, h.kubelet.errors
