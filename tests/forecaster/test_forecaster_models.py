"""Model internals: our Holt-Winters recursion continues statsmodels' fit exactly, each model's one-pass
walk-forward equals forecasting and updating point by point, and season detection finds only real seasons."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from statsmodels.tsa.holtwinters import ExponentialSmoothing

from dopd_forecaster.backtest import mase, naive_scale, smape
from dopd_forecaster.models import MODELS, FitContext, FitFailed, walk_forward_by_updates
from dopd_forecaster.season import detect_season


def _seasonal(n: int, period: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    return 10 + 0.01 * steps + 3 * np.sin(2 * np.pi * steps / period) + rng.normal(0, 1, n)


@pytest.mark.parametrize("season", [48, None], ids=["seasonal", "damped-trend-only"])
def test_holt_winters_forecast_matches_statsmodels(season: int | None) -> None:
    values = _seasonal(300, 48)
    fitted = MODELS["holt-winters"].fit(values, FitContext(season))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ExponentialSmoothing(
            values,
            trend="add",
            damped_trend=True,
            seasonal="add" if season else None,
            seasonal_periods=season,
            initialization_method="heuristic" if season else "estimated",
        ).fit(use_brute=season is None)
    expected = reference.forecast(50)
    # If our recursion's season update or damping differed, these would drift apart within a season.
    for steps in (1, 6, 50):
        assert fitted.forecast(steps) == pytest.approx(expected[steps - 1], rel=1e-9)


@pytest.mark.parametrize("name", ["naive", "seasonal-naive", "ewma", "holt-winters", "arima"])
@pytest.mark.parametrize("steps", [1, 6])
def test_walk_forward_equals_forecast_then_update(name: str, steps: int) -> None:
    values = _seasonal(300, 48, seed=1)
    fitted = MODELS[name].fit(values[:240], FitContext(48))
    one_by_one = copy.deepcopy(fitted)
    in_one_pass = fitted.walk_forward(values[240:], steps)
    expected = walk_forward_by_updates(one_by_one, values[240:], steps)
    assert len(in_one_pass) == 60 - steps + 1
    np.testing.assert_allclose(in_one_pass, expected, rtol=1e-8, atol=1e-8)
    # Both end in the same state: having seen all 300 values.
    assert fitted.forecast(steps) == pytest.approx(one_by_one.forecast(steps), rel=1e-8)


def test_baselines_forecast_literal_values() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert MODELS["naive"].fit(values, FitContext(None)).forecast(3) == 6.0
    seasonal = MODELS["seasonal-naive"].fit(values, FitContext(3))  # last season: 4, 5, 6
    assert [seasonal.forecast(h) for h in (1, 2, 3, 4)] == [4.0, 5.0, 6.0, 4.0]
    with pytest.raises(FitFailed, match="needs a season"):
        MODELS["seasonal-naive"].fit(values, FitContext(None))


def test_arima_interval_grows_with_the_horizon() -> None:
    rng = np.random.default_rng(2)
    random_walk = np.cumsum(rng.normal(0, 1, 200))
    fitted = MODELS["arima"].fit(random_walk, FitContext(None))
    near, far = fitted.interval_upper_offset(1, 0.9), fitted.interval_upper_offset(18, 0.9)
    assert near is not None and far is not None
    # Unit innovations: the 1-step 0.9 offset is about 1.28. An integrated model's interval widens with
    # the horizon (here ARIMA(1,1,1): 1.20 -> 2.68); a stationary one's would level off near 1.3.
    assert 1.0 < near < 1.6
    assert far > 2 * near


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        (_seasonal(288, 48), 48),
        (np.random.default_rng(3).normal(0, 1, 288), None),
        (np.cumsum(np.random.default_rng(4).normal(0, 1, 288)), None),
        (np.where(np.random.default_rng(5).random(288) < 0.05, 50.0, 1.0), None),
        (np.zeros(288), None),
        (_seasonal(60, 48), None),  # fewer than 3 cycles: cannot tell from a trend
    ],
    ids=["sine-period-48", "white-noise", "random-walk", "bursts", "flat", "too-few-cycles"],
)
def test_detect_season(series: np.ndarray, expected: int | None) -> None:
    assert detect_season(series) == expected


def test_metrics_literal_values() -> None:
    values = np.array([1.0, 3.0, 2.0, 4.0])
    assert naive_scale(values, 1) == pytest.approx(5.0 / 3.0)  # |2| + |1| + |2| over 3
    assert mase(np.array([1.0, -1.0]), 2.0) == 0.5
    assert mase(np.array([0.0]), 0.0) == 0.0
    assert mase(np.array([1.0]), 0.0) == float("inf")
    assert smape(np.array([0.0, 1.0]), np.array([0.0, 3.0])) == pytest.approx(0.5)  # 0 and 2*2/4, halved
