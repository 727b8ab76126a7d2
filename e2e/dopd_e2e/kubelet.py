"""A small kubelet for the e2e tests: it runs a real process for each KWOK pod labelled
`e2e.dopd.io/kubelet=netns`, inside a network namespace that holds the pod's address (`netns.py`).

KWOK fakes nodes and pod status but runs nothing. For these pods (and only these: e2e/cluster/kwok/
stages.yaml keeps its fast stages for every other pod) KWOK sets them Running with an address but not
Ready, and leaves a deleted pod in place until its grace period ends. This kubelet does the rest, the way
the real one does for a container:

- start: when the pod is Running with an address, run its container's command (the image's entrypoint
  mapped to this machine, `IMAGE_ENTRYPOINTS`; `$(VAR)` expanded from the container's env, downward-API
  fields included) in a namespace holding that address, with the pod's name as hostname;
- readiness: probe the container's `readinessProbe.httpGet` every `periodSeconds` and patch the pod's
  Ready condition, so the EndpointSlice controller and the Deployment's rollout see what they would;
- termination: on `deletionTimestamp`, run the preStop hook (`sleep` or `exec`), send SIGTERM, wait
  until the process exits or the grace period ends (then SIGKILL), record the exit status in the pod's
  status, and delete the pod object with grace 0, as the kubelet does once the container is gone;
- a pod deleted outright (no grace) or a process that dies unbidden is killed / reported;
- scrape targets: Debian's Prometheus is built without Kubernetes service discovery, so this kubelet
  writes the targets it would find (each pod's `http` port, labels `namespace` and `pod`, from start
  until the pod object is gone) to a file_sd file (`scrape_targets_path`).

Every run is kept (`runs`: log, exit code, the worker's drain summary) for the test to assert on, and
anything this kubelet cannot do is recorded in `errors` rather than skipped. Used by e2e/test_drain.py;
docs/drain.md describes the harness and what it stands in for.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dopd_e2e.netns import PodNetns, PodNetwork

log = logging.getLogger(__name__)

KUBELET_LABEL = "e2e.dopd.io/kubelet"
KUBELET_LABEL_VALUE = "netns"
# Images this kubelet can "pull": the image's ENTRYPOINT as it is installed on this machine.
IMAGE_ENTRYPOINTS: dict[str, list[str]] = {"ghcr.io/dopd/worker": [str(Path(sys.executable).parent / "dopd")]}
DOWNWARD_API_FIELDS = {"status.podIP", "status.hostIP", "metadata.name", "metadata.namespace", "metadata.uid"}


@dataclass
class PodRun:
    """One pod's process, from start to the deletion of its pod object."""

    uid: str
    name: str
    role: str
    address: str
    netns: PodNetns
    process: subprocess.Popen[bytes]
    log_path: Path
    container: dict[str, Any]
    started_monotonic: float
    ready: bool = False
    terminating: bool = False
    sigterm_monotonic: float | None = None
    exit_code: int | None = None
    killed_at_grace_end: bool = False
    pod_deleted: bool = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def drain_summary(self) -> dict[str, Any] | None:
        """The worker's `drain summary: {json}` line (the termination message a pod would carry)."""
        lines = [ln for ln in self.log().splitlines() if "drain summary: " in ln]
        return dict(json.loads(lines[-1].split("drain summary: ", 1)[1])) if lines else None


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: `$$` is a literal `$`, an unknown `$(VAR)` stays as written."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def container_env(container: Mapping[str, Any], pod: Mapping[str, Any]) -> dict[str, str]:
    """The container's env in order (each value may refer to earlier ones), downward-API fields resolved."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
            continue
        field_path = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field_path not in DOWNWARD_API_FIELDS:
            raise ValueError(
                f"env {var['name']}: only value and fieldRef {sorted(DOWNWARD_API_FIELDS)} are run here"
            )
        section, key = str(field_path).split(".", 1)
        env[var["name"]] = str((pod.get(section) or {}).get(key, ""))
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    image = str(container["image"]).rsplit(":", 1)[0]
    if container.get("command"):
        command = [str(c) for c in container["command"]]
    elif image in IMAGE_ENTRYPOINTS:
        command = list(IMAGE_ENTRYPOINTS[image])
    else:
        raise ValueError(
            f"image {container['image']!r} has no entrypoint here (known: {sorted(IMAGE_ENTRYPOINTS)})"
        )
    return [expand(part, env) for part in [*command, *(str(a) for a in container.get("args") or [])]]


def _port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container port {port!r} is not declared")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NetnsKubelet:
    """Runs the labelled pods of one namespace (module doc). `start()`, then `stop()` in a finalizer."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        network: PodNetwork,
        work_dir: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        from kubernetes import client, config

        self.namespace = namespace
        self.network = network
        self.work_dir = work_dir
        self.scrape_targets_path = work_dir / "scrape-targets.json"
        self.extra_env = dict(extra_env or {})
        api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.api = client.CoreV1Api(api_client)
        self.runs: dict[str, PodRun] = {}
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._write_targets()
        self._spawn(self._watch, "kubelet-watch")

    def _write_targets(self) -> None:
        """Prometheus file_sd targets: every pod with a process, until its pod object is gone."""
        with self._lock:
            groups = [
                {
                    "targets": [f"{r.address}:{_port(r.container, 'http')}"],
                    "labels": {"namespace": self.namespace, "pod": r.name},
                }
                for r in self.runs.values()
                if not r.pod_deleted
            ]
            # Under the lock: pods terminating at once each rewrite the file through the same temp name.
            tmp = self.scrape_targets_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(self.scrape_targets_path)

    def stop(self) -> None:
        """Kill every process still running and remove its namespace (the pods are left to the test)."""
        self._stop.set()
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            if run.process.poll() is None:
                os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait(timeout=30)
            self.network.remove_pod(run.netns)
        for thread in self._threads:
            thread.join(timeout=5)

    def running(self, role: str | None = None) -> list[PodRun]:
        with self._lock:
            return [
                r
                for r in self.runs.values()
                if r.process.poll() is None and not r.terminating and (role is None or r.role == role)
            ]

    def terminating(self) -> list[PodRun]:
        """Pods being stopped: deleted, their process or pod object not gone yet."""
        with self._lock:
            return [r for r in self.runs.values() if r.terminating and not r.pod_deleted]

    def finished(self) -> list[PodRun]:
        with self._lock:
            return [r for r in self.runs.values() if r.pod_deleted]

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=self._guard, args=(target, *args), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # a harness failure must fail the test, never pass unseen
            if not self._stop.is_set():
                log.exception("kubelet %s failed", getattr(target, "__name__", target))
                self.errors.append(f"{getattr(target, '__name__', target)}: {type(exc).__name__}: {exc}")

    # ---- the pods ----------------------------------------------------------------------------------
    def _watch(self) -> None:
        from kubernetes import watch

        selector = f"{KUBELET_LABEL}={KUBELET_LABEL_VALUE}"
        serialize = self.api.api_client.sanitize_for_serialization
        while not self._stop.is_set():
            try:
                listing: dict[str, Any] = serialize(
                    self.api.list_namespaced_pod(self.namespace, label_selector=selector)
                )
                seen = {item["metadata"]["uid"] for item in listing.get("items") or []}
                for item in listing.get("items") or []:
                    self._sync(item, deleted=False)
                with self._lock:
                    vanished = [r for uid, r in self.runs.items() if uid not in seen and not r.pod_deleted]
                for run in vanished:
                    self._gone(run)
                watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
                for event in watcher.stream(
                    self.api.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=30,
                ):
                    if self._stop.is_set():
                        watcher.stop()
                        break
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._sync(serialize(event["object"]), deleted=event["type"] == "DELETED")
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("kubelet watch: %s; re-listing", exc)
                self._stop.wait(1.0)

    def _sync(self, pod: dict[str, Any], deleted: bool) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            run = self.runs.get(uid)
            if deleted:
                if run is not None:
                    self._gone(run)
                return
            if meta.get("deletionTimestamp"):
                if run is not None and not run.terminating:
                    run.terminating = True
                    self._spawn(
                        self._terminate, f"kubelet-stop-{meta['name']}", run, meta["deletionTimestamp"]
                    )
                elif run is None:
                    self._delete_object(meta["name"], uid)  # never started: nothing to stop
                return
            status = pod.get("status") or {}
            if run is None and status.get("phase") == "Running" and status.get("podIP"):
                self._start_pod(pod)

    def _start_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if len(spec["containers"]) != 1:
            raise ValueError(f"pod {meta['name']}: this kubelet runs pods of exactly one container")
        container = spec["containers"][0]
        env = container_env(container, pod)
        argv = container_argv(container, env)
        netns = self.network.add_pod(meta["name"], pod["status"]["podIP"])
        log_path = self.work_dir / f"{meta['name']}.log"
        process = subprocess.Popen(
            netns.exec_argv(argv),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.extra_env, **env},
            start_new_session=True,
        )
        run = PodRun(
            uid=meta["uid"],
            name=meta["name"],
            role=(meta.get("labels") or {}).get("dopd.io/role", ""),
            address=pod["status"]["podIP"],
            netns=netns,
            process=process,
            log_path=log_path,
            container=container,
            started_monotonic=time.monotonic(),
        )
        self.runs[run.uid] = run
        self._write_targets()
        log.info("started pod %s at %s: %s", run.name, run.address, " ".join(argv))
        self._spawn(self._probe, f"kubelet-probe-{run.name}", run)

    def _probe(self, run: PodRun) -> None:
        """Readiness, as the kubelet probes it, until the process is gone; an unbidden exit is an error."""
        probe = run.container.get("readinessProbe") or {}
        http_get = probe.get("httpGet")
        if http_get is None:
            raise ValueError(f"pod {run.name}: a readinessProbe.httpGet is needed (the rollout waits on it)")
        url = f"http://{run.address}:{_port(run.container, http_get['port'])}{http_get.get('path', '/')}"
        period_seconds = float(probe.get("periodSeconds", 10))
        while not self._stop.is_set() and run.process.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds", 1))) as resp:
                    ready = 200 <= resp.status < 400
            except (urllib.error.URLError, OSError):
                ready = False
            if ready != run.ready and not run.pod_deleted:
                run.ready = ready
                self._patch_ready(run, ready)
            self._stop.wait(period_seconds)
        if not run.terminating and not self._stop.is_set():
            self.errors.append(
                f"pod {run.name} exited by itself with {run.process.returncode}:\n{run.log()[-2000:]}"
            )

    def _terminate(self, run: PodRun, deletion_timestamp: str) -> None:
        """preStop, SIGTERM, wait for the exit or the grace period's end (SIGKILL), then remove the pod."""
        end_wall = datetime.datetime.fromisoformat(deletion_timestamp.replace("Z", "+00:00")).timestamp()
        deadline = time.monotonic() + max(0.0, end_wall - time.time())
        pre_stop = (run.container.get("lifecycle") or {}).get("preStop") or {}
        if "sleep" in pre_stop:
            time.sleep(max(0.0, min(float(pre_stop["sleep"]["seconds"]), deadline - time.monotonic())))
        elif "exec" in pre_stop:
            env = {**os.environ, **self.extra_env}
            subprocess.run(
                run.netns.exec_argv([expand(str(c), env) for c in pre_stop["exec"]["command"]]),
                env=env,
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        elif pre_stop:
            raise ValueError(f"pod {run.name}: preStop {sorted(pre_stop)} is not run here")
        run.sigterm_monotonic = time.monotonic()
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
            log.info("SIGTERM to pod %s (%.1fs of grace left)", run.name, deadline - time.monotonic())
        try:
            run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.killed_at_grace_end = True
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait(timeout=30)
        run.exit_code = run.process.returncode
        log.info("pod %s exited with %s", run.name, run.exit_code)
        self._patch_terminated(run)
        self._delete_object(run.name, run.uid)
        self._gone(run)

    def _gone(self, run: PodRun) -> None:
        """The pod object is gone: its process and namespace go too."""
        with self._lock:
            if run.pod_deleted:
                return
            run.pod_deleted = True
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait(timeout=30)
            self.errors.append(f"pod {run.name} was removed while its process still ran: killed")
        run.exit_code = run.process.returncode
        self.network.remove_pod(run.netns)
        self._write_targets()

    # ---- the API server ----------------------------------------------------------------------------
    def _patch_ready(self, run: PodRun, ready: bool) -> None:
        value, now = ("True" if ready else "False"), _now()
        body = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": value, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": value, "lastTransitionTime": now},
                ],
                "containerStatuses": [self._container_status(run, ready, {"running": {"startedAt": now}})],
            }
        }
        self._patch_status(run, body)

    def _patch_terminated(self, run: PodRun) -> None:
        now, code = _now(), run.exit_code or 0
        state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "finishedAt": now,
                "message": json.dumps(run.drain_summary()) if run.drain_summary() else "",
            }
        }
        body = {
            "status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
                ],
                "containerStatuses": [self._container_status(run, False, state)],
            }
        }
        self._patch_status(run, body)

    @staticmethod
    def _container_status(run: PodRun, ready: bool, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": run.container["name"],
            "image": run.container["image"],
            "imageID": "",
            "ready": ready,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
        }

    def _patch_status(self, run: PodRun, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.patch_namespaced_pod_status(run.name, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:  # already gone: nothing to report on
                raise

    def _delete_object(self, name: str, uid: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_pod(
                name,
                self.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or a new pod under that name
                raise


__all__ = [
    "KUBELET_LABEL",
    "KUBELET_LABEL_VALUE",
    "NetnsKubelet",
    "PodRun",
    "container_argv",
    "container_env",
    "expand",
]
