"""Same inputs, same numbers; and the command line users script against."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dopd_sim.cli import bench, simulate
from dopd_sim.config import SimConfig
from dopd_sim.policies import make_policy
from dopd_sim.run import simulate as run
from dopd_sim.workload import load_workload

REQUIRED_KEYS = {
    "policy", "requests", "completed", "slo_attainment", "goodput_rps", "ttft_p50_s", "ttft_p90_s",
    "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s", "gpu_hours", "peak_gpus", "scale_actions",
}  # fmt: skip

SYNTHETIC = "synthetic:gamma,rate_rps=15,cv=2,duration_s=300"


def _summary(seed: int, policy: str) -> dict[str, object]:
    trace = load_workload(SYNTHETIC, rate_scale=1.5, seed=seed)
    config = SimConfig(seed=seed)
    data = run(trace, make_policy(policy, trace, config), config).summary.to_json()
    data.pop("wall_seconds")
    return data


def test_same_seed_same_results_different_seed_different_load() -> None:
    for policy in ("dopd", "reactive"):
        assert _summary(7, policy) == _summary(7, policy)
    assert _summary(7, "reactive")["requests"] != _summary(8, "reactive")["requests"]


def test_simulate_json_has_the_documented_fields() -> None:
    result = CliRunner().invoke(simulate, ["--trace", SYNTHETIC, "--policy", "reactive", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) >= REQUIRED_KEYS
    assert data["policy"] == "reactive"
    assert 0.0 <= data["slo_attainment"] <= 1.0
    assert data["completed"] == data["requests"]


def test_simulate_reports_a_missing_trace_cleanly() -> None:
    result = CliRunner().invoke(simulate, ["--trace", "/nonexistent/trace.csv", "--json"])
    assert result.exit_code != 0
    assert "trace file not found" in result.output


def test_bench_writes_results_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["--trace", SYNTHETIC, "--policies", "dopd,static,reactive", "--out", str(out)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    assert [r["policy"] for r in rows] == ["dopd", "static", "reactive"]
    assert all(set(r) >= REQUIRED_KEYS for r in rows)
    assert "| dopd |" in (out / "report.md").read_text()
    assert (out / "latency_cdf.png").stat().st_size > 0
    assert (out / "timeline_dopd.png").stat().st_size > 0


def test_goodput_search_finds_a_rate_the_static_layout_sustains() -> None:
    args = [
        "--trace",
        "synthetic:poisson,rate_rps=2,duration_s=300",
        "--policy",
        "static",
        "--static-layout",
        "1:1",
    ]
    result = CliRunner().invoke(simulate, [*args, "--goodput-search", "1:64"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # One prefill + one decode replica sustain far more than 2 rps but not 128 rps of ~1.2k-token prompts.
    assert 2.0 < data["rate_scale"] < 64.0
    assert data["slo_attainment"] >= 0.99
    assert data["per_gpu_goodput_rps"] == data["goodput_rps"] / data["mean_gpus"]
