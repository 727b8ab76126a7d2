"""Operator scale benchmark: one `dopd run` process with MODELS DisaggregatedModels at a 15 s interval,
against the local control plane, a real Prometheus and the engine emulators. Writes
docs/benchmarks/operator.md, stamped with the commit.

Measured on the operator process only (its own /proc and /metrics): CPU (cores, averaged over the
measurement window), resident memory (peak), tick latency p50/p99 (its tick histogram), the forecast +
plan part of a tick, and the API-server and Prometheus requests it sends per tick. Targets (issue 10):
under one core on average, p99 tick under 2 s, memory under 1 GiB.

Everything shares the machine's cores (API server, etcd, KWOK, Prometheus, the emulators), as it
would not in production: the report says so. The emulators serve fixed replica counts
(`StaticReplicas`) rather than following the pods: MODELS pod listers would load the API server for
nothing the operator's cost depends on. EMULATORS engines (20 by default) serve the series: model i
selects engine i mod EMULATORS's `model_name`, so several models read the same series. The operator's
work per model is the same either way (its own queries, history, forecaster and status); 200 emulators
in one Python process on two cores answer scrapes too late (Prometheus times them out, and they pile up
threads), which would measure the emulators, not dopd.

    python bench/operator_bench.py [--models 200] [--emulators 20] [--warmup-seconds 360] [--measure-seconds 600]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))

import yaml  # noqa: E402
from sim_bench import stamp as commit_stamp  # noqa: E402  (the stamp every benchmark page carries)

from dopd_e2e.cluster import start_cluster  # noqa: E402
from dopd_e2e.operator import install_crd, start_operator, wait_until  # noqa: E402
from dopd_e2e.prometheus import start_prometheus  # noqa: E402
from dopd_emulator.config import EmulatorConfig, StaticReplicas, TraceLoad  # noqa: E402
from dopd_emulator.emulator import Emulator  # noqa: E402
from dopd_operator.api import DisaggregatedModel  # noqa: E402
from dopd_operator.metrics.estimators import bucket_quantile  # noqa: E402

OUT = ROOT / "docs" / "benchmarks" / "operator.md"
NAMESPACE = "bench"
INTERVAL_SECONDS = 15
SCRAPE = "15s"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGE = "dopd_operator_tick_stage_seconds"
REFIT = "dopd_operator_forecast_refit_seconds"
WAITING = "dopd_operator_forecast_refits_waiting"


def engine_name(engine: int) -> str:
    return f"org/engine-{engine:03d}"


def manifest(index: int, engine: int) -> dict[str, Any]:
    """Model `index`, reading the series of emulator `engine`."""
    name = f"m{index:03d}"
    return {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "engine": "vllm",
            "model": engine_name(engine),
            "prefill": {"minReplicas": 1, "maxReplicas": 4, "startupSeconds": 60},
            "decode": {"minReplicas": 1, "maxReplicas": 4, "startupSeconds": 60},
            "scaling": {"intervalSeconds": INTERVAL_SECONDS},
            "profile": {"preset": "llama3-8b-h100"},
            "metrics": {"selector": {"model_name": engine_name(engine)}},
        },
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape(url: str) -> dict[str, float]:
    """Sample name with labels -> value, from the operator's /metrics."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def scrapes_up(prometheus_url: str, window_s: float) -> float | None:
    """The mean of `up` over the engines' targets in the last `window_s` (1.0: every scrape answered)."""
    query = urllib.parse.urlencode({"query": f'avg(avg_over_time(up{{job="engines"}}[{window_s:.0f}s]))'})
    try:
        with urllib.request.urlopen(f"{prometheus_url.rstrip('/')}/api/v1/query?{query}", timeout=30) as resp:
            found = json.loads(resp.read())["data"]["result"]
    except (OSError, ValueError, KeyError) as exc:  # the report says "unknown"; the run's numbers stand
        print(f"could not read the engines' scrape health from Prometheus: {exc}", flush=True)
        return None
    return float(found[0]["value"][1]) if found else None


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix)}


def histogram_quantile(samples: dict[str, float], family: str, q: float, label: str = "") -> float | None:
    """The q-quantile of the histogram `family` (of its series with `label`, e.g. 'stage="act"')."""
    buckets = []
    for key, count in samples.items():
        if key.startswith(f"{family}_bucket{{") and label in key:
            bound = key.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), count))
    buckets.sort()
    if (
        len(buckets) >= 2
        and buckets[-1][1] > 0
        and buckets[-1][1] - buckets[-2][1] > (1 - q) * buckets[-1][1]
    ):
        return math.inf  # in the +Inf bucket: PromQL would print the largest finite bound, which hides it
    increases = [
        (bound, count - (buckets[i - 1][1] if i else 0.0)) for i, (bound, count) in enumerate(buckets)
    ]
    return bucket_quantile(q, increases)


