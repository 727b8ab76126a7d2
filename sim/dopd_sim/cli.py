"""`dopd simulate`, `dopd bench` and `dopd demo`: the simulator's command line (loaded lazily by
dopd_operator.cli). The environment and the file system are touched here and nowhere else in dopd_sim.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from dopd_forecaster.datasets import AZURE_CONV_2023, DataNotFoundError, data_path
from dopd_forecaster.traces import Trace, TraceFormatError
from dopd_operator.api import InlineProfile, ProfileSpec
from dopd_sim.config import QueuePolicy, SimConfig, default_spec, load_profile, load_spec
from dopd_sim.policies import FIXED_POLICIES, POLICY_NAMES, make_policy
from dopd_sim.report import markdown_table, write_report
from dopd_sim.run import RunResult, check_score_from, scored_span
from dopd_sim.run import simulate as run_simulation
from dopd_sim.workload import load_workload


def _config(manifest: str | None, profile: str | None, seed: int, queue: str | None) -> SimConfig:
    spec = load_spec(manifest) if manifest else default_spec()
    resolved = None
    if profile:
        resolved = load_profile(profile)
        # The planner resolves the profile from the spec, so the spec must name the same one.
        if Path(profile).exists():
            fields = resolved.model_dump(exclude={"name", "description"})
            spec = spec.model_copy(update={"profile": ProfileSpec(inline=InlineProfile(**fields))})
        else:
            spec = spec.model_copy(update={"profile": ProfileSpec(preset=profile)})
    queue_policy: QueuePolicy = "length-aware" if queue == "length-aware" else "fifo"
    return SimConfig(spec=spec, profile=resolved, seed=seed, prefill_queue=queue_policy)


def _load(
    trace: str, rate_scale: float, time_compression: float, seed: int, duration_s: float | None
) -> Trace:
    try:
        return load_workload(trace, rate_scale, time_compression, seed, duration_s)
    except (FileNotFoundError, TraceFormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _common(function: Any) -> Any:
    options = [
        click.option(
            "--trace",
            "trace_path",
            required=True,
            help="Trace file (Azure, Mooncake, BurstGPT or canonical CSV) or synthetic:KIND[,k=v...].",
        ),
        click.option(
            "-f",
            "--file",
            "manifest",
            type=click.Path(exists=True, dir_okay=False),
            help="DisaggregatedModel manifest (SLOs, limits, startup, profile).",
        ),
        click.option(
            "--profile", help="Profile preset name or profile YAML/JSON file (overrides the manifest's)."
        ),
        click.option(
            "--rate-scale",
            type=float,
            default=1.0,
            show_default=True,
            help="Multiply the arrival rate, keeping the trace's span.",
        ),
        click.option(
            "--time-compression",
            type=float,
            default=1.0,
            show_default=True,
            help="Replay the same requests this many times faster.",
        ),
        click.option(
            "--duration", "duration_s", type=float, help="Use only the first DURATION seconds of the trace."
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed for rate scaling and synthetic traces.",
        ),
        click.option(
            "--queue",
            type=click.Choice(["fifo", "length-aware"]),
            help="Prefill queue for policies that do not bring their own (default fifo).",
        ),
        click.option(
            "--static-gpus",
            type=int,
            help="GPUs for the static layout search (default: dopd's mean GPUs in bench, the P90-minute sizing in simulate).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command()
@_common
@click.option("--policy", type=click.Choice(POLICY_NAMES), default="dopd", show_default=True)
@click.option("--static-layout", help="PREFILL:DECODE for --policy static, skipping the search.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--timeline", is_flag=True, help="Include the per-tick timeline in the JSON.")
@click.option(
    "--goodput-search",
    metavar="LOW:HIGH",
    help="DistServe's per-GPU goodput: bisect the rate scale in [LOW, HIGH] for the highest at which "
    "attainment stays at the spec's target, and report the run there (ignores --rate-scale).",
)
@click.option(
    "--history-seconds",
    "history_s",
    type=float,
    default=0.0,
    show_default=True,
    help="Treat the trace's first SECONDS as the load's past, as Prometheus holds it on a cluster that "
    "has been serving: replayed and decided on, not scored (attainment, latencies and GPU-hours count "
    "from then on; the oracle is calibrated on that span). The fixed layouts (static, static-peak, "
    "aggregated-static), which learn nothing from a past, are sized for and run on the rest alone, "
    "as in the benchmark. Not with --goodput-search, which scores the whole trace.",
)
def simulate(
    trace_path: str,
    manifest: str | None,
    profile: str | None,
    rate_scale: float,
    time_compression: float,
    duration_s: float | None,
    seed: int,
    queue: str | None,
    static_gpus: int | None,
    policy: str,
    static_layout: str | None,
    as_json: bool,
    timeline: bool,
    goodput_search: str | None,
    history_s: float,
) -> None:
    """Replay a trace through the simulated cluster under one policy."""
    if history_s and goodput_search:
        raise click.UsageError(
            "--history-seconds scores only the rest of the trace; --goodput-search scales and scores "
            "the whole trace: leave one of them out"
        )
    config = _config(manifest, profile, seed, queue)
    if goodput_search:
        _goodput_search(
            trace_path, policy, config, goodput_search, time_compression, duration_s, seed, static_layout
        )
        return
    trace = _load(trace_path, rate_scale, time_compression, seed, duration_s)
    try:  # before a static layout search, not after it
        check_score_from(history_s, trace)
    except ValueError as exc:
        raise click.BadParameter(
            f"{exc} (after --duration and --time-compression)", param_hint="--history-seconds"
        ) from exc
    if history_s and policy in FIXED_POLICIES:
        # A fixed layout learns nothing from a past: it is sized for, and runs on, the scored span alone
        # (as the benchmark's fixed layouts do), so a past busier than its layout leaves it no queue.
        trace, history_s = scored_span(trace, history_s), 0.0
    layout: tuple[int, int] | None = None
    if static_layout:
        prefill, _, decode = static_layout.partition(":")
        layout = (int(prefill), int(decode))
    elif policy == "static":
        from dopd_sim.search import best_static_layout

        layout = best_static_layout(trace, config, static_gpus)
    if policy == "oracle":
        from dopd_sim.search import calibrate_oracle

        result = calibrate_oracle(trace, config, score_from_s=history_s)[2]
        result.summary.trace, result.summary.rate_scale = trace_path, rate_scale
    elif policy == "static-peak" and layout is None:  # its fitting runs it: no second run
        from dopd_sim.peak import fitted_static_peak

        result = fitted_static_peak(trace, config).result
        result.summary.trace, result.summary.rate_scale = trace_path, rate_scale
    else:
        result = run_simulation(
            trace,
            make_policy(policy, trace, config, static_layout=layout),
            config,
            trace_name=trace_path,
            rate_scale=rate_scale,
            score_from_s=history_s,
        )
    if as_json:
        click.echo(json.dumps(result.summary.to_json(include_timeline=timeline)))
        return
    click.echo(markdown_table([result.summary.to_json()]))


def _goodput_search(
    trace_path: str,
    policy: str,
    config: SimConfig,
    bounds: str,
    time_compression: float,
    duration_s: float | None,
    seed: int,
    static_layout: str | None,
) -> None:
    from dopd_sim.search import max_rate_meeting_target

    low, _, high = bounds.partition(":")
    base = _load(trace_path, 1.0, time_compression, seed, duration_s)
    layout = None
    if static_layout:
        prefill, _, decode = static_layout.partition(":")
        layout = (int(prefill), int(decode))

    def run_at(trace: Trace) -> RunResult:
        return run_simulation(
            trace, make_policy(policy, trace, config, static_layout=layout), config, trace_name=trace_path
        )

    target = config.spec.slo.attainment_target
    scale, result = max_rate_meeting_target(base, run_at, target, float(low), float(high), seed=seed)
    if result is None:
        raise click.ClickException(f"attainment is below {target:.0%} even at rate scale {low}")
    data = result.summary.to_json()
    data["rate_scale"] = scale
    data["max_rate_rps"] = data["requests"] / max(data["duration_s"], 1e-9)
    data["per_gpu_goodput_rps"] = data["goodput_rps"] / max(data["mean_gpus"], 1e-9)
    click.echo(json.dumps(data))


@click.command()
@_common
@click.option(
    "--policies", default=",".join(POLICY_NAMES), show_default=True, help="Comma-separated policies."
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def bench(
    trace_path: str,
    manifest: str | None,
    profile: str | None,
    rate_scale: float,
    time_compression: float,
    duration_s: float | None,
    seed: int,
    queue: str | None,
    static_gpus: int | None,
    policies: str,
    out_dir: str,
    no_plots: bool,
) -> None:
    """Run every policy on the same trace and seed; write results.json, report.md and plots.

    A quick comparison: reactive and dynamo-sla run at their defaults (HPA's target, Dynamo's interval),
    static and aggregated-static at dopd's mean GPUs (--static-gpus says otherwise), static-peak sized
    for the busiest minute and raised where it falls behind. The published suite (bench/sim_bench.py,
    docs/benchmarks/sim.md) tunes each baseline per trace, several seeds each."""
    from dopd_sim.benchmark import run_policies

    names = [name.strip() for name in policies.split(",") if name.strip()]
    unknown = sorted(set(names) - set(POLICY_NAMES))
    if unknown:
        raise click.ClickException(f"unknown policies: {', '.join(unknown)}; use: {', '.join(POLICY_NAMES)}")
    config = _config(manifest, profile, seed, queue)
    trace = _load(trace_path, rate_scale, time_compression, seed, duration_s)
    results = run_policies(
        trace, config, names, trace_name=trace_path, rate_scale=rate_scale, static_gpus=static_gpus
    )
    written = write_report(Path(out_dir), results, f"dopd bench: {Path(trace_path).name}", plots=not no_plots)
    click.echo(markdown_table([r.summary.to_json() for r in results]))
    click.echo(f"\nwrote {', '.join(str(p) for p in written)}")


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="dopd-demo", show_default=True)
@click.option("--minutes", type=float, default=20.0, show_default=True, help="Minutes of trace to replay.")
def demo(out_dir: str, minutes: float) -> None:
    """Replay a slice of the Azure conversation trace (vendored in data/traces) through dopd and the
    baselines, print the comparison and write the report."""
    from dopd_sim.benchmark import run_policies

    started = time.perf_counter()
    config = SimConfig()
    try:
        trace_path = data_path(AZURE_CONV_2023)
    except DataNotFoundError as exc:  # no stand-in trace: the demo's table is about this one
        raise click.ClickException(
            f"{exc} (Or replay a generated load instead: "
            "`dopd bench --trace synthetic:diurnal,mean_rps=40,duration_s=1200,period_s=600`.)"
        ) from exc
    source, rate_scale = str(trace_path), 8.0
    trace = load_workload(source, rate_scale=rate_scale, duration_s=minutes * 60)
    described = f"the first {minutes:g} min of the Azure 2023 conversation trace at {rate_scale:g}x its rate"
    click.echo(
        f"dopd demo: {described}: {len(trace)} requests, Llama-3-8B on H100 profile, SLO TTFT 1.5 s / TPOT 50 ms at P90."
    )
    click.echo(
        "Each policy replays the same requests through a simulated P/D-disaggregated cluster (new replicas take 120 s to start).\n"
    )
    results = run_policies(
        trace, config, ("dopd", "reactive", "static", "oracle"), trace_name=source, rate_scale=rate_scale
    )
    click.echo(markdown_table([r.summary.to_json() for r in results]))
    written = write_report(Path(out_dir), results, "dopd demo", notes=[described])
    click.echo(f"\nReport: {written[2]} (plots beside it). Took {time.perf_counter() - started:.0f} s.")
    click.echo("Next: `dopd bench --trace PATH --rate-scale X` on your own trace, or `dopd simulate --help`.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(simulate())
