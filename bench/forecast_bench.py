"""Forecaster benchmark: accuracy, 0.9-quantile coverage and CPU cost per model, written to
docs/benchmarks/forecast.md.

Traces: the public ones vendored in data/traces (data/README.md) and two generated diurnal traces (a real
24-hour day seen through a 1-hour window, and a day compressed to 10 minutes so a 1-hour window holds
six cycles). Every model is replayed tick by tick as the operator runs it (`dopd_forecaster.evaluate`):
10 s steps, 1 hour of history per forecast, refit every 600 s. CPU cost is measured separately on
1-hour histories (360 points): a cold fit with model selection, a scheduled warm refit, and an update.

    python bench/forecast_bench.py [--quick] [--out docs/benchmarks/forecast.md]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: BLAS threads only add overhead

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import statsmodels

from dopd_forecaster.cli import complete_buckets, max_gap_steps_for
from dopd_forecaster.datasets import AZURE_CONV_2023, MOONCAKE_SYNTHETIC, data_path
from dopd_forecaster.evaluate import Evaluation, evaluate
from dopd_forecaster.forecaster import SeriesForecaster
from dopd_forecaster.series import trace_to_series
from dopd_forecaster.traces import Trace, load_trace

REPO = Path(__file__).resolve().parents[1]
STEP_S = 10.0
HORIZONS_S = (30.0, 60.0, 180.0)
MODELS = ("naive", "seasonal-naive", "ewma", "holt-winters", "arima", "auto")
RATE_SERIES = ("arrival_rate_rps", "prompt_tokens_per_s", "output_tokens_per_s")
LENGTH_SERIES = ("input_tokens_mean", "output_tokens_p90")
HISTORY_POINTS = 360  # 1 hour at 10 s
WARMUP_POINTS = 60  # scoring starts after 10 minutes of history, as an operator would after startup


def diurnal_trace(name: str, period_s: float, start_s: float, duration_s: float, seed: int) -> Trace:
    """Poisson arrivals at 2-10 rps following a sine of `period_s` (peak mid-period), log-normal lengths."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(duration_s)
    rate = 6.0 - 4.0 * np.cos(2 * np.pi * (start_s + seconds) / period_s)
    counts = rng.poisson(rate)
    arrival = np.repeat(seconds, counts) + rng.random(int(counts.sum()))
    arrival = np.sort(arrival)
    n = len(arrival)
    prompt = np.maximum(1, rng.lognormal(np.log(800), 0.9, n)).astype(np.int64)
    output = np.maximum(1, rng.lognormal(np.log(150), 0.8, n)).astype(np.int64)
    return Trace(arrival - arrival[0], prompt, output, source=name, format="generated")


def load_traces(quick: bool) -> dict[str, Trace]:
    traces = {
        "azure-conv-2023": load_trace(data_path(AZURE_CONV_2023)),
        "mooncake-fast25": load_trace(data_path(MOONCAKE_SYNTHETIC)),
        # 06:00-09:00 of a real day: the morning ramp, a slow trend inside any 1-hour window.
        "diurnal-24h (generated)": diurnal_trace("diurnal-24h", 86400.0, 6 * 3600.0, 3 * 3600.0, seed=1),
        # A day compressed to 10 minutes: six full cycles in every 1-hour window.
        "diurnal-10min (generated)": diurnal_trace("diurnal-10min", 600.0, 0.0, 3 * 3600.0, seed=2),
    }
    if quick:
        traces = {name: trace.window(0.0, 1800.0) for name, trace in traces.items()}
    return traces


@dataclass
class CostRow:
    model: str
    cold_fit_ms: list[float]
    warm_refit_ms: list[float]
    update_ms: list[float]


def measure_cost(series_by_trace: dict[str, np.ndarray], windows_per_series: int) -> list[CostRow]:
    """CPU ms on 360-point histories: the first call (fit with selection), an update, a scheduled refit."""
    rows = []
    for model in MODELS:
        row = CostRow(model, [], [], [])
        for values in series_by_trace.values():
            last_origin = len(values) - 12
            if last_origin <= HISTORY_POINTS:
                continue
            for origin in np.linspace(HISTORY_POINTS, last_origin, windows_per_series).astype(int):
                forecaster = SeriesForecaster(model=model, history_max_points=HISTORY_POINTS)
                stamps = np.arange(len(values)) * STEP_S
                window = slice(origin - HISTORY_POINTS, origin)
                row.cold_fit_ms.append(_cpu_ms(forecaster, stamps[window], values[window], None))
                for extra in range(1, 11):
                    grown = slice(origin - HISTORY_POINTS + extra, origin + extra)
                    row.update_ms.append(_cpu_ms(forecaster, stamps[grown], values[grown], None))
                later_now = float(stamps[origin + 10]) + forecaster.refit_every_s
                row.warm_refit_ms.append(_cpu_ms(forecaster, stamps[grown], values[grown], later_now))
        rows.append(row)
    return rows


