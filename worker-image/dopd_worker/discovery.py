"""Where the router finds its workers: a static list, a JSON file re-read on change, or the Kubernetes
EndpointSlices (discovery.k8s.io/v1) of the role Services, watched. Each source calls
`on_change(WorkerSet)` with the full set; the router reconciles (new workers join, vanished ones get no
new requests, in-flight ones finish).

EndpointSlices, not Endpoints (deprecated since Kubernetes 1.33), because they say why a pod is there:
an endpoint is `ready` (serving and not terminating), `serving` (passes readiness, possibly while
terminating) or `terminating` (its pod is being deleted: scale-down or rollout). New work goes only to
ready endpoints; a terminating one is listed in `WorkerSet.draining` so the router can tell a draining
pod from a vanished one, and its in-flight requests finish (docs/drain.md). `worker_set_from_slices` is
the pure parsing, unit-tested without a cluster; `KubernetesDiscovery` is the list-then-watch loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set by the EndpointSlice controller on every slice


@dataclass(frozen=True)
class WorkerSet:
    prefill: tuple[str, ...] = ()
    prefill_long: tuple[str, ...] = ()
    decode: tuple[str, ...] = ()
    draining: tuple[str, ...] = ()  # terminating pods of any role: no new work, in-flight work finishes


OnChange = Callable[[WorkerSet], None]


class Discovery(Protocol):
    async def run(self, on_change: OnChange) -> None: ...


def _clean(urls: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({u.rstrip("/") for u in urls if u}))


class StaticDiscovery:
    def __init__(self, prefill: list[str], prefill_long: list[str], decode: list[str]) -> None:
        self.workers = WorkerSet(_clean(prefill), _clean(prefill_long), _clean(decode))

    async def run(self, on_change: OnChange) -> None:
        on_change(self.workers)


def parse_workers_file(text: str) -> WorkerSet:
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("workers file must hold a JSON object with prefill, prefill_long, decode lists")
    return WorkerSet(
        _clean(raw.get("prefill", [])), _clean(raw.get("prefill_long", [])), _clean(raw.get("decode", []))
    )


class FileDiscovery:
    """Polls a JSON file's mtime; a half-written or invalid file keeps the last good set (and logs)."""

    def __init__(self, path: Path, interval_seconds: float = 0.2) -> None:
        self.path = path
        self.interval_seconds = interval_seconds

    async def run(self, on_change: OnChange) -> None:
        last_mtime = -1.0
        while True:
            try:
                mtime = self.path.stat().st_mtime
                if mtime != last_mtime:
                    on_change(parse_workers_file(self.path.read_text()))
                    last_mtime = mtime
            except (OSError, ValueError) as exc:
                log.warning("workers file %s: %s", self.path, exc)
            await asyncio.sleep(self.interval_seconds)


# ---- EndpointSlices (the fields the router reads; the API server's JSON, camelCase) --------------------
class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class EndpointConditions(_Shape):
    # The API's rules for absent values: ready nil means true; serving nil defers to ready; terminating
    # nil means false.
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class SliceEndpoint(_Shape):
    addresses: list[str]
    conditions: EndpointConditions = EndpointConditions()


class SlicePort(_Shape):
    name: str | None = None
    port: int | None = None


class SliceMetadata(_Shape):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)


class EndpointSlice(_Shape):
    metadata: SliceMetadata
    address_type: str = Field(alias="addressType")
    endpoints: list[SliceEndpoint] | None = None
    ports: list[SlicePort] | None = None

    @property
    def service(self) -> str | None:
        return self.metadata.labels.get(SERVICE_NAME_LABEL)


@dataclass(frozen=True)
class EndpointState:
    """One worker as a slice lists it."""

    url: str
    ready: bool
    terminating: bool


def _slice_port(eps: EndpointSlice, port_name: str) -> int | None:
    for port in eps.ports or []:
        if port.port is not None and (
            port.name == port_name or (not port.name and len(eps.ports or []) == 1)
        ):
            return port.port
    return None


def _url(address: str, address_type: str, port: int) -> str:
    if address_type == "IPv6" or (address_type != "FQDN" and ipaddress.ip_address(address).version == 6):
        return f"http://[{address}]:{port}"
    return f"http://{address}:{port}"


def endpoint_states(eps: EndpointSlice, port_name: str) -> list[EndpointState]:
    """Every endpoint of one slice on the named port (none when the slice lacks that port)."""
    port = _slice_port(eps, port_name)
    if port is None:
        return []
    states = []
    for endpoint in eps.endpoints or []:
        if not endpoint.addresses:
            continue
        conditions = endpoint.conditions
        terminating = bool(conditions.terminating)
        ready = (conditions.ready is not False) and not terminating
        # Kubernetes lists a pod's first address as the one to use (the others are the same pod).
        states.append(EndpointState(_url(endpoint.addresses[0], eps.address_type, port), ready, terminating))
    return states


