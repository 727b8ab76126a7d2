"""The demo's report counts what users see: per request, from the emulator's ground truth, beside what the
operator measured (scripts/demo_report.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def _demo_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_report", REPO / "scripts" / "demo_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_report"] = module
    spec.loader.exec_module(module)
    return module


report = _demo_report()


def tick(t_s: float, finished: int | None, met: int | None, measured: float = 1.0) -> object:
    return report.Tick(
        t_s=t_s, load_rps=10.0, true_rps=10.0, forecast_model=None, forecast_horizon_s=None,
        forecast_mean_rps=None, forecast_upper_rps=None, prefill_desired=1, prefill_ready=1,
        decode_desired=1, decode_ready=1, gpus=2, ttft_attainment=measured, tpot_attainment=measured,
        why="no change", requests_finished=finished, requests_met=met,
    )  # fmt: skip


def test_each_interval_scores_the_requests_finished_in_it_and_unknown_stays_unknown() -> None:
    ticks = [
        tick(5, 100, 100),
        tick(10, 200, 150),
        tick(15, 200, 150),
        tick(20, None, None),
        tick(25, 300, 290),
    ]
    # 100/100 since the load started, 50 of 100, none finished, not read, and after an unread count the
    # interval is unknown too (its start is).
    assert report.true_attainment(ticks) == [1.0, 0.5, None, None, None]


def test_the_summary_shows_the_requests_that_met_the_slos_beside_what_the_operator_measured() -> None:
    run = report.DemoRun(
        model_path=Path("model.yaml"), load="synthetic:x", compression=480.0, load_seconds=30.0,
        ticks=[tick(5, 100, 100), tick(10, 200, 150, measured=1.0), tick(25, 300, 290)],
        requests_finished=400, requests_met=380,
    )  # fmt: skip
    summary = report.operator_summary(run)
    # The operator read 100% in every window, while half of the second interval's requests missed.
    assert summary["attainment the operator measured, worst window"] == 1.0
    assert summary["requests meeting both SLOs, worst interval"] == 0.5
    assert report._cell(summary["requests meeting both SLOs, whole run"]) == "95.00%"
    unread = report.operator_summary(
        report.DemoRun(Path("m.yaml"), "x", 1.0, 30.0, ticks=[tick(5, None, None)])
    )
    assert math.isnan(unread["requests meeting both SLOs, whole run"])
    assert report._cell(unread["requests meeting both SLOs, whole run"]) == "-"
