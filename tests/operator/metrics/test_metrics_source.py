"""MetricsSource against faults a real Prometheus cannot produce on demand for dopd's (valid) queries:
nothing listening, an HTTP error, an answer of the wrong shape. A plain HTTP server on 127.0.0.1 plays
Prometheus; the real one is in e2e/test_metrics_presets.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dopd_builders import make_spec
from dopd_operator.errors import MetricsUnavailable, SpecError
from dopd_operator.metrics.source import MetricsOptions, MetricsSource
from dopd_operator.planner_types import Observation, RoleObservation


@dataclass(frozen=True)
class Endpoint:
    url: str
    ca_file: Path | None = None
    timeout_seconds: float = 5.0
    token_file: Path | None = None

    def bearer_token(self) -> str | None:
        return self.token_file.read_text().strip() if self.token_file else None


@dataclass
class FakePrometheus:
    """Answers every POST with `status` and `body`; records the requests' Authorization headers."""

    status: int = 200
    body: object = field(
        default_factory=lambda: {"status": "success", "data": {"resultType": "vector", "result": []}}
    )
    authorizations: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    state = FakePrometheus()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.authorizations.append(self.headers.get("Authorization"))
            payload = (state.body if isinstance(state.body, str) else json.dumps(state.body)).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _observe(endpoint: Endpoint, **spec: object) -> Observation:
    source = MetricsSource(endpoint, MetricsOptions(scrape_interval_seconds=1.0))
    try:
        role = RoleObservation(current=1, ready=1)
        return asyncio.run(source.observe(make_spec(**spec), "llm", role, role))
    finally:
        source.close()


def test_nothing_listening_is_metrics_unavailable() -> None:
    with socket.socket() as probe:  # bind a free port, then release it: nothing listens there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(
        MetricsUnavailable, match=r"did not answer the (aggregate|raw) query: ConnectionError"
    ) as failure:
        _observe(Endpoint(url))
    # the cause, not the request URL (the whole query, which would fill the condition and the Event)
    assert str(failure.value).endswith("Connection refused"), str(failure.value)
    assert "query=" not in str(failure.value)


def test_a_refused_query_is_metrics_unavailable_with_the_cause(fake: FakePrometheus) -> None:
    fake.status = 400
    fake.body = {"status": "error", "errorType": "bad_data", "error": "parse error at char 7"}
    with pytest.raises(MetricsUnavailable, match=r"refused the .* query: .*parse error at char 7"):
        _observe(Endpoint(fake.url))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("<html>a proxy's login page</html>", id="not-json"),
        pytest.param(
            {"status": "success", "data": {"result": [{"metric": {}, "value": "x"}]}}, id="wrong-shape"
        ),
        pytest.param({"status": "success"}, id="no-data"),
    ],
)
def test_an_unreadable_answer_is_metrics_unavailable(fake: FakePrometheus, body: object) -> None:
    fake.body = body
    with pytest.raises(MetricsUnavailable, match=r"unreadable|unexpected"):
        _observe(Endpoint(fake.url))


def test_an_empty_answer_is_an_observation_of_unknowns_not_an_error(fake: FakePrometheus) -> None:
    obs = _observe(Endpoint(fake.url))
    assert obs.arrival_rate_rps is None and obs.input_tokens_mean is None
    assert 'arrival rate: no series of dopd_requests_arrived_total{role=~"router"}' in obs.problems


def test_the_bearer_token_file_is_read_at_each_request(fake: FakePrometheus, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    endpoint = Endpoint(fake.url, token_file=token)
    _observe(endpoint)
    token.write_text("rotated")
    _observe(endpoint)
    assert fake.authorizations == ["Bearer first"] * 2 + ["Bearer rotated"] * 2


def test_a_bad_selector_fails_as_a_spec_error_before_any_request(fake: FakePrometheus) -> None:
    with pytest.raises(SpecError, match=r"spec\.metrics\.selector"):
        _observe(Endpoint(fake.url), metrics={"selector": {"app.kubernetes.io/name": "x"}})
    assert fake.authorizations == []
