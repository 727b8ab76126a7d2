"""Run the real operator (`dopd run`, a separate process) against a test cluster, as a user would.

`start_operator(cluster, prometheus_url, ...)` starts `dopd run` with the cluster's kubeconfig (or a
kubeconfig of a ServiceAccount token, for the least-privilege tests), its own /metrics and /healthz on
free 127.0.0.1 ports, JSON logs to a file, and returns once /healthz answers. `stop()` sends SIGTERM,
`kill()` SIGKILL (the restart tests). `wait_until` (from cluster.py) is the one bounded poll the e2e tests use.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dopd_e2e.cluster import Cluster, wait_until
from dopd_worker.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "dopd.io_disaggregatedmodels.yaml"


class OperatorFailed(RuntimeError):
    """The operator process exited or never became healthy; the message has its log tail."""


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    health_port: int
    work_dir: Path
    _log: Any = field(repr=False, default=None)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else the process printed is skipped)."""
        records = []
        for line in self.logs().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                records.append(entry)
        return records

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a node failure or an OOM kill leaves it."""
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_crd_established("disaggregatedmodels.dopd.io")


def start_operator(
    cluster: Cluster,
    prometheus_url: str,
    *,
    namespaces: Sequence[str] = (),
    standalone: bool = True,
    peering: str | None = None,
    kubeconfig: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 60.0,
    log_format: str | None = "json",
) -> OperatorProcess:
    """Start `dopd run` and wait until its liveness endpoint answers. `log_format=None` passes no
    --log-format, so DOPD_LOG_FORMAT in `env` decides (as in the chart's container)."""
    work = Path(tempfile.mkdtemp(prefix="dopd-e2e-operator-"))
    metrics_port, health_port = free_ports(2)
    args = [
        sys.executable,
        "-m",
        "dopd_operator.cli",
        "run",
        "--prometheus-url",
        prometheus_url,
        "--metrics-port",
        str(metrics_port),
        "--health-port",
        str(health_port),
        "--bind-address",
        "127.0.0.1",
    ]
    if log_format is not None:
        args += ["--log-format", log_format]
    for namespace in namespaces:
        args += ["--namespace", namespace]
    if standalone:
        args.append("--standalone")
    elif peering:
        args += ["--peering", peering]
    run_env = cluster.run_env()
    if kubeconfig is not None:
        run_env["KUBECONFIG"] = str(kubeconfig)
    run_env.pop("KUBERNETES_SERVICE_HOST", None)
    run_env["PYTHONUNBUFFERED"] = "1"
    run_env["OPENBLAS_NUM_THREADS"] = "1"  # as the operator image sets it
    run_env.update(env or {})
    log_path = work / "operator.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        args,
        env=run_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    operator = OperatorProcess(process, log_path, metrics_port, health_port, work, log)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if not operator.alive():
            break
        if operator.healthy():
            return operator
        time.sleep(0.2)
    tail = operator.logs()[-4000:]
    operator.stop()
    raise OperatorFailed(f"dopd run did not become healthy (exit {process.poll()}):\n{tail}")


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def patch_dm(cluster: Cluster, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
    """`kubectl patch dm NAME --type=merge`: what a user does to change a model's spec."""
    cluster.kubectl("-n", namespace, "patch", "dm", name, "--type=merge", "-p", json.dumps(patch))


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def apply_yaml(cluster: Cluster, document: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=document)


__all__ = [
    "CRD",
    "OperatorFailed",
    "OperatorProcess",
    "apply_yaml",
    "condition",
    "get_json",
    "install_crd",
    "serviceaccount_kubeconfig",
    "start_operator",
    "wait_until",
]


def serviceaccount_kubeconfig(cluster: Cluster, namespace: str, name: str, work_dir: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/name` (a bound token from the real
    API server), for running the operator with exactly the permissions its RBAC grants."""
    token = cluster.kubectl("-n", namespace, "create", "token", name, "--duration=2h").stdout.strip()
    admin = get_json(cluster, "config", "view", "--raw", "--minify")
    server = admin["clusters"][0]["cluster"]["server"]
    ca = admin["clusters"][0]["cluster"].get("certificate-authority")
    cluster_entry: dict[str, Any] = {"server": server}
    if ca:
        cluster_entry["certificate-authority"] = ca
    else:
        cluster_entry["certificate-authority-data"] = admin["clusters"][0]["cluster"][
            "certificate-authority-data"
        ]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster_entry}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name, "namespace": namespace}}],
        "current-context": name,
    }
    path = work_dir / f"kubeconfig-{namespace}-{name}"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path
