"""Where the emulated replicas come from: fixed counts, or the Ready pods of the model's Deployments.

`ClusterSource` lists the pods labelled `dopd.io/model=<name>` and `dopd.io/role in (prefill,decode)`
(the labels the operator puts on its children) every `poll_seconds`, with a bounded request timeout. A
pod counts when its Ready condition is True and it is not terminating: a terminating pod leaves its
Service's ready endpoints, so it gets no new work and the emulator drains it. The first listing must
succeed (a wrong namespace or kubeconfig fails at start); a later failed listing keeps the last known
pods, is logged, and shows in the ground truth until a listing succeeds again.
Callers: `emulator.Emulator`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from dopd_emulator.config import ClusterReplicas, StaticReplicas

log = logging.getLogger(__name__)

MODEL_LABEL = "dopd.io/model"  # dopd_operator.controller.children's labels (the emulator may not import it)
ROLE_LABEL = "dopd.io/role"
REQUEST_TIMEOUT_SECONDS = (3.0, 5.0)  # connect, read


@dataclass(frozen=True)
class ReplicaSnapshot:
    """Names of the pods that take work, per role, sorted."""

    prefill: tuple[str, ...] = ()
    decode: tuple[str, ...] = ()


class ReplicaSource(Protocol):
    error: str | None

    def start(self) -> ReplicaSnapshot:
        """The first snapshot; raises when it cannot be had."""
        ...

    def current(self) -> ReplicaSnapshot: ...

    def stop(self) -> None: ...


class StaticSource:
    """`<name>-prefill-<i>` and `<name>-decode-<i>`; `set` changes the counts (highest indices go first)."""

    def __init__(self, name: str, config: StaticReplicas) -> None:
        self.name = name
        self.error: str | None = None
        self._snapshot = self._names(config.prefill, config.decode)

    def _names(self, prefill: int, decode: int) -> ReplicaSnapshot:
        return ReplicaSnapshot(
            tuple(f"{self.name}-prefill-{i}" for i in range(prefill)),
            tuple(f"{self.name}-decode-{i}" for i in range(decode)),
        )

    def set(self, prefill: int, decode: int) -> None:
        if prefill < 0 or decode < 0:
            raise ValueError("replica counts must be >= 0")
        self._snapshot = self._names(prefill, decode)

    def start(self) -> ReplicaSnapshot:
        return self._snapshot

    def current(self) -> ReplicaSnapshot:
        return self._snapshot

    def stop(self) -> None:
        pass


def ready_pods(pods: list[Any]) -> ReplicaSnapshot:
    """The pods of a listing (kubernetes client V1Pod objects) that take work, by role."""
    by_role: dict[str, list[str]] = {"prefill": [], "decode": []}
    for pod in pods:
        role = (pod.metadata.labels or {}).get(ROLE_LABEL)
        if role not in by_role or pod.metadata.deletion_timestamp is not None:
            continue
        conditions = (pod.status.conditions if pod.status else None) or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            by_role[role].append(pod.metadata.name)
    return ReplicaSnapshot(tuple(sorted(by_role["prefill"])), tuple(sorted(by_role["decode"])))


def _api_client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config
    from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION  # $KUBECONFIG or ~/.kube/config

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    default = os.path.expanduser(KUBE_CONFIG_DEFAULT_LOCATION.split(os.pathsep)[0])
    if os.path.isfile(default):
        return config.new_client_from_config(config_file=default)  # type: ignore[no-untyped-call]
    configuration = client.Configuration()
    # outside a pod this raises ConfigException, naming what it looked for
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class ClusterSource:
    """Polls the API server for the model's Ready pods (module doc)."""

    def __init__(self, namespace: str, name: str, config: ClusterReplicas) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.selector = f"{MODEL_LABEL}={name},{ROLE_LABEL} in (prefill,decode)"
        self.poll_seconds = config.poll_seconds
        self.error: str | None = None
        self._api = client.CoreV1Api(_api_client(config.kubeconfig))
        self._snapshot = ReplicaSnapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _list(self) -> ReplicaSnapshot:
        listing = self._api.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        return ready_pods(listing.items)

    def start(self) -> ReplicaSnapshot:
        self._snapshot = self._list()
        self._thread = threading.Thread(target=self._poll, name="dopd-emulate-pods", daemon=True)
        self._thread.start()
        return self._snapshot

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self._snapshot = self._list()
            except Exception as exc:  # the API server may blip; keep the last pods, say so until it heals
                if self.error is None:
                    log.warning(
                        "listing pods in %s failed (keeping the last known pods): %s", self.namespace, exc
                    )
                self.error = f"{type(exc).__name__}: {exc}"
                continue
            if self.error is not None:
                log.info("listing pods in %s works again", self.namespace)
                self.error = None

    def current(self) -> ReplicaSnapshot:
        return self._snapshot

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
