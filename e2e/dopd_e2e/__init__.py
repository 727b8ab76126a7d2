"""Helpers for dopd's end-to-end tests: a local Kubernetes control plane and a real Prometheus."""

from dopd_e2e.cluster import Cluster, ClusterUnavailable, start_cluster
from dopd_e2e.prometheus import Prometheus, PrometheusUnavailable, start_prometheus

__all__ = [
    "Cluster",
    "ClusterUnavailable",
    "Prometheus",
    "PrometheusUnavailable",
    "start_cluster",
    "start_prometheus",
]
