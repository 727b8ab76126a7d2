"""`make demo`: dopd at work on a local Kubernetes cluster, live in the terminal, from a bare machine.

1. Builds the cluster binaries the first time (Kubernetes, etcd, KWOK, Helm from the Go module proxy,
   cached in ~/.cache/dopd; about 10 minutes on two idle cores), with progress and an estimate.
2. Starts the local cluster (a real API server, four KWOK nodes of eight fake GPUs) and a Prometheus
   scraping every second, all on 127.0.0.1.
3. `helm install dopd charts/dopd`; the operator runs on the host with the chart's ServiceAccount token
   and the environment of the Deployment the chart rendered (dopd_e2e.release: KWOK pods run nothing).
4. Applies examples/vllm-llama3-8b.yaml at a demo's pace (decisions every 5 s, not 30) and starts the
   engine emulator (`dopd emulate`) following its pods, under a day of diurnal load squeezed into minutes.
5. Prints one line per operator tick, read from the DisaggregatedModel's status and Events.
6. Replays the same requests with the same manifest through the simulator, writes demo-report/
   (report.md, timeline.png, the data), and stops everything it started, also on Ctrl-C or a failure.

    python scripts/demo.py [--minutes-per-day 3] [--days 1.25] [--mean-rps 45] [--out demo-report]

Callers: the Makefile's `demo` target. The report is written by demo_report.py beside this file;
docs/demo.md explains what the demo shows and what differs from a real cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "e2e"))  # the e2e harness (dopd_e2e) is not an installed package

from demo_report import DemoRun, ScaleEvent, Tick, true_attainment, write_report  # noqa: E402

from dopd_e2e.cluster import CLUSTER_DIR, Cluster, check_binaries, default_bin_dir, start_cluster  # noqa: E402
from dopd_e2e.operator import OperatorFailed, OperatorProcess, wait_until  # noqa: E402
from dopd_e2e.prometheus import PrometheusUnavailable, find_prometheus, free_port, start_prometheus  # noqa: E402
from dopd_e2e.release import HostedRelease  # noqa: E402

EXAMPLE = REPO / "examples" / "vllm-llama3-8b.yaml"
# The example decides every 30 s and expects vLLM pods to take 3 minutes to start; KWOK's pods are Ready
# within a second or two and the demo's day lasts minutes, so it runs at a demo's pace.
DEMO_PACE: dict[str, Any] = {
    "prefill": {"startupSeconds": 10},
    "decode": {"startupSeconds": 10},
    "scaling": {"intervalSeconds": 5, "scaleDown": {"stabilizationSeconds": 30}},
    "metrics": {"windowSeconds": 15},
    "forecast": {"historySeconds": 600},
}
SCRAPE_SECONDS = 1
DAY_SECONDS = 86400.0
# docs/local-cluster.md, "Cold build time": measured on two cores, idle and shared.
BUILD_MINUTES_IDLE, BUILD_MINUTES_BUSY = 10, 25


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n==> {text}")


def took(started: float) -> str:
    seconds = time.monotonic() - started
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def ensure_binaries() -> None:
    """Build the cluster binaries when missing (e2e/cluster/build.sh), printing progress meanwhile."""
    bin_dir = default_bin_dir()
    missing = check_binaries(bin_dir)
    if not missing:
        say(f"cluster binaries: cached in {bin_dir}")
        return
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    say(
        f"cluster binaries missing in {bin_dir} ({', '.join(missing)}).\n"
        f"Building them from the Go module proxy once; later runs reuse them. Measured: about "
        f"{BUILD_MINUTES_IDLE} min on two idle cores, about {BUILD_MINUTES_BUSY} min on busy ones "
        f"(this machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, so expect about "
        f"{BUILD_MINUTES_BUSY if busy else BUILD_MINUTES_IDLE} min). Needs Go, and about 6 GB for Go's caches."
    )
    started = time.monotonic()
    done = threading.Event()

    def progress() -> None:
        while not done.wait(30):
            left = check_binaries(bin_dir)  # build.sh --check: present and of the pinned version
            say(
                f"  ... building for {took(started)}: {len(missing) - len(left)} of {len(missing)} binaries done"
            )

    ticker = threading.Thread(target=progress, daemon=True)
    ticker.start()
    # its own process group, so that Ctrl-C (or a failure here) stops the whole build, go and all
    build = subprocess.Popen([str(CLUSTER_DIR / "build.sh")], start_new_session=True)
    try:
        if build.wait() != 0:
            raise RuntimeError(f"e2e/cluster/build.sh failed (exit {build.returncode}); its output is above")
    finally:
        done.set()
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGTERM)
            build.wait(timeout=30)
    say(f"cluster binaries built in {took(started)}")


def demo_model(out: Path) -> tuple[dict[str, Any], Path]:
    """The example with DEMO_PACE merged into its spec, written where `kubectl apply` and the simulator
    read it."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        merged = copy.deepcopy(base)
        for key, value in extra.items():
            merged[key] = merge(merged.get(key, {}), value) if isinstance(value, dict) else value
        return merged

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"] = merge(doc["spec"], DEMO_PACE)
    path = out / "model.yaml"
    path.write_text(
        f"# {EXAMPLE.relative_to(REPO)} at the demo's pace (scripts/demo.py)\n" + yaml.safe_dump(doc)
    )
    return doc, path


