"""Rolling-origin backtests: score candidate models at the planner's horizon and pick one (auto).

Each candidate is fitted once on the older part of the history and walked forward through the recent
part with its parameters fixed, yielding the horizon-step forecast it would have made at every origin.
From those errors come its MASE (the auto choice), its empirical upper quantile (the upper bound of
models without a prediction interval), and the coverage check of models with one. The fitted model ends
up having absorbed the whole history, ready to forecast from now: one fit per candidate per refit.

statsmodels warnings are recorded and counted per category, never printed. `warnings.catch_warnings`
swaps process-global state, so fits hold one module lock while capturing; on one core that serialises
nothing that would otherwise run in parallel (the fits hold the GIL).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Final

import numpy as np

from dopd_forecaster import statsmodels_models  # noqa: F401 - registers holt-winters and arima
from dopd_forecaster.models import MODELS, FitContext, FitFailed, FitRecord, FittedModel, FloatArray

MIN_TRAIN_POINTS: Final = 8
MIN_RESIDUALS: Final = 8
# A challenger must beat naive's backtest MASE by a share to be picked: a model that wins by less is as
# likely winning by the luck of this window as by structure. The share shrinks with the evidence, as the
# noise of a mean of n errors does: 0.5 / sqrt(n), so 18% on 8 errors, 5% on 115, never below 2%.
AUTO_MIN_IMPROVEMENT: Final = 0.02
AUTO_IMPROVEMENT_PER_ROOT_ERROR: Final = 0.5
# A model's own interval is used while its backtest coverage stays within this of the nominal level.
INTERVAL_COVERAGE_TOLERANCE: Final = 0.05
# Candidates auto tries, simplest first: a later one must beat the one before it clearly (pick_best).
AUTO_CANDIDATES: Final = ("naive", "seasonal-naive", "ewma", "holt-winters", "arima")

_WARNINGS_LOCK = threading.Lock()


@contextmanager
def counted_warnings(counts: Counter[str]) -> Iterator[None]:
    """Record the warnings raised inside (statsmodels' convergence and estimation warnings) and add them
    to `counts` by category name, instead of printing them."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            counts.update(w.category.__name__ for w in caught)


def min_history_points(steps: int) -> int:
    """The shortest history a backtest at `steps` can score: a minimal fit plus `MIN_RESIDUALS` errors."""
    return MIN_TRAIN_POINTS + steps - 1 + MIN_RESIDUALS


def backtest_points(n_points: int, steps: int, max_points: int) -> int:
    """How many of the newest points to hold out: a third of the history, within [minimum, max_points]."""
    minimum = steps - 1 + MIN_RESIDUALS
    return max(min(max(n_points // 3, minimum), max(max_points, minimum), n_points - MIN_TRAIN_POINTS), 0)


def naive_scale(values: FloatArray, steps: int) -> float:
    """MASE denominator: the in-sample mean absolute `steps`-step naive error (naive scores about 1)."""
    if len(values) <= steps:
        return 0.0
    return float(np.mean(np.abs(values[steps:] - values[:-steps])))


def mase(errors: FloatArray, scale: float) -> float:
    """Mean absolute scaled error; a flat training window (scale 0) scores 0 if exact, else infinity."""
    mean_abs = float(np.mean(np.abs(errors))) if len(errors) else float("nan")
    if scale > 0:
        return mean_abs / scale
    return 0.0 if mean_abs == 0 else float("inf")


def smape(forecasts: FloatArray, actuals: FloatArray) -> float:
    """Symmetric MAPE in [0, 2]; a pair of zeros counts as a perfect forecast (idle periods are common)."""
    denominator = np.abs(forecasts) + np.abs(actuals)
    ratio = np.divide(
        2.0 * np.abs(forecasts - actuals), denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(np.mean(ratio)) if len(ratio) else float("nan")


@dataclass
class Candidate:
    """One model's backtest: its errors (actual - forecast) at the horizon and the state at now."""

    name: str
    record: FitRecord
    fitted: FittedModel | None = None
    errors: FloatArray = field(default_factory=lambda: np.zeros(0))
    mase: float = float("nan")


def score_candidate(
    name: str, values: FloatArray, steps: int, holdout_points: int, context: FitContext
) -> Candidate:
    """Fit `name` on all but the last `holdout_points` values and walk it forward through them.

    Never raises for a model's failure: the reason goes into the record, with the warnings counted.
    """
    spec = MODELS[name]
    train, test = values[: len(values) - holdout_points], values[len(values) - holdout_points :]
    record = FitRecord(model=name, ok=False)
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    with counted_warnings(counts):
        try:
            needed = spec.min_points(context.season_steps)
            if len(train) < needed:
                raise FitFailed(f"{name} needs {needed} training points, has {len(train)}")
            fitted = spec.fit(train, context)
            forecasts = fitted.walk_forward(test, steps)
            if not np.all(np.isfinite(forecasts)) or not np.isfinite(fitted.forecast(steps)):
                raise FitFailed(f"{name} produced a non-finite forecast")
        except FitFailed as exc:
            record.reason = exc.reason
            fitted = None
        except Exception as exc:
            # The boundary with statsmodels, which raises a wide range of errors (LinAlgError, ValueError,
            # IndexError, ...) on degenerate data: the model is dropped for this round with the error in
            # the reason, and the forecast goes on with the other candidates. Not swallowed: reported.
            record.reason = f"{name} fit failed: {type(exc).__name__}: {exc}"
            fitted = None
    record.fit_ms = (time.perf_counter() - started) * 1e3
    record.warnings = dict(counts)
    if fitted is None:
        return Candidate(name, record)
    record.ok = True
    errors = test[steps - 1 :] - forecasts
    return Candidate(name, record, fitted, errors, mase(errors, naive_scale(train, steps)))


def required_improvement(n_errors: int) -> float:
    """The share by which a model must beat naive's backtest MASE on `n_errors` errors to be picked."""
    return max(AUTO_MIN_IMPROVEMENT, AUTO_IMPROVEMENT_PER_ROOT_ERROR / float(np.sqrt(max(n_errors, 1))))


def pick_best(candidates: list[Candidate]) -> tuple[Candidate, str]:
    """The simplest candidate no other beats clearly: walk the candidates from simplest (naive) to most
    flexible, and let each replace the incumbent only if its MASE is lower by `required_improvement`.

    A flexible model that wins a short backtest by a few percent is usually fitting that window's noise;
    on heavy-tailed iid series (Mooncake's lengths) plain "lowest MASE" picked Holt-Winters, which then
    forecast worse than naive out of sample.
    """
    usable = [c for c in candidates if c.fitted is not None and not np.isnan(c.mase)]
    if not usable:
        raise ValueError("no candidate could be fitted, not even naive")
    incumbent = usable[0]
    for challenger in usable[1:]:
        margin = required_improvement(len(challenger.errors))
        if challenger.mase < incumbent.mase * (1 - margin):
            incumbent = challenger
    scores = ", ".join(f"{c.name} {c.mase:.3f}" for c in sorted(usable, key=lambda c: c.mase))
    margin = required_improvement(len(incumbent.errors))
    return incumbent, f"simplest model no other beat by {margin:.0%} in backtest MASE ({scores})"


@dataclass(frozen=True)
class UpperBound:
    """How far above the point forecast the upper quantile sits, and where that came from."""

    offset: float
    source: str


def upper_offset(
    errors: FloatArray, interval: float | None, quantile: float, fallback_offset: float
) -> UpperBound:
    """Upper quantile minus the point forecast at the horizon, from the recent errors at that horizon
    (actual - forecast: the backtest's, then the live ones as forecasts come due).

    The model's own interval when it has one and it covers its nominal level on those errors (within
    `INTERVAL_COVERAGE_TOLERANCE`); otherwise the errors' empirical quantile, which is calibrated by
    construction on the recent past (split-conformal style). With too few errors, `fallback_offset`.
    Never below zero: the upper is at least the mean.
    """
    enough = len(errors) >= MIN_RESIDUALS
    if interval is not None and np.isfinite(interval):
        coverage = float(np.mean(errors <= interval)) if enough else quantile
        if abs(coverage - quantile) <= INTERVAL_COVERAGE_TOLERANCE:
            return UpperBound(max(interval, 0.0), "model interval")
        empirical = float(np.quantile(errors, quantile, method="higher"))
        return UpperBound(max(empirical, 0.0), f"recent errors (model interval covered {coverage:.2f})")
    if enough:
        return UpperBound(max(float(np.quantile(errors, quantile, method="higher")), 0.0), "recent errors")
    return UpperBound(max(fallback_offset, 0.0), "history spread")


def spread_offset(values: FloatArray, steps: int, quantile: float) -> float:
    """A Gaussian bound on the `steps`-step change, for when there are too few errors; wide on purpose."""
    spread = float(np.std(np.diff(values))) if len(values) > 2 else 0.0
    return NormalDist().inv_cdf(quantile) * spread * float(np.sqrt(steps))