def _cpu_ms(
    forecaster: SeriesForecaster, stamps: np.ndarray, values: np.ndarray, now_s: float | None
) -> float:
    started = time.thread_time()
    forecaster.forecast(stamps, values, 60.0, now_s=now_s)
    return (time.thread_time() - started) * 1e3


def _p(samples: list[float], q: float) -> str:
    return f"{np.percentile(samples, q):.1f}" if samples else "-"


def _f(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3f}"


def summary(accuracy: dict[tuple[str, str, float], dict[str, Evaluation]], costs: list[CostRow]) -> list[str]:
    """The issue's targets, checked: per trace (mean MASE over the rate series and horizons) and per row."""
    lines = [
        "## Targets",
        "",
        "| trace | naive MASE (mean of rate rows) | auto MASE | auto no worse | auto 0.9 coverage range "
        "| rows in 0.85-0.95 |",
        "|---|---|---|---|---|---|",
    ]
    misses = []
    for trace in dict.fromkeys(t for t, _, _ in accuracy):
        rows = [(k, v) for k, v in accuracy.items() if k[0] == trace and k[1] in RATE_SERIES]
        naive_mase = float(np.mean([v["naive"].mase for _, v in rows]))
        auto_mase = float(np.mean([v["auto"].mase for _, v in rows]))
        coverages = [v["auto"].coverage for _, v in rows]
        inside = sum(0.85 <= c <= 0.95 for c in coverages)
        lines.append(
            f"| {trace} | {naive_mase:.3f} | {auto_mase:.3f} | "
            f"{'yes' if auto_mase <= naive_mase else '**no**'} | "
            f"{min(coverages):.3f}-{max(coverages):.3f} | {inside} of {len(coverages)} |"
        )
        misses += [f"{k[0]} {k[1]} {k[2]:.0f} s" for k, v in rows if v["auto"].mase > v["naive"].mase + 1e-9]
    by_model = {row.model: row for row in costs}
    worst_update_ms = max(float(np.percentile(r.update_ms, 95)) for r in costs if r.update_ms)
    auto_cost, arima_cost = by_model["auto"], by_model["arima"]
    lines += [
        "",
        f"Rate rows where auto is worse than naive: {', '.join(misses) if misses else 'none'}.",
        "",
        "Cost on a 1-hour history at 10 s steps (p95, CPU ms): update "
        f"{_p(arima_cost.update_ms, 95)} for ARIMA and at most {worst_update_ms:.1f} for any model "
        f"(target < 5); auto's full refit with selection {_p(auto_cost.cold_fit_ms, 95)} and its scheduled "
        f"refit {_p(auto_cost.warm_refit_ms, 95)} (target < 100).",
        "",
        "Reading the misses: Mooncake's trace lasts 17 minutes, so only about 37 forecasts per row are "
        "scored after the 10-minute warm-up, and its output token rate falls about fourfold in its last "
        "five minutes. Auto had picked EWMA, which beat naive clearly in the backtest before the fall "
        "and then lags it; ARIMA follows the fall better here but had not beaten EWMA by the margin auto "
        "asks of a more flexible model (that margin is what keeps auto from chasing noise elsewhere). "
        "The same trace's heavy-tailed prompt lengths (p99 66k tokens, max 191k) put single buckets far "
        "above any 0.9 quantile learned from minutes of history, which is why coverage there is the "
        "least stable.",
    ]
    return lines


