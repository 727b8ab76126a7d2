"""Where the router finds its workers: a static list, a JSON file re-read on change, or the Kubernetes
Endpoints of the role Services (watched). Each source calls `on_change(WorkerSet)` with the full set;
the router reconciles (new workers join, vanished ones get no new requests, in-flight ones finish).
`urls_from_endpoints` is the pure parsing of an Endpoints object, unit-tested without a cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSet:
    prefill: tuple[str, ...] = ()
    prefill_long: tuple[str, ...] = ()
    decode: tuple[str, ...] = ()


OnChange = Callable[[WorkerSet], None]


class Discovery(Protocol):
    async def run(self, on_change: OnChange) -> None: ...


def _clean(urls: list[str] | tuple[str, ...]) -> tuple[str, ...]:
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


def urls_from_endpoints(endpoints: Mapping[str, Any], port_name: str) -> tuple[str, ...]:
    """http://ip:port for every ready address of an Endpoints object (dict form) on the named port."""
    urls: list[str] = []
    for subset in endpoints.get("subsets") or []:
        ports = [p for p in subset.get("ports") or [] if p.get("name") in (port_name, None)]
        if not ports:
            continue
        port = ports[0]["port"]
        for address in subset.get("addresses") or []:  # notReadyAddresses are excluded on purpose
            urls.append(f"http://{address['ip']}:{port}")
    return _clean(urls)


class KubernetesDiscovery:
    """Watches the Endpoints of the prefill, long-prefill and decode Services in one namespace."""

    def __init__(
        self,
        namespace: str,
        prefill_service: str,
        decode_service: str,
        long_prefill_service: str | None,
        port_name: str,
    ) -> None:
        self.namespace = namespace
        self.services = {"prefill": prefill_service, "decode": decode_service}
        if long_prefill_service:
            self.services["prefill_long"] = long_prefill_service
        self.port_name = port_name

    async def run(self, on_change: OnChange) -> None:
        loop = asyncio.get_running_loop()
        current: dict[str, tuple[str, ...]] = {}

        def publish() -> None:
            on_change(
                WorkerSet(
                    current.get("prefill", ()), current.get("prefill_long", ()), current.get("decode", ())
                )
            )

        def watch() -> None:
            from kubernetes import client, config, watch

            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            api = client.CoreV1Api()
            by_name = {svc: role for role, svc in self.services.items()}
            while True:
                try:
                    watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
                    stream = watcher.stream(
                        api.list_namespaced_endpoints, self.namespace, timeout_seconds=300
                    )
                    for event in stream:
                        obj = api.api_client.sanitize_for_serialization(event["object"])
                        role = by_name.get(obj.get("metadata", {}).get("name", ""))
                        if role is None:
                            continue
                        urls = () if event["type"] == "DELETED" else urls_from_endpoints(obj, self.port_name)
                        current[role] = urls
                        loop.call_soon_threadsafe(publish)
                except Exception as exc:  # the API server restarts or the watch expires: re-list
                    log.warning("endpoints watch in %s: %s; retrying", self.namespace, exc)
                    threading.Event().wait(2.0)

        threading.Thread(target=watch, name="endpoints-watch", daemon=True).start()
        await asyncio.Event().wait()
