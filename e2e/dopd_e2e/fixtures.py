"""Session fixtures for every test that needs real parts: a control plane and Prometheus instances.

Loaded as a pytest plugin for the whole suite (`-p dopd_e2e.fixtures` in pyproject.toml), so e2e/,
tests/chart/ and any other folder share ONE cluster per session (a conftest.py fixture would be
keyed by directory and start one per folder).

``k8s_cluster`` starts e2e/cluster/up.sh once per session in a temp dir (or uses KUBECONFIG with
DOPD_E2E_CLUSTER=external) and stops exactly its processes at the end, even when tests fail.
``prometheus_factory(targets)`` starts a Prometheus scraping those 127.0.0.1 targets every second.
Missing binaries fail the tests with the command to run; nothing is skipped.

The processes these fixtures start run in their own sessions (so a test's signals do not reach them)
and are stopped by the fixtures' teardown. A session ended by SIGTERM (a CI job's timeout, `kill`)
would skip the teardown and the atexit hooks and leave etcd, the API server and Prometheus running, so
the plugin turns SIGTERM into the KeyboardInterrupt pytest already handles: the session stops, tears
its fixtures down and exits.
"""

from __future__ import annotations

import atexit
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

import pytest

from dopd_e2e.cluster import Cluster, ClusterUnavailable, start_cluster
from dopd_e2e.prometheus import Prometheus, PrometheusUnavailable, start_prometheus

PrometheusFactory = Callable[..., Prometheus]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}: stopping, tearing fixtures down")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM tears the session's fixtures down (see the module's docstring); a handler someone
    else installed is left alone."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Cluster]:
    """The session's cluster: .kubeconfig, .kubectl(*args), .helm(*args), .bin_dir."""
    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    atexit.register(cluster.stop)  # also on an interrupted session
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def prometheus_factory() -> Iterator[PrometheusFactory]:
    """Call with targets ("127.0.0.1:PORT" list, or {job: [targets]}) to start a Prometheus."""
    started: list[Prometheus] = []

    def factory(targets: Sequence[str] | Mapping[str, Sequence[str]], **kwargs: Any) -> Prometheus:
        try:
            prom = start_prometheus(targets, **kwargs)
        except PrometheusUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        started.append(prom)
        atexit.register(prom.stop)
        return prom

    try:
        yield factory
    finally:
        for prom in started:
            prom.stop()
