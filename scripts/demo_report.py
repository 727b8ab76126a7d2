"""The report `make demo` writes: what the operator did on the cluster beside what the simulator predicts
for the same requests and the same manifest.

`write_report(out, run)` replays the demo's load (the same `synthetic:` spec, time compression and seed
the emulator used, so the very same requests) with the manifest the demo applied through the simulator's
`dopd` policy, and writes report.md, timeline.png (load, forecast, replicas, SLO attainment over time),
ticks.json (the operator's status at each of its decisions) and simulator.json. Callers: scripts/demo.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dopd_sim.config import SimConfig, load_spec
from dopd_sim.metrics import RunSummary
from dopd_sim.policies import make_policy
from dopd_sim.run import simulate
from dopd_sim.workload import load_workload

RATE_BIN_SECONDS = 10.0


@dataclass(frozen=True)
class Tick:
    """One operator decision, as the DisaggregatedModel's status showed it (None: not in the status)."""

    t_s: float  # seconds since the load started
    load_rps: float | None  # status.load: what the operator measured through Prometheus
    true_rps: float | None  # the emulator's ground truth, arrivals over its last 10 s
    forecast_model: str | None
    forecast_horizon_s: float | None
    forecast_mean_rps: float | None
    forecast_upper_rps: float | None
    prefill_desired: int
    prefill_ready: int
    decode_desired: int
    decode_ready: int
    gpus: int
    ttft_attainment: float | None
    tpot_attainment: float | None
    why: str
    # The emulator's ground truth at this decision, since the load started: requests finished, and those
    # of them within both SLOs, each scored as `dopd simulate` scores a request (None: not read).
    requests_finished: int | None = None
    requests_met: int | None = None

    @property
    def attainment(self) -> float | None:
        known = [v for v in (self.ttft_attainment, self.tpot_attainment) if v is not None]
        return min(known) if known else None


def true_attainment(ticks: list[Tick]) -> list[float | None]:
    """Per decision: the share of the requests finished since the previous decision that met both SLOs,
    from the emulator's ground truth (None where no request finished in between or a count is unknown)."""
    out: list[float | None] = []
    before: tuple[int, int] | None = (0, 0)
    for tick in ticks:
        finished, met = tick.requests_finished, tick.requests_met
        now = None if finished is None or met is None else (finished, met)
        share = None
        if now is not None and before is not None and now[0] != before[0]:
            share = (now[1] - before[1]) / (now[0] - before[0])
        out.append(share)
        before = now
    return out


@dataclass(frozen=True)
class ScaleEvent:
    t_s: float
    reason: str
    message: str


@dataclass
class DemoRun:
    """What the demo ran and what it saw."""

    model_path: Path  # the manifest it applied
    load: str  # the emulator's --trace
    compression: float
    load_seconds: float
    ticks: list[Tick]
    events: list[ScaleEvent] = field(default_factory=list)
    wall_seconds: float = 0.0
    # The emulator's ground truth when the load ended: requests finished, and those within both SLOs.
    requests_finished: int | None = None
    requests_met: int | None = None


def simulate_same(run: DemoRun) -> tuple[RunSummary, np.ndarray]:
    """The simulator's `dopd` on the requests the emulator replayed; also their arrival times."""
    trace = load_workload(run.load, time_compression=run.compression)
    config = SimConfig(spec=load_spec(run.model_path))
    result = simulate(trace, make_policy("dopd", trace, config), config, trace_name=run.load)
    return result.summary, np.asarray(trace.arrival_s, dtype=np.float64)


def _time_weighted_mean(times_s: list[float], values: list[float], end_s: float) -> float:
    if not times_s:
        return float("nan")
    spans = np.diff([*times_s, max(end_s, times_s[-1])])
    total = float(spans.sum())
    return float(np.dot(values, spans) / total) if total > 0 else float(values[-1])


