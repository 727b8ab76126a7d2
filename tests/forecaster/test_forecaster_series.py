"""Trace -> load series, and the Prometheus clean-up (gaps, NaNs, jitter) before a fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd_forecaster.series import SERIES_NAMES, regularize, trace_to_series
from dopd_forecaster.traces import Trace


def _trace(arrival: list[float], prompt: list[int], output: list[int]) -> Trace:
    return Trace(
        np.array(arrival),
        np.array(prompt, dtype=np.int64),
        np.array(output, dtype=np.int64),
        "mem",
        "canonical",
    )


def test_buckets_rates_and_length_statistics() -> None:
    # Bucket 0 [0,10): 3 requests; bucket 1 [10,20): none; bucket 2 [20,30): 1 request.
    trace = _trace([0.0, 1.0, 9.9, 25.0], [100, 200, 600, 50], [10, 20, 30, 5])
    series = trace_to_series(trace, 10.0)
    assert series.timestamps_s.tolist() == [0.0, 10.0, 20.0]
    assert series.request_count.tolist() == [3, 0, 1]
    assert series.arrival_rate_rps.tolist() == [0.3, 0.0, 0.1]
    assert series.prompt_tokens_per_s.tolist() == [90.0, 0.0, 5.0]
    assert series.output_tokens_per_s.tolist() == [6.0, 0.0, 0.5]
    assert series.input_tokens_mean[0] == 300.0
    assert series.input_tokens_p90[0] == 600.0  # nearest rank: ceil(0.9 * 3) = 3rd of 3
    assert math.isnan(series.input_tokens_mean[1])  # no requests: no length information, not 0
    assert math.isnan(series.output_tokens_p90[1])
    assert series.output_tokens_mean[2] == 5.0


def test_p90_is_nearest_rank_within_a_bucket() -> None:
    # Ten requests with prompts 1..10 in one bucket: p90 is the 9th value, not an interpolation.
    trace = _trace([float(i) for i in range(10)], list(range(10, 0, -1)), [1] * 10)
    series = trace_to_series(trace, 60.0)
    assert series.input_tokens_p90.tolist() == [9.0]
    assert series.input_tokens_mean.tolist() == [5.5]


def test_series_by_name_and_an_empty_trace() -> None:
    empty = trace_to_series(_trace([], [], []), 10.0)
    assert len(empty) == 0
    for name in SERIES_NAMES:
        assert len(empty.series(name)) == 0
    with pytest.raises(KeyError, match="unknown series"):
        empty.series("gpu_count")


def test_regularize_fills_short_gaps_and_ignores_nan() -> None:
    stamps = [0.0, 10.2, 19.8, 40.0, 50.0]  # jittered, 30 s missing
    values = [1.0, 2.0, float("nan"), 5.0, 6.0]  # NaN at 20 s: treated as missing
    regular = regularize(stamps, values, step_s=10.0, max_gap_steps=3)
    assert regular.timestamps_s.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert regular.values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert regular.filled_points == 2
    assert regular.dropped_points == 0


def test_regularize_drops_history_behind_a_long_gap() -> None:
    # 5 missing steps between 20 s and 80 s: older history would bridge an outage, so it goes.
    regular = regularize(
        [0.0, 10.0, 20.0, 80.0, 90.0], [9.0, 9.0, 9.0, 1.0, 2.0], step_s=10.0, max_gap_steps=3
    )
    assert regular.values.tolist() == [1.0, 2.0]
    assert regular.dropped_points == 3


@pytest.mark.parametrize(
    "values",
    [[], [float("nan")] * 4, [float("inf"), float("nan")]],
    ids=["empty", "all-nan", "inf-and-nan"],
)
def test_regularize_returns_empty_rather_than_raising(values: list[float]) -> None:
    regular = regularize([float(i) for i in range(len(values))], values, step_s=1.0)
    assert len(regular) == 0


def test_regularize_keeps_only_the_newest_points_when_asked() -> None:
    regular = regularize(
        [float(i) for i in range(1000)], [float(i) for i in range(1000)], step_s=1.0, max_points=3
    )
    assert regular.timestamps_s.tolist() == [997.0, 998.0, 999.0]
    assert regular.values.tolist() == [997.0, 998.0, 999.0]
