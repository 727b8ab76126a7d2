"""Start, reuse or attach to a Kubernetes cluster for the e2e tests.

The local cluster is the one of ``e2e/cluster/up.sh`` (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK with fake GPU nodes, all on 127.0.0.1), started in a state dir of its own and
stopped with ``e2e/cluster/down.sh``. With ``DOPD_E2E_CLUSTER=external`` the cluster of ``KUBECONFIG``
(kind, a real one) is used instead and nothing is started or stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"
BUILD_HINT = "run `make cluster-build`"


_T = TypeVar("_T")


def wait_until(probe: Callable[[], _T | None], timeout_s: float, what: str, interval_s: float = 0.5) -> _T:
    """Poll `probe` until it returns something truthy; TimeoutError naming `what` (and the last value)."""
    deadline = time.monotonic() + timeout_s
    last: _T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be started or reached; the message says what to run."""


class CommandFailed(subprocess.CalledProcessError):
    """A kubectl/helm call failed; unlike CalledProcessError its message includes stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}"


def read_versions(path: Path = CLUSTER_DIR / "versions.env") -> dict[str, str]:
    """Parse the KEY=VALUE lines of e2e/cluster/versions.env."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries (same rule as e2e/cluster/lib.sh)."""
    if os.environ.get("DOPD_BIN_DIR"):
        return Path(os.environ["DOPD_BIN_DIR"])
    cache = os.environ.get("DOPD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dopd"
    )
    return Path(cache) / f"k8s-{read_versions()['K8S_VERSION']}" / "bin"


def check_binaries(bin_dir: Path | None = None) -> list[str]:
    """Names of binaries missing from (or of the wrong version in) bin_dir; empty when all are fine."""
    env = dict(os.environ)
    if bin_dir is not None:
        env["DOPD_BIN_DIR"] = str(bin_dir)
    proc = subprocess.run(
        [str(CLUSTER_DIR / "build.sh"), "--check"], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return []
    missing = [ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("  ")]
    return missing or [proc.stderr.strip()]


@dataclass
class Cluster:
    """A reachable cluster: its kubeconfig and helpers to run kubectl/helm against it."""

    kubeconfig: Path
    bin_dir: Path
    state_dir: Path | None = None
    external: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def _tool(self, name: str) -> str:
        local = self.bin_dir / name
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
        found = shutil.which(name)
        if found is None:
            raise ClusterUnavailable(f"{name} not found in {self.bin_dir} or PATH; {BUILD_HINT}")
        return found

    def run_env(self) -> dict[str, str]:
        """Environment with KUBECONFIG (and the binaries first on PATH) for subprocesses."""
        env = dict(os.environ)
        env.update(self.env)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _run(
        self, tool: str, args: tuple[str, ...], *, check: bool, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self._tool(tool), *args]
        proc = subprocess.run(
            cmd,
            env=self.run_env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CommandFailed(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the cluster; raises CommandFailed (with stderr) if check and it fails."""
        return self._run("kubectl", args, check=check, input=input, timeout=timeout)

    def wait_crd_established(self, name: str, timeout_s: float = 60.0) -> None:
        """Poll until the CRD `name` is Established. Not `kubectl wait --for=condition=Established`: right
        after the create the CRD has no conditions at all, and kubectl fails on that at once ("accessor
        error: <nil> is of the type <nil>") instead of waiting (CI failed on it)."""
        wait_until(
            lambda: (
                self.kubectl(
                    "get",
                    f"crd/{name}",
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                    check=False,  # fails while the new CRD has no conditions at all
                ).stdout.strip()
                == "True"
            ),
            timeout_s,
            f"the CRD {name} to be Established",
            interval_s=0.2,
        )

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against the cluster."""
        return self._run("helm", args, check=check, input=input, timeout=timeout)

    def stop(self) -> None:
        """Stop a local cluster (exactly the processes up.sh started); no-op for an external one."""
        if self.external or self.state_dir is None:
            return
        env = dict(os.environ)
        env["DOPD_CLUSTER_STATE"] = str(self.state_dir)
        env["DOPD_BIN_DIR"] = str(self.bin_dir)
        subprocess.run([str(CLUSTER_DIR / "down.sh")], env=env, capture_output=True, text=True, check=False)


def _external_cluster(bin_dir: Path) -> Cluster:
    kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    if not Path(kubeconfig).is_file():
        raise ClusterUnavailable(
            f"DOPD_E2E_CLUSTER=external but KUBECONFIG ({kubeconfig}) is not a file; "
            "point KUBECONFIG at a reachable cluster or unset DOPD_E2E_CLUSTER to start a local one"
        )
    cluster = Cluster(kubeconfig=Path(kubeconfig), bin_dir=bin_dir, external=True)
    proc = cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=30)
    if proc.returncode != 0:
        raise ClusterUnavailable(
            f"DOPD_E2E_CLUSTER=external: cluster of {kubeconfig} not reachable: {proc.stderr}"
        )
    return cluster


def start_cluster(
    state_dir: Path | None = None,
    *,
    nodes: int = 4,
    gpus_per_node: int = 8,
    bin_dir: Path | None = None,
    mode: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Cluster:
    """Start a local cluster (or attach to an external one) and return it once the API is Ready.

    mode: "local" (default) starts e2e/cluster/up.sh in state_dir (a new temp dir when None; an
    existing healthy cluster there is reused); "external" uses KUBECONFIG. Defaults to
    $DOPD_E2E_CLUSTER. Raises ClusterUnavailable with what to run when binaries are missing.
    """
    bin_dir = bin_dir or default_bin_dir()
    mode = mode or os.environ.get("DOPD_E2E_CLUSTER", "local") or "local"
    if mode == "external":
        return _external_cluster(bin_dir)
    if mode != "local":
        raise ClusterUnavailable(f"DOPD_E2E_CLUSTER must be 'local' or 'external', not {mode!r}")
    missing = check_binaries(bin_dir)
    if missing:
        raise ClusterUnavailable(
            f"cluster binaries missing or of the wrong version in {bin_dir}: "
            f"{', '.join(missing)}; {BUILD_HINT}"
        )
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="dopd-e2e-cluster-"))
    env = dict(os.environ)
    env.update(extra_env or {})
    env.update(
        DOPD_CLUSTER_STATE=str(state_dir),
        DOPD_BIN_DIR=str(bin_dir),
        DOPD_GPU_NODES=str(nodes),
        DOPD_GPUS_PER_NODE=str(gpus_per_node),
    )
    proc = subprocess.run(
        [str(CLUSTER_DIR / "up.sh")], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("export KUBECONFIG="):
        raise ClusterUnavailable(f"e2e/cluster/up.sh failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    kubeconfig = Path(lines[-1].removeprefix("export KUBECONFIG="))
    return Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir, state_dir=state_dir)
