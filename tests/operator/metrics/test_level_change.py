"""A load that steps from one flat level to another is read as its new level, not as burstiness or a
trend: the rate from the step on, the burstiness within each level, no slope across the jump
(`estimators.level_change`, `summarize_arrivals`). On the steps trace a window straddling a 2x jump read
an index of dispersion of 12-14 and ordered 8 prefill replicas where 6 served the new level."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopd_operator.metrics.estimators import Intervals, level_change, summarize_arrivals

RNG_SEEDS = range(200)


def _poisson(*segments: tuple[float, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.poisson(rate, bins) for rate, bins in segments]).astype(np.float64)


@pytest.mark.parametrize(("low", "high"), [(80.0, 160.0), (190.0, 100.0), (10.0, 30.0)])
def test_a_step_is_found_where_it_happened_with_both_levels(low: float, high: float) -> None:
    change = level_change(_poisson((low, 70), (high, 50)))
    assert change is not None
    assert abs(change.index - 70) <= 1
    assert change.before_rps == pytest.approx(low, rel=0.1)
    assert change.after_rps == pytest.approx(high, rel=0.1)


def test_a_ramp_is_not_a_step() -> None:
    """A steady rise is the trend's to extrapolate: two flat levels fit it worse than a line."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        assert level_change(rng.poisson(np.linspace(80.0, 160.0, 120)).astype(np.float64)) is None


@pytest.mark.parametrize("rate", [1.0, 20.0, 120.0])
def test_flat_poisson_arrivals_show_no_step(rate: float) -> None:
    """Two minutes of 1 s bins at a flat rate, 200 draws: the largest split never scores past the bar."""
    found = [level_change(_poisson((rate, 120), seed=seed)) for seed in RNG_SEEDS]
    assert all(change is None for change in found)


def test_the_latest_of_two_steps_sets_the_level() -> None:
    """A surge ended and the next began within the window: the level is the second surge's."""
    change = level_change(_poisson((240.0, 50), (120.0, 50), (240.0, 20)))
    assert change is not None
    assert change.index == pytest.approx(100, abs=1)
    assert change.before_rps == pytest.approx(120.0, rel=0.05)
    assert change.after_rps == pytest.approx(240.0, rel=0.05)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 500.0, allow_nan=False), min_size=0, max_size=150),
    st.integers(1, 10),
)
def test_a_found_step_always_leaves_min_bins_on_each_side(rates: list[float], min_bins: int) -> None:
    values = np.asarray(rates, dtype=np.float64)
    change = level_change(values, min_bins=min_bins)
    if change is not None:
        assert min_bins <= change.index <= len(values) - min_bins
        assert change.after_rps == pytest.approx(float(np.mean(values[change.index :])))


def _summary(counts: np.ndarray, window_s: float = 60.0):  # type: ignore[no-untyped-def]
    return summarize_arrivals([Intervals.bins(counts, 1000.0, 1.0)], window_seconds=window_s)


def test_a_step_inside_the_window_is_read_as_the_new_level() -> None:
    """80 rps for 100 s, then 160 for 20 s, read over a 60 s window: the rate is the new level (the
    window's mean would be 107), the burstiness that of each level (about 1, not the 14 the jump
    reads as), no trend (the slope across the jump is 1.3 rps per second), the step's age reported."""
    counts = _poisson((80.0, 100), (160.0, 20), seed=5)
    summary = _summary(counts)
    assert summary.rate_rps == pytest.approx(160.0, rel=0.05)
    assert summary.scv == pytest.approx(1.0, abs=0.4)
    assert summary.trend_rps_per_s == 0.0
    assert summary.level_age_seconds == pytest.approx(20.0, abs=1.0)
    naive = float(np.var(counts[-60:], ddof=1) / np.mean(counts[-60:]))
    assert naive > 10  # what the window read before


def test_a_level_older_than_half_the_trend_window_has_its_own_trend() -> None:
    """A step 80 s ago, then a rise: the trend is the rise's, fitted over the new level's bins only."""
    rng = np.random.default_rng(9)
    counts = np.concatenate(
        [rng.poisson(60.0, 60), rng.poisson(150.0 + 0.5 * np.arange(80, dtype=np.float64))]
    ).astype(np.float64)
    summary = _summary(counts)
    assert summary.level_age_seconds == pytest.approx(80.0, abs=1.0)
    assert summary.trend_rps_per_s == pytest.approx(0.5, abs=0.2)


def test_a_flat_load_reports_no_step() -> None:
    summary = _summary(_poisson((120.0, 180), seed=2))
    assert summary.level_age_seconds is None
    assert summary.rate_rps == pytest.approx(120.0, rel=0.05)
