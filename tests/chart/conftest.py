"""Fixtures for the chart tests: the chart with a real Helm. The session's local API server
(`k8s_cluster`) comes from the suite-wide plugin `dopd_e2e.fixtures`."""

from __future__ import annotations

import pytest

from dopd_e2e.cluster import ClusterUnavailable

from .helm_chart import Chart

__all__ = ["chart"]


@pytest.fixture(scope="session")
def chart() -> Chart:
    """The dopd chart and the Helm of the cluster build; fails with the command to run when absent."""
    found = Chart.offline()
    try:
        proc = found.helm("version", "--short")
    except ClusterUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"helm version failed: {proc.stderr}", pytrace=False)
    return found
