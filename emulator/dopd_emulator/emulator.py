"""The engine emulator as a service: `Emulation` run in wall-clock time behind an HTTP endpoint on
127.0.0.1 that Prometheus scrapes, with its replicas following a `ReplicaSource`.

Python API (what `dopd emulate` runs, and what tests run in-process):

    emulator = Emulator(config)          # EmulatorConfig: what to emulate, the load, the replica source
    port = emulator.start()              # first replica listing, server up, engines running; returns the port
    emulator.truth()                     # GroundTruth: arrival rate, queues, ready/draining pods, ...
    emulator.set_faults(Faults(...))     # omit / NaN families, or stop answering /metrics
    emulator.set_static_replicas(2, 3)   # static replicas only
    emulator.stop()                      # also on leaving `with Emulator(config) as emulator:`

The engine loop advances the simulation to the seconds elapsed since `start()` every `step_seconds`
(the engines run in real time; `TraceLoad.time_compression` squeezes the trace, not the engines), then
applies the replica source's latest snapshot. If the loop ever fails, it stops, logs the error, and
/metrics answers 500 with it: a broken emulator must not look like an idle engine.
Callers: cli, e2e tests, the demo.
"""

from __future__ import annotations

import logging
import threading
import time
from http import HTTPStatus
from types import TracebackType

from dopd_emulator.config import ClusterReplicas, EmulatorConfig, Faults, GroundTruth, StaticReplicas
from dopd_emulator.core import Emulation
from dopd_emulator.replicas import ClusterSource, ReplicaSource, StaticSource
from dopd_emulator.server import EmulatorHTTPServer

log = logging.getLogger(__name__)


class Emulator:
    """See the module docstring."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.emulation = Emulation(config)
        self._static: StaticSource | None = None
        self._source: ReplicaSource
        if isinstance(config.replicas, StaticReplicas):
            self._static = self._source = StaticSource(config.name, config.replicas)
        else:
            assert isinstance(config.replicas, ClusterReplicas)
            self._source = ClusterSource(config.namespace, config.name, config.replicas)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: EmulatorHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self.failure: str | None = None

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> int:
        """Start serving; returns the port on 127.0.0.1."""
        if self._server is not None:
            raise RuntimeError("the emulator is already started")
        snapshot = self._source.start()
        with self._lock:
            self.emulation.apply_replicas(snapshot)
            self.emulation.advance_to(0.0)
        try:
            self._server = EmulatorHTTPServer(self.config.port, self)
        except OSError:
            self._source.stop()
            raise
        self._started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="dopd-emulate-http", daemon=True),
            threading.Thread(target=self._run, name="dopd-emulate-engines", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._source.stop()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------ the loop

    def _run(self) -> None:
        step, every = self.config.step_seconds, self.config.log_every_seconds
        next_log = every
        while not self._stop.wait(step):
            elapsed = time.monotonic() - self._started_at
            try:
                with self._lock:
                    self.emulation.advance_to(elapsed)
                    self.emulation.apply_replicas(self._source.current())
            except Exception as exc:
                log.exception("the engine loop failed at %.1f s; /metrics answers 500 from now on", elapsed)
                self.failure = f"{type(exc).__name__}: {exc}"
                return
            if elapsed >= next_log:
                next_log += every
                log.info("%s", self._summary(self.truth()))

    @staticmethod
    def _summary(truth: GroundTruth) -> str:
        per_decode = truth.decode_running_per_replica
        return (
            f"t={truth.time_s:.0f}s arrivals {truth.arrival_rate_rps:.1f} rps, prefill queue {truth.prefill_queue}, "
            f"decode waiting {truth.decode_waiting}, ready {len(truth.ready['prefill'])}P/{len(truth.ready['decode'])}D "
            f"(draining {len(truth.draining['prefill'])}P/{len(truth.draining['decode'])}D), "
            f"{'-' if per_decode is None else f'{per_decode:.1f}'} seq/decode replica"
            + (f", cluster: {truth.cluster_error}" if truth.cluster_error else "")
        )

    # ----------------------------------------------------------------------------- reading it

    def scrape(self, accept: str | None) -> tuple[HTTPStatus, bytes, str]:
        """What GET /metrics answers."""
        if self.failure is not None:
            return (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"engine loop failed: {self.failure}\n".encode(),
                "text/plain",
            )
        with self._lock:
            if self.emulation.faults.stale:
                return HTTPStatus.SERVICE_UNAVAILABLE, b"stale fault: not answering\n", "text/plain"
            body, content_type = self.emulation.render(accept)
        return HTTPStatus.OK, body, content_type

    def truth(self) -> GroundTruth:
        with self._lock:
            return self.emulation.truth(cluster_error=self._source.error)

    @property
    def faults(self) -> Faults:
        return self.emulation.faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults in force (ValueError for a family this engine does not have)."""
        with self._lock:
            self.emulation.set_faults(faults)

    def set_static_replicas(self, prefill: int, decode: int) -> None:
        """Change the replica counts of a static emulator (RuntimeError when following a cluster)."""
        if self._static is None:
            raise RuntimeError("the replicas follow the cluster; scale the Deployments instead")
        self._static.set(prefill, decode)
