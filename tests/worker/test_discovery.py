"""The router's reading of EndpointSlices (discovery.k8s.io/v1): which pods take new work, which drain.

Addresses are in 198.18.0.0/15 (RFC 2544 benchmarking), as the local cluster's pods get them; nothing
here opens a connection.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dopd_worker.discovery import WorkerSet, worker_set_from_slices

ROLES = {"tiny-prefill": "prefill", "tiny-decode": "decode", "tiny-long": "prefill_long"}


def endpoint(ip: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions}


def eps(
    name: str,
    service: str,
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
    }


@pytest.mark.parametrize(
    ("conditions", "takes_new_work", "draining"),
    [
        pytest.param({"ready": True, "serving": True, "terminating": False}, True, False, id="ready"),
        pytest.param({}, True, False, id="no-conditions-means-ready"),  # the API: nil ready is true
        pytest.param({"ready": False, "serving": False}, False, False, id="starting-or-failing-readiness"),
        # a scale-down victim still passing readiness (the preStop sleep): serving, yet no new work
        pytest.param({"ready": False, "serving": True, "terminating": True}, False, True, id="terminating"),
        # a terminating pod whose worker already drains (its /health 503 failed readiness)
        pytest.param({"ready": False, "serving": False, "terminating": True}, False, True, id="draining"),
        # a malformed slice saying ready and terminating: terminating wins
        pytest.param({"ready": True, "terminating": True}, False, True, id="terminating-wins"),
    ],
)
def test_only_ready_endpoints_take_new_work_and_terminating_ones_drain(
    conditions: dict[str, bool], takes_new_work: bool, draining: bool
) -> None:
    slices = [eps("tiny-decode-abc", "tiny-decode", [endpoint("198.18.0.7", **conditions)])]
    workers = worker_set_from_slices(slices, ROLES, "http")
    assert workers.decode == (("http://198.18.0.7:8000",) if takes_new_work else ())
    assert workers.draining == (("http://198.18.0.7:8000",) if draining else ())


def test_slices_of_each_role_service_merge_and_others_are_ignored() -> None:
    slices = [
        eps("tiny-prefill-a", "tiny-prefill", [endpoint("198.18.0.3", ready=True)]),
        # a Service's endpoints spread over two slices
        eps("tiny-prefill-b", "tiny-prefill", [endpoint("198.18.0.2", ready=True)]),
        eps("tiny-long-a", "tiny-long", [endpoint("198.18.0.9", ready=True)]),
        eps("tiny-decode-a", "tiny-decode", [endpoint("198.18.0.5", ready=True)]),
        eps("other-a", "something-else", [endpoint("198.18.0.99", ready=True)]),
    ]
    assert worker_set_from_slices(slices, ROLES, "http") == WorkerSet(
        prefill=("http://198.18.0.2:8000", "http://198.18.0.3:8000"),
        prefill_long=("http://198.18.0.9:8000",),
        decode=("http://198.18.0.5:8000",),
    )


def test_the_named_port_is_used_and_a_slice_without_it_lists_nothing() -> None:
    two_ports = [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8001}]
    slices = [
        eps("d-a", "tiny-decode", [endpoint("198.18.0.5", ready=True)], ports=two_ports),
        eps("d-b", "tiny-decode", [endpoint("198.18.0.6", ready=True)], ports=[{"name": "grpc", "port": 1}]),
        # a Service with one unnamed port: that port
        eps("p-a", "tiny-prefill", [endpoint("198.18.0.2", ready=True)], ports=[{"port": 8002}]),
    ]
    workers = worker_set_from_slices(slices, ROLES, "http")
    assert workers.decode == ("http://198.18.0.5:8001",)
    assert workers.prefill == ("http://198.18.0.2:8002",)


def test_a_pod_listed_twice_while_slices_are_rewritten_counts_once_and_ready_wins() -> None:
    slices = [
        eps("d-old", "tiny-decode", [endpoint("198.18.0.5", ready=False)]),
        eps("d-new", "tiny-decode", [endpoint("198.18.0.5", ready=True)]),
    ]
    assert worker_set_from_slices(slices, ROLES, "http").decode == ("http://198.18.0.5:8000",)


def test_ipv6_addresses_are_bracketed() -> None:
    slices = [eps("d", "tiny-decode", [endpoint("2001:db8::5", ready=True)], address_type="IPv6")]
    assert worker_set_from_slices(slices, ROLES, "http").decode == ("http://[2001:db8::5]:8000",)


def test_empty_slices_list_nothing() -> None:
    # the controller writes `endpoints: null` for a Service with no pods
    slices = [eps("d", "tiny-decode", []), {**eps("p", "tiny-prefill", []), "endpoints": None}]
    assert worker_set_from_slices(slices, ROLES, "http") == WorkerSet()


def test_a_slice_without_its_address_type_is_refused_loudly() -> None:
    broken = eps("d", "tiny-decode", [endpoint("198.18.0.5", ready=True)])
    del broken["addressType"]
    with pytest.raises(ValidationError, match="addressType"):
        worker_set_from_slices([broken], ROLES, "http")
