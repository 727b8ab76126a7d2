"""`dopd forecast`: the forecaster on a request trace, as the operator would run it.

Without `--backtest` it prints the forecast at the end of the trace for each series (what the planner
would get now). With `--backtest` it replays the trace tick by tick through each model and prints, per
model and series: MASE, sMAPE, coverage of the upper quantile and CPU time per refit, then which model
auto picked. Bad paths and malformed traces end with one line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os

# The CLI edge is where the environment is set: OpenBLAS' thread pool makes the tiny matrices of these
# fits several times slower on a shared machine. Only effective before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import math
from pathlib import Path

import click
import numpy as np

from dopd_forecaster.errors import ForecastError
from dopd_forecaster.evaluate import Evaluation, evaluate
from dopd_forecaster.forecaster import MODEL_NAMES, SeriesForecaster
from dopd_forecaster.models import FloatArray
from dopd_forecaster.series import SERIES_NAMES, LoadSeries, trace_to_series
from dopd_forecaster.traces import TRACE_FORMATS, TraceFormatError, load_trace

BACKTEST_MODELS = ("naive", "seasonal-naive", "ewma", "holt-winters", "arima", "auto")
# Length statistics are NaN in buckets without requests; between bursts that is most buckets, so gaps
# are bridged however long they are (the lengths of the next requests do not depend on the idle time).
_UNBOUNDED_GAP_STEPS = 1_000_000_000


def max_gap_steps_for(series: str) -> int:
    """How many missing steps a series may bridge: 3 for rates, any number for length statistics."""
    return 3 if series.endswith("_per_s") or series == "arrival_rate_rps" else _UNBOUNDED_GAP_STEPS


def complete_buckets(load: LoadSeries, series: str) -> FloatArray:
    """The series without its last bucket, which the trace covers only partly (its rate reads low)."""
    return load.series(series)[:-1]


def _split(option: str, allowed: tuple[str, ...], label: str) -> list[str]:
    chosen = [item.strip() for item in option.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown {label} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
        )
    return chosen


def _format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "-"
    return "-" if value is None else str(value)


@click.command("forecast")
@click.option("--trace", "trace_path", required=True, type=click.Path(path_type=Path), help="Trace file.")
@click.option("--format", "trace_format", type=click.Choice(TRACE_FORMATS), help="Override detection.")
@click.option(
    "--step",
    "step_s",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds per step of the load series.",
)
@click.option(
    "--horizon",
    "horizon_s",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Lead time in seconds (pod startup plus one interval).",
)
@click.option("--quantile", type=click.FloatRange(0.5, 1, max_open=True), default=0.9, show_default=True)
@click.option(
    "--history",
    "history_points",
    type=click.IntRange(min=30),
    default=360,
    show_default=True,
    help="Points of history each forecast sees (360 = 1 hour at 10 s).",
)
@click.option("--models", default=",".join(BACKTEST_MODELS), show_default=True, help="Models to backtest.")
@click.option(
    "--series", "series_option", default=",".join(SERIES_NAMES), show_default=True, help="Series to forecast."
)
@click.option(
    "--rate-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Replay the trace this many times faster.",
)
@click.option("--backtest", is_flag=True, help="Replay tick by tick and score every model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def forecast(
    trace_path: Path,
    trace_format: str | None,
    step_s: float,
    horizon_s: float,
    quantile: float,
    history_points: int,
    models: str,
    series_option: str,
    rate_scale: float,
    backtest: bool,
    as_json: bool,
) -> None:
    """Forecast the load series of a request trace, or backtest the models on it."""
    model_names = _split(models, MODEL_NAMES, "model")
    series_names = _split(series_option, SERIES_NAMES, "series")
    try:
        trace = load_trace(trace_path, trace_format)
    except (TraceFormatError, OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read trace {trace_path}: {exc}") from None
    load = trace_to_series(trace.scaled(rate_scale) if rate_scale != 1.0 else trace, step_s)
    header = {
        "trace": str(trace_path),
        "format": trace.format,
        "requests": len(trace),
        "step_s": step_s,
        "horizon_s": horizon_s,
        "quantile": quantile,
        "points": len(load),
    }
    if backtest:
        results = [
            evaluate(
                complete_buckets(load, name),
                step_s,
                horizon_s,
                model,
                name,
                quantile,
                history_points,
                max_gap_steps=max_gap_steps_for(name),
            )
            for name in series_names
            for model in model_names
        ]
        _print_backtest(header, results, as_json)
    else:
        _print_forecasts(
            header,
            load,
            series_names,
            model_names[0] if len(model_names) == 1 else "auto",
            horizon_s,
            quantile,
            history_points,
            as_json,
        )


def _print_backtest(header: dict[str, object], results: list[Evaluation], as_json: bool) -> None:
    rows = [r.as_row() for r in results]
    picks = {r.series: dict(r.picks.most_common()) for r in results if r.model == "auto"}
    if as_json:
        click.echo(json.dumps({**header, "rows": rows, "auto_picks": picks}, indent=2))
        return
    click.echo(" ".join(f"{k}={v}" for k, v in header.items()))
    columns = [
        "model",
        "series",
        "forecasts",
        "mase",
        "smape",
        "coverage",
        "fit_ms_p50",
        "fit_ms_p95",
        "update_ms_p95",
    ]
    widths = [max(len(c), *(len(_format_cell(row[c])) for row in rows)) for c in columns]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(_format_cell(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
    for series, counts in picks.items():
        total = sum(counts.values()) or 1
        shares = ", ".join(f"{model} {count / total:.0%}" for model, count in counts.items())
        click.echo(f"auto picked on {series}: {shares or 'nothing (history too short)'}")


def _print_forecasts(
    header: dict[str, object],
    load: LoadSeries,
    series_names: list[str],
    model: str,
    horizon_s: float,
    quantile: float,
    history_points: int,
    as_json: bool,
) -> None:
    step_s = float(header["step_s"])  # type: ignore[arg-type]
    forecasts: dict[str, dict[str, object]] = {}
    for name in series_names:
        values = complete_buckets(load, name)[-history_points:]
        forecaster = SeriesForecaster(
            model=model,
            quantile=quantile,
            step_s=step_s,
            history_max_points=history_points,
            max_gap_steps=max_gap_steps_for(name),
        )
        try:
            result = forecaster.forecast(np.arange(len(values), dtype=np.float64) * step_s, values, horizon_s)
        except ForecastError as exc:
            forecasts[name] = {"error": str(exc)}
            continue
        forecasts[name] = {
            "mean": round(result.mean, 4),
            "upper": round(result.upper, 4),
            "model": result.model,
            "detail": result.detail,
            "reason": result.reason,
        }
    if as_json:
        click.echo(json.dumps({**header, "forecasts": forecasts}, indent=2))
        return
    click.echo(" ".join(f"{k}={v}" for k, v in header.items()))
    for name, entry in forecasts.items():
        if "error" in entry:
            click.echo(f"{name}: {entry['error']}")
        else:
            click.echo(f"{name}: mean {entry['mean']} upper {entry['upper']} ({entry['detail']})")
