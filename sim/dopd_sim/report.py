"""Benchmark output: results.json (one summary object per policy), report.md (a side-by-side table)
and PNG plots (per policy: load, replicas per role and windowed SLO attainment over time; all policies:
TTFT and TPOT CDFs), and the statistics of repeated runs (`MeanCI`: mean and 95% interval over seeds).
Callers: `cli.bench`, `cli.demo`, bench/sim_bench.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from dopd_sim.run import RunResult


@dataclass(frozen=True)
class MeanCI:
    """Mean of repeated runs and the half-width of its 95% confidence interval (Student's t; 0 for one
    run, where no interval can be given)."""

    mean: float
    half_width: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanCI:
        data = np.asarray(values, dtype=np.float64)
        if len(data) == 0:
            return cls(math.nan, math.nan, 0)
        if len(data) == 1:
            return cls(float(data[0]), 0.0, 1)
        spread = float(np.std(data, ddof=1)) / math.sqrt(len(data))
        return cls(float(np.mean(data)), float(stats.t.ppf(0.975, len(data) - 1)) * spread, len(data))

    def format(self, spec: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
        if math.isnan(self.mean):
            return "-"
        text = f"{self.mean * scale:{spec}}{suffix}"
        return text if self.runs < 2 else text + f" ± {self.half_width * scale:{spec}}"


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("policy", "policy"),
    ("slo_attainment", "SLO attainment"),
    ("goodput_rps", "goodput (rps)"),
    ("goodput_rps_per_gpu", "goodput/GPU"),
    ("ttft_p90_s", "P90 TTFT (s)"),
    ("tpot_p90_s", "P90 TPOT (ms)"),
    ("gpu_hours", "GPU-hours"),
    ("mean_gpus", "mean GPUs"),
    ("peak_gpus", "peak GPUs"),
    ("scale_actions", "scale actions"),
    ("layout", "final layout"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("slo_attainment", "ttft_attainment", "tpot_attainment"):
        return f"{100 * value:.2f}%"
    if key == "tpot_p90_s":
        return f"{1000 * value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Path, results: Sequence[RunResult], title: str, notes: Sequence[str] = (), plots: bool = True
) -> list[Path]:
    """Write results.json, timelines.json, report.md and (optionally) PNGs; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [r.summary.to_json() for r in results]
    written = [out_dir / "results.json", out_dir / "timelines.json", out_dir / "report.md"]
    written[0].write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    timelines = {r.summary.policy: r.summary.timeline for r in results}
    written[1].write_text(json.dumps(timelines) + "\n", encoding="utf-8")
    first = results[0].summary if results else None
    lines = [f"# {title}", ""]
    if first is not None:
        lines += [
            f"Trace `{first.trace}` at rate scale {first.rate_scale:g}: {first.requests} requests over "
            f"{first.duration_s:.0f} s, seed {first.seed}.",
            "",
        ]
    lines += [markdown_table(summaries), "", *notes]
    if plots and results:
        written += _plots(out_dir, results)
        lines += ["", *[f"![{p.stem}]({p.name})" for p in written[3:]]]
    written[2].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


def _plots(out_dir: Path, results: Sequence[RunResult]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for result in results:
        summary = result.summary
        timeline = summary.timeline
        if not timeline:
            continue
        t = np.array([p["time_s"] for p in timeline]) / 60.0
        fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        axes[0].plot(t, [p["arrival_rate_rps"] for p in timeline], color="black")
        axes[0].set_ylabel("load (rps)")
        for key, label in (
            ("ready_prefill", "prefill"),
            ("ready_decode", "decode"),
            ("ready_mixed", "colocated"),
        ):
            values = [p[key] for p in timeline]
            if any(values):
                axes[1].step(t, values, where="post", label=f"{label} ready")
        axes[1].step(t, [p["gpus"] for p in timeline], where="post", label="GPUs held", linestyle=":")
        axes[1].set_ylabel("replicas")
        axes[1].legend(loc="upper left", fontsize=8)
        attainment = [
            np.nan if p["window_attainment"] is None else 100 * p["window_attainment"] for p in timeline
        ]
        axes[2].plot(t, attainment, color="tab:green")
        axes[2].set_ylabel("SLO attainment (%)\nlast window")
        axes[2].set_xlabel("time (min)")
        axes[2].set_ylim(0, 102)
        fig.suptitle(
            f"{summary.policy}: {100 * summary.slo_attainment:.2f}% attainment, {summary.gpu_hours:.2f} GPU-hours"
        )
        fig.tight_layout()
        path = out_dir / f"timeline_{summary.policy}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    fig, cdf_axes = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        for axis, latencies, scale in (
            (cdf_axes[0], result.ttft_s, 1.0),
            (cdf_axes[1], result.tpot_s, 1000.0),
        ):
            finite = np.sort(latencies[np.isfinite(latencies)]) * scale
            if len(finite):
                axis.plot(finite, np.arange(1, len(finite) + 1) / len(latencies), label=result.summary.policy)
    cdf_axes[0].set_xlabel("TTFT (s)")
    cdf_axes[1].set_xlabel("TPOT (ms)")
    for axis in cdf_axes:
        axis.set_ylabel("CDF")
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    cdf_axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "latency_cdf.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths
