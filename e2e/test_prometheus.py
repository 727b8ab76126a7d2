"""A real Prometheus (Debian's 2.42) scrapes a prometheus_client exporter on 127.0.0.1 and answers
instant and range queries through prometheus-api-client, as the operator's metrics layer will use it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from dopd_e2e.prometheus import Prometheus, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def exporter() -> Iterator[tuple[str, Gauge, Counter, Gauge]]:
    registry = CollectorRegistry()
    waiting = Gauge("dopd_e2e_queue_depth", "Requests waiting", ["role"], registry=registry)
    served = Counter("dopd_e2e_requests", "Requests served", ["role"], registry=registry)
    # a vLLM-style name: scraped through OpenMetrics negotiation, ':' comes back as '_'
    colon = Gauge("vllm:num_requests_waiting", "vLLM-style metric name", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}", waiting, served, colon
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_prometheus_scrapes_an_exporter_and_answers_instant_and_range_queries(
    prometheus_factory: Callable[..., Prometheus], exporter: tuple[str, Gauge, Counter, Gauge]
) -> None:
    target, waiting, served, colon = exporter
    waiting.labels(role="prefill").set(7)
    waiting.labels(role="decode").set(3)
    served.labels(role="decode").inc(5)
    colon.set(4)

    prom = prometheus_factory([target])
    assert prom.url.startswith("http://127.0.0.1:")
    prom.wait_targets_up()
    client = PrometheusConnect(url=prom.url, disable_ssl=True)

    prom.wait_for('dopd_e2e_queue_depth{role="prefill"}')
    instant: list[dict[str, Any]] = client.custom_query("sum by (role) (dopd_e2e_queue_depth)")
    by_role = {r["metric"]["role"]: float(r["value"][1]) for r in instant}
    assert by_role == {"prefill": 7.0, "decode": 3.0}

    counter = client.custom_query('dopd_e2e_requests_total{role="decode"}')
    assert float(counter[0]["value"][1]) == 5.0

    colon_result = client.custom_query("vllm_num_requests_waiting")
    assert [float(r["value"][1]) for r in colon_result] == [4.0]
    assert client.custom_query('{__name__="vllm:num_requests_waiting"}') == []

    # change the value and let a few 1 s scrapes land, then read both values back as a range
    start = dt.datetime.now(tz=dt.UTC) - dt.timedelta(seconds=5)
    time.sleep(1.5)
    waiting.labels(role="prefill").set(11)
    prom.wait_for('dopd_e2e_queue_depth{role="prefill"} == 11')
    time.sleep(1.5)
    end = dt.datetime.now(tz=dt.UTC)
    ranged = client.custom_query_range(
        'dopd_e2e_queue_depth{role="prefill"}', start_time=start, end_time=end, step="1s"
    )
    assert len(ranged) == 1
    values = [float(v) for _, v in ranged[0]["values"]]
    assert len(values) >= 3
    assert values[0] == 7.0 and values[-1] == 11.0
    assert set(values) == {7.0, 11.0}


def test_prometheus_instances_are_isolated_and_stop_cleanly(
    prometheus_factory: Callable[..., Prometheus], exporter: tuple[str, Gauge, Counter, Gauge]
) -> None:
    target, _, _, _ = exporter
    first = prometheus_factory({"job-a": [target]})
    second = prometheus_factory({"job-b": [target]})
    assert first.port != second.port
    first.wait_targets_up()
    jobs = {r["metric"]["job"] for r in first.wait_for("up")}
    assert jobs == {"job-a"}
    work_dir = first.work_dir
    first.stop()
    assert first.process.poll() is not None
    assert not work_dir.exists()
    second.wait_targets_up()
    assert {r["metric"]["job"] for r in second.wait_for("up")} == {"job-b"}
