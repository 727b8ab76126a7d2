"""Run a real Prometheus (Debian's /usr/bin/prometheus) for tests and the demo.

Each instance listens on a free 127.0.0.1 port, scrapes the given targets every ``scrape_interval``
with a generated config, and keeps its TSDB in a temp dir that is removed on stop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dopd_worker.ports import free_ports

INSTALL_HINT = "run `make prometheus-install` (e2e/cluster/install-prometheus.sh)"


class PrometheusUnavailable(RuntimeError):
    """Prometheus is not installed or did not become ready; the message says what to run."""


def find_prometheus() -> str:
    """Path of the prometheus binary ($DOPD_PROMETHEUS_BIN, /usr/bin/prometheus or PATH)."""
    for candidate in (
        os.environ.get("DOPD_PROMETHEUS_BIN"),
        "/usr/bin/prometheus",
        shutil.which("prometheus"),
    ):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise PrometheusUnavailable(f"prometheus binary not found; {INSTALL_HINT}")


def free_port() -> int:
    return free_ports(1)[0]


def scrape_config(
    targets: Sequence[str] | Mapping[str, Sequence[str]],
    scrape_interval: str = "1s",
) -> dict[str, Any]:
    """Prometheus config scraping ``targets`` ("127.0.0.1:PORT"); a mapping gives one job per key."""
    jobs: Mapping[str, Sequence[str]] = targets if isinstance(targets, Mapping) else {"dopd-e2e": targets}
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": list(tgts)}],
            }
            for job, tgts in jobs.items()
        ],
    }


@dataclass
class Prometheus:
    """A running Prometheus; ``url`` is its HTTP API base (http://127.0.0.1:PORT)."""

    url: str
    port: int
    work_dir: Path
    process: subprocess.Popen[bytes]
    _log: Any = field(repr=False, default=None)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its ``data`` (raises on error status)."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} failed: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list."""
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for {promql!r} after {timeout}s")
            time.sleep(0.25)

    def wait_targets_up(self, timeout: float = 30.0) -> None:
        """Wait until every active target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            active = self.api("targets")["activeTargets"]
            if active and all(t.get("health") == "up" for t in active):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not up after {timeout}s: {active}")
            time.sleep(0.25)

    def log_text(self) -> str:
        try:
            return (self.work_dir / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill leaves it (the data dir stays; `stop` removes it)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process and delete its data dir."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def start_prometheus(
    targets: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    scrape_interval: str = "1s",
    extra_config: Mapping[str, Any] | None = None,
    work_dir: Path | None = None,
    ready_timeout: float = 30.0,
    port: int | None = None,
) -> Prometheus:
    """Start Prometheus on a free 127.0.0.1 port (or `port`, to restart one where clients expect it)
    scraping ``targets``; returns once /-/ready answers."""
    binary = find_prometheus()
    work = work_dir or Path(tempfile.mkdtemp(prefix="dopd-e2e-prometheus-"))
    config = scrape_config(targets, scrape_interval)
    config.update(extra_config or {})
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (work / "data").mkdir(exist_ok=True)
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between probe and bind: retry
        listen = port if port is not None else free_port()
        log = (work / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{listen}",
                "--storage.tsdb.retention.time=1d",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        prom = Prometheus(
            url=f"http://127.0.0.1:{listen}", port=listen, work_dir=work, process=proc, _log=log
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return prom
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        last_error = prom.log_text()[-2000:]
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
    shutil.rmtree(work, ignore_errors=True)
    raise PrometheusUnavailable(f"prometheus did not become ready:\n{last_error}")