@contextlib.contextmanager
def emulator(
    cluster: Cluster, model: Path, load: str, compression: float, port: int, log: Path
) -> Iterator[str]:
    """`dopd emulate` on `port`, following the model's pods; yields its URL and stops it at the end."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "dopd_operator.cli", "emulate", "-f", str(model), "--trace", load,
                "--time-compression", f"{compression:g}", "--at-end", "stop", "--port", str(port),
                "--kubeconfig", str(cluster.kubeconfig), "--log-every", "30",
            ],
            env=cluster.run_env(), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops it in order
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(
                lambda: process.poll() is not None or _answers(f"{url}/control/truth"), 60, "the emulator"
            )
            if process.poll() is not None:
                raise RuntimeError(f"dopd emulate exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            yield url
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Follower:
    """Watches the DisaggregatedModel as `kubectl get dm -w` would, and prints one line per decision."""

    HEADER = f"{'time':>5} {'day':>5} {'load':>6} {'sent':>6} {'fcst':>6}  {'prefill':>7} {'decode':>6} {'P/D':>5} {'GPUs':>4} {'SLO':>6} {'met':>6}  why"

    def __init__(self, cluster: Cluster, namespace: str, name: str, emulator_url: str, run: DemoRun) -> None:
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        self.objects = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace, self.name, self.emulator_url, self.run = namespace, name, emulator_url, run
        self.seen_events: set[tuple[str, int]] = set()

    def follow(self, load_started: float, operator: OperatorProcess) -> None:
        """Until the load ends: poll the status every second; a new lastDecision is a tick."""
        say("time: into the load; day: the hour of the compressed day; load: what the operator measured;")
        say("sent: what the emulator received (last 10 s); fcst: the forecast it sizes for; prefill/decode:")
        say(
            "ready/decided; SLO: attainment it measured over its metrics window; met: requests finished since"
        )
        say("the line before that met both SLOs (the emulator's ground truth); why: what it did")
        say(self.HEADER)
        last_decision: str | None = None
        while (now := time.monotonic() - load_started) < self.run.load_seconds:  # bounded by the load
            time.sleep(1.0)
            if not operator.alive():
                raise OperatorFailed(f"the operator exited ({operator.process.returncode}); see its log")
            body = self.objects.get_namespaced_custom_object(
                "dopd.io", "v1alpha1", self.namespace, "disaggregatedmodels", self.name
            )
            status: dict[str, Any] = body.get("status") or {}  # type: ignore[attr-defined]
            decided = (status.get("lastDecision") or {}).get("time")
            if decided is None or decided == last_decision:
                continue
            last_decision = decided
            events = self._new_events(now)
            tick = self._tick(now, status, events)
            self.run.ticks.append(tick)
            say(self._line(tick, true_attainment(self.run.ticks[-2:])[-1]))

    def _new_events(self, now: float) -> list[ScaleEvent]:
        found = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name}"
        ).items
        fresh = []
        for event in sorted(found, key=lambda e: str(e.last_timestamp or e.event_time)):
            key = (str(event.metadata.uid), event.count or 1)
            if key not in self.seen_events:
                self.seen_events.add(key)
                fresh.append(ScaleEvent(round(now, 1), str(event.reason), str(event.message)))
        self.run.events.extend(fresh)
        return fresh

    def _tick(self, now: float, status: dict[str, Any], events: list[ScaleEvent]) -> Tick:
        load = status.get("load") or {}
        forecast = status.get("forecast") or {}
        attainment = status.get("sloAttainment") or {}
        prefill, decode = status.get("prefill") or {}, status.get("decode") or {}
        truth = self._truth()
        return Tick(
            t_s=round(now, 1),
            load_rps=_number(load.get("arrivalRateRps")),
            true_rps=_number(truth["arrival_rate_rps"]),
            forecast_model=forecast.get("model"),
            forecast_horizon_s=_number(forecast.get("horizonSeconds")),
            forecast_mean_rps=_number(forecast.get("arrivalRateRpsMean")),
            forecast_upper_rps=_number(forecast.get("arrivalRateRpsUpper")),
            prefill_desired=int(prefill.get("desired", 0)),
            prefill_ready=int(prefill.get("ready", 0)),
            decode_desired=int(decode.get("desired", 0)),
            decode_ready=int(decode.get("ready", 0)),
            gpus=int(status.get("gpus") or 0),
            ttft_attainment=_number(attainment.get("ttft")),
            tpot_attainment=_number(attainment.get("tpot")),
            why=_why(status, events),
            **_request_counts(truth),
        )

    def _truth(self) -> dict[str, Any]:
        """The emulator's ground truth (`GroundTruth` as JSON)."""
        with urllib.request.urlopen(f"{self.emulator_url}/control/truth", timeout=5) as response:
            truth: dict[str, Any] = json.load(response)
        return truth

    def finish(self) -> None:
        """Record the ground truth's whole-run counts once the load has ended."""
        counts = _request_counts(self._truth())
        self.run.requests_finished, self.run.requests_met = (
            counts["requests_finished"],
            counts["requests_met"],
        )

    def _line(self, tick: Tick, met_share: float | None) -> str:
        def rate(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        day_hours = tick.t_s * self.run.compression / 3600.0 % 24
        ratio = "-" if not tick.decode_desired else f"{tick.prefill_desired / tick.decode_desired:.2f}"
        slo = "-" if tick.attainment is None else f"{100 * tick.attainment:.1f}%"
        met = "-" if met_share is None else f"{100 * met_share:.1f}%"
        return (
            f"{int(tick.t_s // 60)}:{int(tick.t_s % 60):02d} {int(day_hours):02d}:{int(day_hours % 1 * 60):02d} "
            f"{rate(tick.load_rps):>6} {rate(tick.true_rps):>6} {rate(tick.forecast_upper_rps):>6}  "
            f"{tick.prefill_ready:>3}/{tick.prefill_desired:<3} {tick.decode_ready:>2}/{tick.decode_desired:<3} "
            f"{ratio:>5} {tick.gpus:>4} {slo:>6} {met:>6}  {tick.why}"
        )


def _request_counts(truth: dict[str, Any]) -> dict[str, int]:
    """The ground truth's requests finished (completed or turned away) and those within both SLOs."""
    return {
        "requests_finished": int(truth["completed_total"]) + int(truth["rejected_total"]),
        "requests_met": int(truth["slo_met_total"]),
    }


def _number(value: Any) -> float | None:
    """A status number (JSON may carry 1 for 1.0); None stays None: unknown is not zero."""
    return None if value is None else float(value)


def _why(status: dict[str, Any], events: list[ScaleEvent]) -> str:
    """What this decision did, shortest first: its Events, else the limit that held it, else why it held."""
    if events:
        return "; ".join(f"{e.reason} {e.message.split(':', 1)[0]}" for e in events)
    clamps = [c for c in (status.get("lastDecision") or {}).get("clamps") or [] if c["before"] != c["after"]]
    if clamps:
        # a clamp moved the planner's number (before) to what was decided (after)
        return "; ".join(f"{c['stage']}: {c['role']} {c['after']} (planner {c['before']})" for c in clamps)
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    metrics = conditions.get("MetricsHealthy")
    if metrics is not None and metrics["status"] != "True":
        return f"holding: {metrics['reason']}"
    return "no change"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--minutes-per-day", type=float, default=3.0, help="wall minutes one day of load lasts"
    )
    parser.add_argument("--days", type=float, default=1.25, help="days of diurnal load to replay")
    parser.add_argument(
        "--mean-rps", type=float, default=45.0, help="mean arrival rate as the engines see it"
    )
    parser.add_argument("--out", type=Path, default=REPO / "demo-report", help="where the report goes")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / f"dopd-demo-{os.getuid()}",
        help="the demo cluster's state (its own, apart from `make cluster-up`'s)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, stack: contextlib.ExitStack, demo_started: float) -> Path:
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    compression = DAY_SECONDS / (args.minutes_per_day * 60)
    load_seconds = args.days * DAY_SECONDS / compression
    load = (
        f"synthetic:diurnal,mean_rps={args.mean_rps / compression:.6g},"
        f"duration_s={args.days * DAY_SECONDS:g},period_s={DAY_SECONDS:g}"
    )

    step("1/6  the local cluster's binaries")
    ensure_binaries()
    try:
        find_prometheus()
    except PrometheusUnavailable as exc:
        raise SystemExit(f"{exc} (make demo installs it)") from exc

    step(f"2/6  a local cluster: real API server, 4 KWOK nodes x 8 GPUs (state in {args.state_dir})")
    started = time.monotonic()
    cluster = start_cluster(args.state_dir, nodes=4, gpus_per_node=8, mode="local")
    stack.callback(cluster.stop)
    emulator_port = free_port()
    prometheus = start_prometheus(
        {"engines": [f"127.0.0.1:{emulator_port}"]}, scrape_interval=f"{SCRAPE_SECONDS}s"
    )
    stack.callback(prometheus.stop)
    say(
        f"cluster up and Prometheus on {prometheus.url} (scraping every {SCRAPE_SECONDS} s) in {took(started)}"
    )
    say(f"  kubectl: export KUBECONFIG={cluster.kubeconfig}")

    step("3/6  helm install dopd charts/dopd")
    started = time.monotonic()
    release = HostedRelease(
        cluster, work=Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dopd-demo-")))
    )
    stack.callback(lambda: _keep_logs(release, out))
    stack.callback(release.stop)
    extra_env = f'extraEnv=[{{"name":"DOPD_SCRAPE_INTERVAL_SECONDS","value":"{SCRAPE_SECONDS}"}}]'
    say(
        f"$ helm install dopd charts/dopd -n dopd-system --create-namespace \\\n    --set prometheus.url={prometheus.url} --set-json '{extra_env}'"
    )
    installed = release.install("--set", f"prometheus.url={prometheus.url}", "--set-json", extra_env)
    status_line = next(line for line in installed.stdout.splitlines() if line.startswith("STATUS:"))
    say(f"{status_line} (in {took(started)}); the chart's operator runs on the host as ServiceAccount "
        f"dopd-system/{release.container.service_account if release.container else '?'}, with the Deployment's environment")  # fmt: skip

    step(f"4/6  kubectl apply -f {EXAMPLE.relative_to(REPO)} (at the demo's pace) and the engine emulator")
    doc, model_path = demo_model(out)
    namespace, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    cluster.kubectl("create", "namespace", namespace)
    say(cluster.kubectl("apply", "-f", str(model_path)).stdout.strip())
    say(f"  pace: {yaml.safe_dump(DEMO_PACE, default_flow_style=True, width=200).strip()}")
    say(
        f"  load: one day of diurnal traffic (peak 4x the trough) in {args.minutes_per_day:g} min "
        f"({compression:g}x), {args.days:g} days, {args.mean_rps:g} rps on average"
    )
    emulator_url = stack.enter_context(
        emulator(cluster, model_path, load, compression, emulator_port, out / "logs" / "emulator.log")
    )
    load_started = time.monotonic()

    step(
        f"5/6  the operator, live: one line per decision (every {DEMO_PACE['scaling']['intervalSeconds']} s)"
    )
    demo = DemoRun(
        model_path=model_path, load=load, compression=compression, load_seconds=load_seconds, ticks=[]
    )
    if release.process is None:
        raise OperatorFailed("the chart rendered no operator Deployment")
    follower = Follower(cluster, namespace, name, emulator_url, demo)
    follower.follow(load_started, release.process)
    follower.finish()

    step("6/6  the same requests and manifest through the simulator; the report")
    demo.wall_seconds = time.monotonic() - demo_started
    return write_report(out, demo)


def _keep_logs(release: HostedRelease, out: Path) -> None:
    for index, process in enumerate(release.started):
        shutil.copy(process.log_path, out / "logs" / f"operator-{index + 1}.log")
        shutil.rmtree(process.work_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            report = run(args, stack, started)
        except KeyboardInterrupt:
            say("\ninterrupted")
            return 130
        except Exception:
            traceback.print_exc()
            say(f"\nthe demo failed (above); logs in {args.out / 'logs'}. Stopping everything it started.")
            return 1
        finally:
            say("\nstopping everything the demo started ...")
    say(
        f"done in {took(started)}. Report: {report.relative_to(REPO) if report.is_relative_to(REPO) else report}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