@dataclass
class Result:
    models: int
    engines: int
    scrapes_up: float | None  # the share of the engines' scrapes that succeeded in the window
    ticks: float
    measure_s: float
    cores: float
    rss_peak_mib: float
    tick_p50_s: float | None
    tick_p99_s: float | None
    fit_p50_s: float | None
    fit_p99_s: float | None
    metrics_p50_s: float | None
    metrics_p99_s: float | None
    act_p50_s: float | None
    act_p99_s: float | None
    refits: float
    refit_p50_s: float | None
    refit_p99_s: float | None
    refits_waiting_peak: float
    api_per_tick: dict[str, float]
    prom_per_tick: dict[str, float]
    errors: dict[str, float]
    machine_load: float


def run(models: int, engines: int, warmup_s: float, measure_s: float) -> Result:
    work = Path(tempfile.mkdtemp(prefix="dopd-operator-bench-"))
    gpus_needed = models * 2 * 4  # the maxima, so the scheduler never decides the result
    nodes = max(4, -(-gpus_needed // 256))
    cluster = start_cluster(work / "cluster", nodes=nodes, gpus_per_node=256)
    emulators: list[Emulator] = []
    prometheus = None
    operator = None
    try:
        install_crd(cluster)
        cluster.kubectl("create", "namespace", NAMESPACE)
        # Each emulator binds a port of its own (0: the kernel picks a free one) before Prometheus is told
        # it: ports chosen ahead could be taken meanwhile, by another emulator or by an outgoing connection.
        print(f"cluster ({nodes} nodes) up; starting {engines} emulators", flush=True)
        ports: list[int] = []
        for index in range(engines):
            doc = manifest(index, index)
            rate = 2.0 + (index % 10)  # 2..11 rps: some models need more than the minimum
            config = EmulatorConfig.for_model(
                DisaggregatedModel.model_validate(doc),
                load=TraceLoad(trace=f"synthetic:poisson,rate_rps={rate:g},duration_s=3600", seed=index),
                replicas=StaticReplicas(prefill=1, decode=1),
            ).model_copy(update={"port": 0, "step_seconds": 1.0, "log_every_seconds": 3600.0})
            emulator = Emulator(config)
            ports.append(emulator.start())
            emulators.append(emulator)
        prometheus = start_prometheus({"engines": [f"127.0.0.1:{p}" for p in ports]}, scrape_interval=SCRAPE)
        operator = start_operator(
            cluster,
            prometheus.url,
            namespaces=[NAMESPACE],
            env={"DOPD_SCRAPE_INTERVAL_SECONDS": "15", "DOPD_LOG_FORMAT": "json"},
            ready_timeout_s=120,
        )
        docs = "\n---\n".join(yaml.safe_dump(manifest(i, i % engines)) for i in range(models))
        cluster.kubectl("apply", "-f", "-", input=docs, timeout=300)
        print(f"{models} models applied; warming up {warmup_s:g}s", flush=True)

        def all_ticking() -> bool:
            listed = yaml.safe_load(
                cluster.kubectl("-n", NAMESPACE, "get", "dm", "-o", "yaml", timeout=120).stdout
            )
            return sum(1 for dm in listed["items"] if (dm.get("status") or {}).get("lastDecision")) == models

        wait_until(all_ticking, max(warmup_s, 300), "every model's first decision", interval_s=10)
        time.sleep(warmup_s)
        pid = operator.process.pid
        before = scrape(operator.metrics_url)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        load0 = os.getloadavg()[0]
        peak = rss_bytes(pid)
        waiting_peak = before.get(WAITING, 0.0)
        print(f"measuring {measure_s:g}s", flush=True)
        while time.monotonic() - t0 < measure_s:
            time.sleep(5)
            peak = max(peak, rss_bytes(pid))
            waiting_peak = max(waiting_peak, scrape(operator.metrics_url).get(WAITING, 0.0))
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        after = scrape(operator.metrics_url)
        window = delta(after, before, "dopd_operator_")
        ticks = sum(v for k, v in window.items() if k.startswith("dopd_operator_ticks_total"))
        api = {
            k.split("{")[1].rstrip("}"): v / max(ticks, 1)
            for k, v in window.items()
            if k.startswith("dopd_operator_api_requests_total") and v
        }
        prom = {
            k.split("{")[1].rstrip("}"): v / max(ticks, 1)
            for k, v in window.items()
            if k.startswith("dopd_operator_prometheus_queries_total") and v
        }
        errors = {k: v for k, v in window.items() if k.startswith("dopd_operator_errors_total") and v}
        return Result(
            models=models,
            engines=engines,
            scrapes_up=scrapes_up(prometheus.url, t1 - t0),
            ticks=ticks,
            measure_s=t1 - t0,
            cores=(cpu1 - cpu0) / (t1 - t0),
            rss_peak_mib=peak / 2**20,
            tick_p50_s=histogram_quantile(window, "dopd_operator_tick_duration_seconds", 0.5),
            tick_p99_s=histogram_quantile(window, "dopd_operator_tick_duration_seconds", 0.99),
            fit_p50_s=histogram_quantile(window, "dopd_operator_forecast_fit_seconds", 0.5),
            fit_p99_s=histogram_quantile(window, "dopd_operator_forecast_fit_seconds", 0.99),
            metrics_p50_s=histogram_quantile(window, STAGE, 0.5, 'stage="metrics"'),
            metrics_p99_s=histogram_quantile(window, STAGE, 0.99, 'stage="metrics"'),
            act_p50_s=histogram_quantile(window, STAGE, 0.5, 'stage="act"'),
            act_p99_s=histogram_quantile(window, STAGE, 0.99, 'stage="act"'),
            refits=window.get(f"{REFIT}_count", 0.0),
            refit_p50_s=histogram_quantile(window, REFIT, 0.5),
            refit_p99_s=histogram_quantile(window, REFIT, 0.99),
            refits_waiting_peak=waiting_peak,
            api_per_tick=api,
            prom_per_tick=prom,
            errors=errors,
            machine_load=(load0 + os.getloadavg()[0]) / 2,
        )
    finally:
        if operator is not None:
            operator.stop()
        # Concurrently: one by one, each stop waits out a serve loop's poll while the others load the GIL.
        with ThreadPoolExecutor(max_workers=32) as stopping:
            list(stopping.map(Emulator.stop, emulators))
        if prometheus is not None:
            prometheus.stop()
        cluster.stop()


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1%}"


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "unknown"
    return "beyond the largest bucket (30 s)" if math.isinf(value) else f"{value:.3f} {unit}"


def write_report(result: Result, command: str) -> None:
    meta = commit_stamp()
    stamp = f"{meta['commit']}{' (uncommitted changes)' if meta['dirty'] else ''}"
    rows = [
        ("CPU, average over the window", f"{result.cores:.2f} cores", "< 1 core", result.cores < 1.0),
        ("CPU per tick", f"{result.cores * result.measure_s / max(result.ticks, 1) * 1e3:.1f} ms", "", None),
        ("tick latency p50", _fmt(result.tick_p50_s), "", None),
        (
            "tick latency p99",
            _fmt(result.tick_p99_s),
            "< 2 s",
            result.tick_p99_s is not None and result.tick_p99_s < 2.0,
        ),
        ("Prometheus reads per tick (waiting included), p50", _fmt(result.metrics_p50_s), "", None),
        ("Prometheus reads per tick (waiting included), p99", _fmt(result.metrics_p99_s), "", None),
        ("forecast + plan per tick, p50", _fmt(result.fit_p50_s), "", None),
        ("forecast + plan per tick, p99", _fmt(result.fit_p99_s), "", None),
        ("status and scale writes per tick, p50", _fmt(result.act_p50_s), "", None),
        ("status and scale writes per tick, p99", _fmt(result.act_p99_s), "", None),
        (
            "forecast refits (beside the ticks, one worker), count / p50 / p99",
            f"{result.refits:.0f} / {_fmt(result.refit_p50_s)} / {_fmt(result.refit_p99_s)}",
            "",
            None,
        ),
        ("forecast refits waiting, peak", f"{result.refits_waiting_peak:.0f}", "", None),
        ("resident memory, peak", f"{result.rss_peak_mib:.0f} MiB", "< 1024 MiB", result.rss_peak_mib < 1024),
    ]
    table = "\n".join(
        f"| {name} | {value} | {target or '-'} | {'met' if ok else 'missed' if ok is not None else '-'} |"
        for name, value, target, ok in rows
    )
    api = "\n".join(f"| {k} | {v:.2f} |" for k, v in sorted(result.api_per_tick.items())) or "| (none) | 0 |"
    per_second = result.ticks / result.measure_s
    prom = (
        "\n".join(
            f"| {k} | {v:.3f} | {v * per_second:.2f} |" for k, v in sorted(result.prom_per_tick.items())
        )
        or "| (none) | 0 | 0 |"
    )
    expected = result.models * result.measure_s / INTERVAL_SECONDS
    OUT.write_text(
        f"""# Operator at scale

Generated by `{command}` at commit {stamp}, {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.
Machine: {platform.machine()}, {os.cpu_count()} cores shared by everything below (load average
{result.machine_load:.1f} while measuring), Python {platform.python_version()}.

One `dopd run` process (standalone, JSON logs) manages {result.models} DisaggregatedModels (vLLM preset,
`intervalSeconds: {INTERVAL_SECONDS}`, forecast `auto`, default windows) in one namespace of the local
control plane (kube-apiserver, etcd, controller-manager, scheduler, KWOK nodes), reading a real
Prometheus (scrape interval {SCRAPE}) that scrapes {result.engines} engine emulators (Poisson load of
2-11 rps each, fixed 1P/1D replicas; model i reads engine i mod {result.engines}'s series, so each
engine's series serve {result.models / result.engines:g} models). Engine scrapes answered in the
window: {_share(result.scrapes_up)}. Measured over {result.measure_s:.0f} s after every model had
ticked and a warm-up: {result.ticks:.0f} ticks ({expected:.0f} expected at the interval).

| measure | value | target | |
|---|---|---|---|
{table}

Requests per tick that dopd itself sends (Kopf's watch streams and Event posts are not included):

| API server (verb, resource) | per tick |
|---|---|
{api}

| Prometheus (purpose) | queries per tick | queries per second |
|---|---|---|
{prom}

Errors during the window: {result.errors or "none"}.

## What limits it

{LIMITS}
"""
    )
    print(OUT.read_text())


LIMITS = """Read with the numbers above (they are regenerated; this paragraph is not). Models whose
queries differ only in label values share them (docs/metrics.md): per batch, two instant queries every
half scrape interval and one short range query per forecast step, split per model in the operator; per
tick one status patch to the API server (it comes back as a watch event that Kopf parses). A tick only
updates its model's fitted forecaster; refits (the first fit, then every ten minutes, and when the
history has doubled) run in one worker thread beside the ticks. Each model's refit period is spread by
up to 10% (fixed by its uid), so models started together drift apart: the refit queue peaked at 31
in this run against 129 at commit 46d529a, and no tick waits for it.

Where it stands (2026-12-01, 200 models, commit 6fe9225): every target met (p99 tick 0.3 s of 2 s,
a third of a core, under 300 MiB), 98% of the ticks on time. Against the run at 46d529a (0.17 cores,
p99 0.072 s, 99.9% on time) the cost per tick roughly doubled: forecast + plan went from 9 to 21 ms
at the median, status writes from 23 to 50 ms. In between the planner gained surge headroom
(`surge.py` recomputes the past rises over the whole history at every tick; caching it per model
between refits is the obvious saving) and the machine carried more load (load average 2.6 against
0.7), so this report does not apportion the change. Limits of the measurement: the 200 models read
20 engines' series (model i reads engine i mod 20), so each batch query returns 20 models' series
sets, not 200 (the answer's size at 200 distinct engines is not measured here); histories are young
(under 20 minutes: the forecast `historySeconds` of an hour is never full, and a refit on a full hour,
ARIMA included, costs more); one namespace, one Prometheus, no engine restarts."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--emulators", type=int, default=20, help="engines whose series the models share")
    # The warm-up covers the forecasters' first fits (a few minutes of history in, every model at once:
    # a start-up burst, not the steady state); the window spans one refit cycle (ten minutes).
    parser.add_argument("--warmup-seconds", type=float, default=360.0)
    parser.add_argument("--measure-seconds", type=float, default=600.0)
    args = parser.parse_args()
    if not 1 <= args.emulators <= args.models:
        parser.error(f"--emulators must be between 1 and --models ({args.models}), got {args.emulators}")
    result = run(args.models, args.emulators, args.warmup_seconds, args.measure_seconds)
    command = f"python bench/operator_bench.py --models {args.models} --emulators {args.emulators} --warmup-seconds {args.warmup_seconds:g} --measure-seconds {args.measure_seconds:g}"
    write_report(result, command)


if __name__ == "__main__":
    main()