def render(
    accuracy: dict[tuple[str, str, float], dict[str, Evaluation]],
    costs: list[CostRow],
    traces: dict[str, Trace],
    elapsed_s: float,
    quick: bool,
) -> str:
    lines = [
        "# Forecaster benchmark",
        "",
        "Generated by `python bench/forecast_bench.py`"
        + (" --quick (30-minute slices; not the committed numbers)" if quick else "")
        + f" in {elapsed_s:.0f} s on {platform.machine()} / Python {platform.python_version()} / "
        f"statsmodels {statsmodels.__version__} / numpy {np.__version__}, OPENBLAS_NUM_THREADS=1, "
        "on a 2-core machine shared with other builds (CPU times are per thread, `time.thread_time`).",
        "",
        "Replay: 10 s steps, each forecast sees the newest 1 hour (360 points), refit every 600 s, auto "
        "re-selects every 1800 s (or when its history has doubled), scoring starts after 10 minutes of "
        "history. MASE is scaled by the series' own h-step naive error, so naive scores about 1 and lower "
        "is better; coverage is the share of actuals at or below the 0.9 upper quantile (target 0.85-0.95).",
        "",
        "| trace | requests | span | points |",
        "|---|---|---|---|",
    ]
    for name, trace_item in traces.items():
        lines.append(
            f"| {name} | {len(trace_item)} | {trace_item.duration_s:.0f} s | "
            f"{int(trace_item.duration_s // STEP_S)} |"
        )
    lines += ["", *summary(accuracy, costs)]
    lines += ["", "## Auto against naive, per rate series and horizon", ""]
    lines += [
        "| trace | horizon | series | naive MASE | auto MASE | auto coverage | auto no worse |",
        "|---|---|---|---|---|---|---|",
    ]
    for (trace, series, horizon), by_model in accuracy.items():
        if series not in RATE_SERIES:
            continue
        naive, auto = by_model["naive"], by_model["auto"]
        ok = "yes" if auto.mase <= naive.mase + 1e-9 else "**no**"
        lines.append(
            f"| {trace} | {horizon:.0f} s | {series} | {_f(naive.mase)} | {_f(auto.mase)} | "
            f"{_f(auto.coverage)} | {ok} |"
        )
    for title, metric in (("MASE per model", "mase"), ("0.9-quantile coverage per model", "coverage")):
        lines += [
            "",
            f"## {title}",
            "",
            "| trace | horizon | series | " + " | ".join(MODELS) + " | auto picked |",
            "|---|---|---|" + "---|" * (len(MODELS) + 1),
        ]
        for (trace, series, horizon), by_model in accuracy.items():
            cells = " | ".join(_f(float(getattr(by_model[m], metric))) for m in MODELS)
            picks = by_model["auto"].picks
            total = sum(picks.values()) or 1
            picked = ", ".join(f"{m} {c / total:.0%}" for m, c in picks.most_common())
            lines.append(f"| {trace} | {horizon:.0f} s | {series} | {cells} | {picked} |")
    lines += [
        "",
        "## CPU time per call on a 1-hour history (360 points at 10 s), ms",
        "",
        "Cold fit: a fresh forecaster's first call (auto: all candidates backtested and compared; arima: "
        "three-order grid). Warm refit: a scheduled refit between re-selections (the picked model only, "
        "warm-started). Update: a tick between refits (one new point).",
        "",
        "| model | cold fit p50 | cold fit p95 | warm refit p50 | warm refit p95 | update p50 | update p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in costs:
        lines.append(
            f"| {row.model} | {_p(row.cold_fit_ms, 50)} | {_p(row.cold_fit_ms, 95)} | "
            f"{_p(row.warm_refit_ms, 50)} | {_p(row.warm_refit_ms, 95)} | {_p(row.update_ms, 50)} | "
            f"{_p(row.update_ms, 95)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30-minute slices, one horizon")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "forecast.md")
    args = parser.parse_args()
    started = time.monotonic()
    traces = load_traces(args.quick)
    horizons = (60.0,) if args.quick else HORIZONS_S
    accuracy: dict[tuple[str, str, float], dict[str, Evaluation]] = {}
    rate_values: dict[str, np.ndarray] = {}
    for trace_name, trace in traces.items():
        load = trace_to_series(trace, STEP_S)
        rate_values[trace_name] = complete_buckets(load, "arrival_rate_rps")
        jobs = [(s, h) for s in RATE_SERIES for h in horizons] + [(s, 60.0) for s in LENGTH_SERIES]
        for series, horizon in jobs:
            values = complete_buckets(load, series)
            accuracy[(trace_name, series, horizon)] = {
                model: evaluate(
                    values,
                    STEP_S,
                    horizon,
                    model,
                    series,
                    0.9,
                    HISTORY_POINTS,
                    WARMUP_POINTS,
                    max_gap_steps=max_gap_steps_for(series),
                )
                for model in MODELS
            }
            naive, auto = (
                accuracy[(trace_name, series, horizon)]["naive"],
                accuracy[(trace_name, series, horizon)]["auto"],
            )
            print(
                f"{trace_name} {series} {horizon:.0f}s: naive {naive.mase:.3f} auto {auto.mase:.3f} "
                f"coverage {auto.coverage:.3f}",
                flush=True,
            )
    costs = measure_cost(rate_values, windows_per_series=3 if args.quick else 8)
    report = render(accuracy, costs, traces, time.monotonic() - started, args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