def operator_summary(run: DemoRun) -> dict[str, float | int | str]:
    ticks = run.ticks
    known = [t.attainment for t in ticks if t.attainment is not None]
    truth = [a for a in true_attainment(ticks) if a is not None]
    whole = (
        run.requests_met / run.requests_finished
        if run.requests_met is not None and run.requests_finished
        else float("nan")
    )
    return {
        "decisions": len(ticks),
        "scale events": sum(1 for e in run.events if e.reason in ("ScaledUp", "ScaledDown")),
        "mean GPUs": _time_weighted_mean([t.t_s for t in ticks], [t.gpus for t in ticks], run.load_seconds),
        "peak GPUs": max((t.gpus for t in ticks), default=0),
        "attainment the operator measured, mean of windows": float(np.mean(known)) if known else float("nan"),
        "attainment the operator measured, worst window": min(known) if known else float("nan"),
        "requests meeting both SLOs, worst interval": min(truth) if truth else float("nan"),
        "requests meeting both SLOs, whole run": _Share(whole),
        "final layout": f"{ticks[-1].prefill_desired}P/{ticks[-1].decode_desired}D" if ticks else "-",
    }


def simulator_summary(summary: RunSummary) -> dict[str, float | int | str]:
    windows = [p["window_attainment"] for p in summary.timeline if p["window_attainment"] is not None]
    return {
        "decisions": len(summary.timeline),
        "scale events": summary.scale_actions,
        "mean GPUs": summary.mean_gpus,
        "peak GPUs": summary.peak_gpus,
        "attainment the operator measured, mean of windows": "-",
        "attainment the operator measured, worst window": "-",
        "requests meeting both SLOs, worst interval": min(windows) if windows else float("nan"),
        "requests meeting both SLOs, whole run": _Share(summary.slo_attainment),
        "final layout": summary.layout,
    }


class _Share(float):
    """A share shown as a percentage with two decimals (the whole-run attainments)."""


def _cell(value: float | int | str) -> str:
    if isinstance(value, (str, int)):
        return str(value)
    if np.isnan(value):
        return "-"
    return f"{value:.2%}" if isinstance(value, _Share) else f"{value:.2f}"


