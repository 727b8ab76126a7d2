"""A Helm release of charts/dopd on a local cluster, with its operator process run on the host.

KWOK pods run no processes: the pods of the Deployment the chart renders are status only. So
`HostedRelease` plays the kubelet for the active replica. It reads the operator container that Helm
rendered *in the cluster* (its args and env), mints a token for the ServiceAccount that pod runs as (the
chart's RBAC is exactly what the process gets), and runs `dopd run` on the host with that environment.
`sync()` is the rollout: after a `helm upgrade` that changed the container it stops the process and
starts one with the new environment; after `helm uninstall` it stops it; after a reinstall it starts one.
Only the replica Kopf peering would make active runs: the chart's other replicas would stand by frozen.

What a pod's own network namespace gives it, the host process gets from flags, which win over the env:
it binds 127.0.0.1 on free ports instead of the chart's 0.0.0.0:8080/8081 (DOPD_BIND_ADDRESS,
DOPD_METRICS_PORT and DOPD_HEALTH_PORT are not passed on). Everything else comes from the Deployment.

Callers: e2e/test_helm_journey.py and scripts/demo.py.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dopd_e2e.cluster import Cluster
from dopd_e2e.operator import REPO, OperatorFailed, OperatorProcess, serviceaccount_kubeconfig, start_operator

CHART = REPO / "charts" / "dopd"
# The pod's network identity; the host process gets 127.0.0.1 and free ports through flags instead.
POD_NETWORK_ENV = frozenset({"DOPD_BIND_ADDRESS", "DOPD_METRICS_PORT", "DOPD_HEALTH_PORT"})
KNOWN_ARGS = frozenset({"--standalone"})  # what the chart puts after `run`


@dataclass(frozen=True)
class OperatorContainer:
    """The operator container of the chart's Deployment as the API server stores it."""

    args: tuple[str, ...]
    env: Mapping[str, str]
    service_account: str

    @classmethod
    def from_deployment(cls, deployment: Mapping[str, Any]) -> OperatorContainer:
        """Read the container; anything the host cannot reproduce (an env `valueFrom`, unknown args)
        raises, rather than being dropped."""
        pod = deployment["spec"]["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] == "operator"]
        env: dict[str, str] = {}
        for entry in container.get("env", []):
            if "value" not in entry:
                raise ValueError(
                    f"env {entry['name']} is not a plain value ({entry}); the host cannot read it"
                )
            env[entry["name"]] = str(entry["value"])
        args = tuple(container.get("args", []))
        if not args or args[0] != "run" or not set(args[1:]) <= KNOWN_ARGS:
            raise ValueError(f"container args {list(args)}: the harness runs only `run [--standalone]`")
        return cls(args=args, env=env, service_account=str(pod["serviceAccountName"]))


@dataclass
class HostedRelease:
    """Release `name` of charts/dopd in `namespace`, its active operator replica run on the host."""

    cluster: Cluster
    name: str = "dopd"
    namespace: str = "dopd-system"
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dopd-release-")))
    container: OperatorContainer | None = None
    process: OperatorProcess | None = None
    started: list[OperatorProcess] = field(default_factory=list)  # every process, oldest first

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`helm <args> --namespace <namespace>`; raises CommandFailed (with stderr) on failure."""
        return self.cluster.helm(*args, "--namespace", self.namespace)

    def install(self, *values: str) -> subprocess.CompletedProcess[str]:
        """`helm install <name> charts/dopd --create-namespace <values>`, then start the operator."""
        done = self.helm("install", self.name, str(CHART), "--create-namespace", *values)
        self.sync()
        return done

    def upgrade(self, *values: str) -> subprocess.CompletedProcess[str]:
        """`helm upgrade <name> charts/dopd --reuse-values <values>`, then roll the operator if its
        container changed."""
        done = self.helm("upgrade", self.name, str(CHART), "--reuse-values", *values)
        self.sync()
        return done

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        """`helm uninstall <name>`; the operator stops with its Deployment."""
        done = self.helm("uninstall", self.name)
        self.sync()
        return done

    def rendered(self) -> OperatorContainer | None:
        """The operator container of the release's Deployment; None when there is no Deployment."""
        found = json.loads(
            self.cluster.kubectl(
                "-n",
                self.namespace,
                "get",
                "deployments",
                "-l",
                f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator",
                "-o",
                "json",
            ).stdout
        )["items"]
        if len(found) > 1:
            raise ValueError(f"release {self.name} has {len(found)} operator Deployments")
        return OperatorContainer.from_deployment(found[0]) if found else None

    def sync(self) -> bool:
        """Make the host process match the Deployment, as the kubelet would after a rollout; True when
        it stopped or started one. A process that died on its own is an error, not restarted."""
        if self.process is not None and not self.process.alive():
            raise OperatorFailed(f"the operator exited on its own:\n{self.process.logs()[-4000:]}")
        wanted = self.rendered()
        if wanted == self.container and (wanted is None) == (self.process is None):
            return False
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.container = wanted
        if wanted is not None:
            self.process = self._start(wanted)
            self.started.append(self.process)
        return True

    def _start(self, container: OperatorContainer) -> OperatorProcess:
        kubeconfig = serviceaccount_kubeconfig(
            self.cluster, self.namespace, container.service_account, self.work
        )
        return start_operator(
            self.cluster,
            container.env["DOPD_PROMETHEUS_URL"],
            standalone="--standalone" in container.args,
            kubeconfig=kubeconfig,
            env={k: v for k, v in container.env.items() if k not in POD_NETWORK_ENV},
            log_format=None,  # DOPD_LOG_FORMAT, from the chart's logFormat
            ready_timeout_s=120.0,
        )

    def stop(self) -> None:
        """Stop the host process (the release stays in the cluster)."""
        if self.process is not None:
            self.process.stop()
            self.process = None
