"""Session fixtures for every test that needs real parts: a control plane and Prometheus instances.

Loaded as a pytest plugin for the whole suite (`-p dopd_e2e.fixtures` in pyproject.toml), so e2e/,
tests/chart/ and any other folder share ONE cluster per session (a conftest.py fixture would be
keyed by directory and start one per folder).

``k8s_cluster`` starts e2e/cluster/up.sh once per session in a temp dir (or uses KUBECONFIG with
DOPD_E2E_CLUSTER=external) and stops exactly its processes at the end, even when tests fail.
``prometheus_factory(targets)`` starts a Prometheus scraping those 127.0.0.1 targets every second.
Missing binaries fail the tests with the command to run; nothing is skipped.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from dopd_e2e.cluster import Cluster, ClusterUnavailable, start_cluster
from dopd_e2e.prometheus import Prometheus, PrometheusUnavailable, start_prometheus

PrometheusFactory = Callable[..., Prometheus]


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