def write_report(out: Path, run: DemoRun) -> Path:
    """Write the report files into `out`; returns report.md's path."""
    summary, arrivals_s = simulate_same(run)
    (out / "ticks.json").write_text(json.dumps([asdict(t) for t in run.ticks], indent=1) + "\n")
    (out / "events.json").write_text(json.dumps([asdict(e) for e in run.events], indent=1) + "\n")
    (out / "simulator.json").write_text(json.dumps(summary.to_json(include_timeline=True), indent=1) + "\n")
    plot = _plot(out / "timeline.png", run, summary, arrivals_s)
    ours, predicted = operator_summary(run), simulator_summary(summary)
    rows = [f"| {key} | {_cell(ours[key])} | {_cell(predicted[key])} |" for key in ours]
    events = [f"| {e.t_s:.0f} | {e.reason} | {e.message} |" for e in run.events]
    lines = [
        "# dopd demo: the operator on a local cluster, beside the simulator",
        "",
        f"Load: `{run.load}` compressed {run.compression:g}x ({len(arrivals_s)} requests over "
        f"{run.load_seconds:.0f} s), served by the engine emulator following the pods of "
        f"[`{run.model_path.name}`]({run.model_path.name}); the simulator replays the same requests with "
        f"the same manifest. Demo wall time {run.wall_seconds:.0f} s.",
        "",
        "| | operator on the cluster | simulator, same load and manifest |",
        "|---|---|---|",
        *rows,
        "",
        "The attainment the operator measured is its own reading, from the engines' latency histograms in "
        "Prometheus over each metrics window (the status's `sloAttainment`). The requests meeting both "
        "SLOs are counted per request, each scored as `dopd simulate` scores it: on the cluster by the "
        "engine emulator (its ground truth: requests finished between two of the operator's decisions, "
        "and over the whole load), in the simulator over each 10 s window. The two can differ: vLLM's "
        "inter-token latency is timed between a running sequence's tokens, so a sequence that waits for "
        "room on a decode replica adds no slow gap to it, while its TPOT, as its user sees it, counts "
        "the wait; the operator reads the waits from the decode pods' queue time against each request's "
        "slack, an estimate from two histograms over its window. GPUs are those of the replicas decided. "
        "On the cluster, KWOK pods are Ready a second or two after they are created; the simulator starts "
        "replicas in the manifest's `startupSeconds`.",
        "",
        f"![load, forecast, replicas and attainment over time]({plot.name})",
        "",
        "## What the operator did (Events on the DisaggregatedModel)",
        "",
        "| seconds into the load | reason | message |",
        "|---|---|---|",
        *events,
        "",
        "Files: `ticks.json` (its status at each decision), `events.json`, `simulator.json` (the "
        "simulator's summary and timeline), `logs/` (operator, emulator).",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _plot(path: Path, run: DemoRun, summary: RunSummary, arrivals_s: np.ndarray) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def minutes(seconds: list[float] | np.ndarray) -> np.ndarray:
        return np.asarray(seconds, dtype=np.float64) / 60.0

    ticks, sim = run.ticks, summary.timeline
    t = minutes([k.t_s for k in ticks])
    ts = minutes([p["time_s"] for p in sim])
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)

    edges = np.arange(0.0, run.load_seconds + 1e-9, RATE_BIN_SECONDS)  # whole bins only: no partial last one
    counts, _ = np.histogram(arrivals_s, bins=edges)
    axes[0].step(
        minutes(edges[:-1]), counts / RATE_BIN_SECONDS, where="post", color="0.7", label="sent (10 s bins)"
    )
    axes[0].plot(
        t, [k.true_rps for k in ticks], ".", color="black", markersize=3, label="emulator, last 10 s"
    )
    axes[0].plot(t, [k.load_rps for k in ticks], color="tab:blue", label="operator, measured")
    axes[0].set_ylabel("load (rps)")

    axes[1].plot(t, [k.load_rps for k in ticks], color="tab:blue", alpha=0.4, label="measured")
    ahead = [(k.t_s + k.forecast_horizon_s, k) for k in ticks if k.forecast_horizon_s is not None]
    axes[1].plot(minutes([a for a, _ in ahead]), [k.forecast_upper_rps for _, k in ahead], color="tab:purple",
                 label="forecast, upper quantile")  # fmt: skip
    axes[1].plot(minutes([a for a, _ in ahead]), [k.forecast_mean_rps for _, k in ahead], "--",
                 color="tab:purple", label="forecast, mean")  # fmt: skip
    axes[1].set_ylabel("forecast (rps)\nat the time it is for")

    axes[2].step(
        t, [k.prefill_desired for k in ticks], where="post", color="tab:orange", label="operator prefill"
    )
    axes[2].step(
        t, [k.decode_desired for k in ticks], where="post", color="tab:green", label="operator decode"
    )
    axes[2].step(ts, [p["target_prefill"] for p in sim], where="post", color="tab:orange", linestyle=":",
                 label="simulator prefill")  # fmt: skip
    axes[2].step(ts, [p["target_decode"] for p in sim], where="post", color="tab:green", linestyle=":",
                 label="simulator decode")  # fmt: skip
    axes[2].set_ylabel("replicas")
    axes[2].yaxis.get_major_locator().set_params(integer=True)

    axes[3].plot(t, [np.nan if k.attainment is None else 100 * k.attainment for k in ticks], color="tab:blue",
                 label="operator, measured per window")  # fmt: skip
    axes[3].plot(t, [np.nan if a is None else 100 * a for a in true_attainment(ticks)], ".", color="black",
                 markersize=3, label="cluster, requests finished per decision interval")  # fmt: skip
    axes[3].plot(ts, [np.nan if p["window_attainment"] is None else 100 * p["window_attainment"] for p in sim],
                 ":", color="tab:red", label="simulator, per 10 s window")  # fmt: skip
    axes[3].set_ylabel("SLO attainment (%)")
    axes[3].set_ylim(0, 102)
    axes[3].set_xlim(0, run.load_seconds / 60.0)
    axes[3].set_xlabel(f"minutes into the load (one minute = {run.compression / 60:g} hours of the day)")
    for axis in axes:
        axis.legend(loc="upper left", fontsize=7)
        axis.grid(alpha=0.3)
    fig.suptitle("dopd on the local cluster (solid) and in the simulator (dotted), same load and manifest")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
