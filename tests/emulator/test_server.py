"""The emulator as a process serves /metrics and its control endpoint on 127.0.0.1 in wall-clock time
(in-process through the Python API, and as `dopd emulate`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from emulator_helpers import PROMETHEUS_ACCEPT, spec_for

from dopd_emulator.cli import emulate
from dopd_emulator.config import EmulatorConfig, FamilyFault, Faults, StaticReplicas, TraceLoad
from dopd_emulator.emulator import Emulator

LOAD = TraceLoad(trace="synthetic:poisson,rate_rps=20,duration_s=120", seed=3)


def request(
    url: str, method: str = "GET", body: Any = None, accept: str | None = None
) -> tuple[int, str, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def eventually(what: str, check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    config = EmulatorConfig(
        namespace="llm",
        name="m1",
        spec=spec_for("vllm"),
        load=LOAD,
        replicas=StaticReplicas(prefill=1, decode=1),
    )
    with Emulator(config) as running:
        yield running


def truth(emulator: Emulator) -> dict[str, Any]:
    status, _, body = request(f"{emulator.url}/control/truth")
    assert status == 200
    document: dict[str, Any] = json.loads(body)
    return document


def test_metrics_and_truth_over_http_and_replicas_changed_through_the_control_endpoint(
    emulator: Emulator,
) -> None:
    status, content_type, body = request(f"{emulator.url}/metrics", accept=PROMETHEUS_ACCEPT)
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert (
        b'vllm_num_requests_running{engine="0",model_name="m",namespace="llm",pod="m1-decode-0",role="decode"}'
        in body
    )
    eventually("the first arrivals", lambda: truth(emulator)["arrivals_total"] > 0)
    assert truth(emulator)["ready"] == {"prefill": ["m1-prefill-0"], "decode": ["m1-decode-0"]}

    status, _, body = request(f"{emulator.url}/control/replicas", "PUT", {"prefill": 2, "decode": 3})
    assert status == 200, body
    eventually(
        "3 decode replicas",
        lambda: truth(emulator)["ready"]["decode"] == ["m1-decode-0", "m1-decode-1", "m1-decode-2"],
    )
    eventually("series of the new pod", lambda: b'pod="m1-decode-2"' in request(f"{emulator.url}/metrics")[2])
    status, _, body = request(f"{emulator.url}/control/replicas", "PUT", {"prefill": -1, "decode": 1})
    assert status == 400 and b"greater than or equal to 0" in body


def test_faults_through_the_control_endpoint(emulator: Emulator) -> None:
    faults = {"omit": [{"family": "vllm:kv_cache_usage_perc"}], "nan": [], "stale": False}
    status, _, body = request(f"{emulator.url}/control/faults", "PUT", faults)
    assert status == 200, body
    assert emulator.faults == Faults(omit=(FamilyFault(family="vllm:kv_cache_usage_perc"),))
    assert b"vllm:kv_cache_usage_perc" not in request(f"{emulator.url}/metrics")[2]

    status, _, body = request(f"{emulator.url}/control/faults", "PUT", {"stale": True})
    assert status == 200
    status, _, _ = request(f"{emulator.url}/metrics")
    assert status == 503  # Prometheus marks the target down and its series go stale
    assert (
        request(f"{emulator.url}/control/faults")[2]
        == json.dumps({"omit": [], "nan": [], "stale": True}).encode()
    )

    status, _, body = request(f"{emulator.url}/control/faults", "PUT", {"nan": [{"family": "vllm:kv_usage"}]})
    assert status == 400 and b"unknown families ['vllm:kv_usage']" in body
    status, _, body = request(f"{emulator.url}/control/faults", "PUT", b"{not json")
    assert status == 400 and b"invalid JSON" in body
    status, _, body = request(f"{emulator.url}/control/faults", "PUT", {"omit": "everything"})
    assert status == 400


def test_dopd_emulate_runs_until_terminated() -> None:
    command = [
        sys.executable,
        "-c",
        "from dopd_operator.cli import main; main()",
        "emulate",
        "--trace", "synthetic:poisson,rate_rps=5,duration_s=60",
        "--engine", "sglang",
        "--name", "m1",
        "--namespace", "llm",
        "--replicas-from", "static:1,2",
        "--port", "0",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert "sglang engines of llm/m1" in banner, banner + (
            process.stderr.read() if process.poll() else ""
        )
        port = int(process.stdout.readline().split()[1])
        status, _, body = request(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert (
            b'sglang:num_running_reqs{engine_type="decode",model_name="llama-3-8b",namespace="llm",pod="m1-decode-1"'
            in body
        )
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    assert returncode == 0


def test_dopd_emulate_refuses_a_bad_replica_source() -> None:
    result = CliRunner().invoke(
        emulate, ["--trace", "synthetic:poisson", "--name", "m1", "--replicas-from", "static:2"]
    )
    assert result.exit_code == 2
    assert "expected 'cluster' or 'static:P,D'" in result.output
