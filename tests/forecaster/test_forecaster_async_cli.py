"""The asyncio wrapper, the `dopd forecast` command, and the package's import boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dopd_forecaster.cli import forecast as forecast_command
from dopd_forecaster.errors import ForecastError, ForecastTimeoutError
from dopd_forecaster.forecaster import SeriesForecaster, forecast_async


def _history(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return np.arange(n) * 10.0, 5 + rng.normal(0, 1, n)


async def test_forecast_async_matches_the_synchronous_call() -> None:
    stamps, values = _history()
    # a generous per-fit limit: a fit cut short on a busy machine in one call but not the other would
    # make the two differ for a reason that has nothing to do with the executor
    expected = SeriesForecaster(fit_timeout_s=120.0).forecast(stamps, values, horizon_s=60.0)
    with ThreadPoolExecutor(max_workers=1) as executor:
        result = await forecast_async(
            SeriesForecaster(fit_timeout_s=120.0), stamps, values, 60.0, executor=executor, timeout_s=240.0
        )
    assert result == expected


async def test_forecast_async_enforces_its_time_limit() -> None:
    stamps, values = _history()
    # A first auto call fits five models (tens of ms at least); a 0.1 ms limit cannot be met.
    with pytest.raises(ForecastTimeoutError, match=r"did not finish within 0\.0001 s"):
        await forecast_async(SeriesForecaster(), stamps, values, 60.0, timeout_s=1e-4)


async def test_forecast_async_passes_a_short_history_error_through() -> None:
    with pytest.raises(ForecastError, match="history too short: 3 usable points"):
        await forecast_async(SeriesForecaster(), [0.0, 10.0, 20.0], [1.0, 2.0, 3.0], 60.0)


def test_timeout_error_is_both_a_forecast_error_and_a_timeout() -> None:
    assert issubclass(ForecastTimeoutError, ForecastError)
    assert issubclass(ForecastTimeoutError, TimeoutError)


def _canonical_slice(tmp_path: Path, azure_head_200: Path) -> Path:
    from dopd_forecaster.traces import load_trace, write_canonical_csv

    path = tmp_path / "slice.csv"
    write_canonical_csv(load_trace(azure_head_200), path)
    return path


def test_cli_backtest_json_reports_every_model_and_auto_pick(tmp_path: Path, azure_head_200: Path) -> None:
    trace = _canonical_slice(tmp_path, azure_head_200)  # 199 requests over ~55 s
    result = CliRunner().invoke(
        forecast_command,
        [
            "--trace",
            str(trace),
            "--step",
            "1",
            "--horizon",
            "3",
            "--backtest",
            "--json",
            "--models",
            "naive,ewma,auto",
            "--series",
            "arrival_rate_rps",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "canonical"
    assert report["requests"] == 199
    assert [row["model"] for row in report["rows"]] == ["naive", "ewma", "auto"]
    for row in report["rows"]:
        assert set(row) >= {"model", "series", "mase", "smape", "coverage", "fit_ms_p50", "fit_ms_p95"}
        assert row["series"] == "arrival_rate_rps"
        assert row["forecasts"] > 0
    assert set(report["auto_picks"]) == {"arrival_rate_rps"}


def test_cli_forecast_prints_one_line_per_series(tmp_path: Path, mooncake_head_200: Path) -> None:
    result = CliRunner().invoke(
        forecast_command, ["--trace", str(mooncake_head_200), "--step", "1", "--horizon", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"trace={mooncake_head_200} format=mooncake requests=200")
    assert [line.split(":")[0] for line in lines[1:]] == [
        "arrival_rate_rps",
        "prompt_tokens_per_s",
        "output_tokens_per_s",
        "input_tokens_mean",
        "input_tokens_p90",
        "output_tokens_mean",
        "output_tokens_p90",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "Error: cannot read trace {path}: [Errno 2] No such file or directory"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,abc,1\n",
            "Error: cannot read trace {path}: bad.csv line 2: ContextTokens is not an integer ('abc')",
        ),
    ],
    ids=["missing-file", "malformed-line"],
)
def test_cli_errors_are_one_line_and_non_zero(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(forecast_command, ["--trace", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().startswith(message.format(path=path))
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_package_imports_no_cluster_io_libraries() -> None:
    code = (
        "import sys, dopd_forecaster.forecaster, dopd_forecaster.cli, dopd_forecaster.evaluate;"
        "bad = [m for m in ('kopf', 'kubernetes', 'httpx', 'prometheus_api_client',"
        " 'dopd_operator', 'dopd_sim')"
        " if m in sys.modules]; print(bad)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