def worker_set_from_slices(
    slices: Iterable[Mapping[str, Any]], role_of_service: Mapping[str, str], port_name: str
) -> WorkerSet:
    """The WorkerSet the slices of the role Services describe (dict form, as the API server sends them).

    Ready endpoints take new work; terminating ones are `draining`; the rest (starting, failing their
    readiness probe) are left out. A pod listed in two slices of one Service counts once, ready if either
    says so (slices of one Service may overlap while the controller rewrites them)."""
    by_role: dict[str, dict[str, EndpointState]] = {"prefill": {}, "prefill_long": {}, "decode": {}}
    for raw in slices:
        eps = EndpointSlice.model_validate(raw)
        role = role_of_service.get(eps.service or "")
        if role is None:
            continue
        for state in endpoint_states(eps, port_name):
            known = by_role[role].get(state.url)
            if known is None or (state.ready and not known.ready):
                by_role[role][state.url] = state
    ready = {role: _clean(u for u, s in states.items() if s.ready) for role, states in by_role.items()}
    draining = _clean(u for states in by_role.values() for u, s in states.items() if s.terminating)
    return WorkerSet(ready["prefill"], ready["prefill_long"], ready["decode"], draining)


class KubernetesDiscovery:
    """Lists, then watches, the EndpointSlices of the prefill, long-prefill and decode Services in one
    namespace (one label-selected watch); re-lists from scratch after any watch failure or expiry, so a
    slice deleted while the watch was down never lingers. Needs `list` and `watch` on
    `endpointslices.discovery.k8s.io` in that namespace."""

    def __init__(
        self,
        namespace: str,
        prefill_service: str,
        decode_service: str,
        long_prefill_service: str | None,
        port_name: str,
        watch_timeout_seconds: int = 60,
        kubeconfig: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig  # None: the pod's ServiceAccount, else ~/.kube/config
        self.role_of_service = {prefill_service: "prefill", decode_service: "decode"}
        if long_prefill_service:
            self.role_of_service[long_prefill_service] = "prefill_long"
        self.port_name = port_name
        self.watch_timeout_seconds = watch_timeout_seconds
        self.label_selector = f"{SERVICE_NAME_LABEL} in ({','.join(sorted(self.role_of_service))})"

    async def run(self, on_change: OnChange) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        last: list[WorkerSet] = []
        try:
            api_client = await asyncio.to_thread(self._api_client)
        except Exception as exc:  # no kubeconfig, no ServiceAccount: say so, the router finds no worker
            log.error("EndpointSlice discovery in %s has no API server to ask: %s", self.namespace, exc)
            raise

        def publish(slices: dict[str, dict[str, Any]]) -> None:
            workers = worker_set_from_slices(slices.values(), self.role_of_service, self.port_name)
            if not last or last[-1] != workers:
                last[:] = [workers]
                loop.call_soon_threadsafe(on_change, workers)

        thread = threading.Thread(
            target=self._watch, args=(api_client, publish, stop), name="endpointslice-watch"
        )
        thread.daemon = True
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            stop.set()  # the thread ends at its watch's next event or timeout

    def _api_client(self) -> Any:
        """A client of its own (the library's global default stays untouched)."""
        from kubernetes import client, config

        if self.kubeconfig is not None:
            return config.new_client_from_config(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        except config.ConfigException:
            return config.new_client_from_config()  # type: ignore[no-untyped-call]

    def _watch(
        self, api_client: Any, publish: Callable[[dict[str, dict[str, Any]]], None], stop: threading.Event
    ) -> None:
        from kubernetes import client, watch

        api = client.DiscoveryV1Api(api_client)
        serialize = api.api_client.sanitize_for_serialization
        while not stop.is_set():
            try:
                listing: dict[str, Any] = serialize(
                    api.list_namespaced_endpoint_slice(self.namespace, label_selector=self.label_selector)
                )
                slices: dict[str, dict[str, Any]] = {
                    str(item["metadata"]["name"]): item for item in listing.get("items") or []
                }
                publish(slices)
                watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
                for event in watcher.stream(
                    api.list_namespaced_endpoint_slice,
                    self.namespace,
                    label_selector=self.label_selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=self.watch_timeout_seconds,
                ):
                    if stop.is_set():
                        watcher.stop()
                        break
                    obj: dict[str, Any] = serialize(event["object"])
                    name = str((obj.get("metadata") or {}).get("name") or "")
                    if event["type"] == "DELETED":
                        slices.pop(name, None)
                    elif event["type"] in ("ADDED", "MODIFIED") and name:
                        slices[name] = obj
                    publish(slices)
            except Exception as exc:  # the API server restarts or the resource version expired: re-list
                log.warning("EndpointSlice watch in %s: %s; re-listing", self.namespace, exc)
                stop.wait(1.0)
