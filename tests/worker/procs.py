"""Process helpers for the worker tests: real worker/router subprocesses on 127.0.0.1 free ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dopd_worker.ports import free_ports


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Cluster:
    """Starts processes, waits for their /health, and kills every one of them at the end."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        wait: bool = True,
        port: int | None = None,  # a given port: a new process at an old process's address
    ) -> Proc:
        # The HTTP and KV ports from one call, so they differ. A given port (a stopped process's, free
        # again) could be among them: one spare is taken and the given port dropped.
        fresh = iter([p for p in free_ports(3) if p != port])
        port = port or next(fresh)
        log_path = self.tmp / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "dopd_worker",
            *args,
            "--port",
            str(port),
            "--log-level",
            os.environ.get("DOPD_TEST_LOG_LEVEL", "warning"),
        ]
        if args[0] == "worker":
            cmd += ["--transfer-timeout-seconds", "8"]
        if args[0] == "worker" and "decode" in args:
            cmd += ["--kv-port", str(next(fresh))]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        popen = subprocess.Popen(
            cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        proc = Proc(name, popen, f"http://127.0.0.1:{port}", log_path)
        self.procs.append(proc)
        if wait:
            self.wait_healthy(proc)
        return proc

    def wait_healthy(self, proc: Proc, timeout_seconds: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
            try:
                if httpx.get(f"{proc.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name} not healthy after {timeout_seconds}s:\n{proc.log()}")

    def wait_router_sees(
        self, router: Proc, healthy_urls: set[str], timeout_seconds: float = 30.0, only: bool = False
    ) -> None:
        """Until the router sees every one of `healthy_urls` healthy in its workers file (and, with
        `only`, no other worker there)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            workers = httpx.get(f"{router.url}/workers", timeout=2.0).json()
            present = {u for u, w in workers.items() if w["present"]}
            seen = {u for u in present if workers[u]["healthy"]}
            if healthy_urls <= seen and (not only or present == healthy_urls):
                return
            time.sleep(0.1)
        wanted = "only" if only else "at least"
        raise RuntimeError(f"router does not see {wanted} {healthy_urls} healthy: {workers}")

    def start_serving(
        self, name: str, checkpoint: str, kv_cache_tokens: tuple[int, int], *router_flags: str
    ) -> tuple[Proc, Proc, Proc]:
        """One prefill and one decode worker of `checkpoint` (KV capacities in tokens, in that order),
        started together, and a router in front of them with `router_flags`; returned once the router
        sees both healthy: (prefill, decode, router)."""
        prefill, decode = (
            self.start(
                f"{name}-{role}",
                ["worker", "--role", role, "--model", checkpoint, "--kv-cache-tokens", str(tokens)],
                wait=False,
            )
            for role, tokens in zip(("prefill", "decode"), kv_cache_tokens, strict=True)
        )
        self.wait_healthy(prefill)
        self.wait_healthy(decode)
        router = self.start(
            f"{name}-router",
            router_args(checkpoint, *("--prefill", prefill.url, "--decode", decode.url), *router_flags),
        )
        self.wait_router_sees(router, {prefill.url, decode.url})
        return prefill, decode, router

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                os.killpg(proc.popen.pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)


SERVED_MODEL_NAME = "tiny-test"


def metric_sample(metrics_text: str, series: str) -> float | None:
    """The value of one series (`name{labels}` exactly as exposed) in a /metrics text; None if absent."""
    for line in metrics_text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def router_args(model: str, *flags: str) -> list[str]:
    """`dopd router` serving `model` as SERVED_MODEL_NAME, plus the test's own flags."""
    return ["router", "--model", model, "--served-model-name", SERVED_MODEL_NAME, *flags]


def write_workers_file(
    path: Path, prefill: list[str], decode: list[str], prefill_long: list[str] | None = None
) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"prefill": prefill, "decode": decode, "prefill_long": prefill_long or []}))
    tmp.replace(path)
