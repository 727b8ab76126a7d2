"""`SeriesForecaster`: the stateful forecaster the operator and the simulator call once per tick.

Per call it regularises the history (Prometheus gaps and NaNs), then either refits (first call, on
schedule, after a change of horizon or a break in the data) or, in between, updates the fitted model with
the new points only. A refit backtests the candidate models at the horizon (`backtest`) and, for auto,
picks one by MASE; the pick (and ARIMA's order) is repeated only every `repick_every_s`, and in between
only the picked model (and naive, the fallback) is refitted, warm-started from its last parameters.
A failed, non-converging or over-time fit drops that model for the round, with the reason in
`Forecast.reason`; naive always remains. The upper quantile comes from the model's interval or from its
recent horizon errors, which keep coming in as forecasts fall due between refits.

Nothing here reads the clock for decisions: time comes in as the series' timestamps and `now_s`, so the
simulator runs it in virtual time. Wall time is read only to enforce the per-fit time limit.

With `background_refits` (the operator's setting) a call never waits for a fit once there is one: a
due refit is recorded as a request, the call answers from the current fit updated with the new points,
and the caller runs `run_requested_refit` in a worker thread of its own, which installs the new fit for
the next call. The first call, with nothing fitted yet, raises `ForecastPendingError` after recording
its request. Without it (the simulator's setting) every refit happens inside the call, so a simulated
run does not depend on thread timing.

`forecast_async` runs a call in an executor thread (fits hold the GIL; on one core a thread pool costs
nothing over a process pool, and the fitted state stays in process) under an overall time limit.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Final, Literal, get_args

import numpy as np

from dopd_forecaster.backtest import (
    AUTO_CANDIDATES,
    backtest_points,
    counted_warnings,
    min_history_points,
    pick_best,
    score_candidate,
    spread_offset,
    upper_offset,
)
from dopd_forecaster.errors import ForecastError, ForecastPendingError, ForecastTimeoutError
from dopd_forecaster.models import FitContext, FitRecord, FittedModel, FloatArray
from dopd_forecaster.season import detect_season
from dopd_forecaster.series import regularize

ModelName = Literal["auto", "holt-winters", "arima", "ewma", "naive", "seasonal-naive"]
MODEL_NAMES: Final[tuple[str, ...]] = get_args(ModelName)


@dataclass(frozen=True)
class Forecast:
    """The load forecast at `horizon_s` ahead: the point forecast and the upper `quantile`.

    `upper >= mean >= 0` for a non-negative forecaster (the default: rates and token counts).
    """

    mean: float
    upper: float
    quantile: float
    model: str
    horizon_s: float
    fitted_at_s: float
    reason: str
    detail: str = ""
    backtest_mase: float | None = None


@dataclass
class ForecasterStats:
    """Counters for the operator's metrics; `last_fits` describes the most recent refit's candidates."""

    refits: int = 0
    reselections: int = 0  # refits that re-ran auto's pick or ARIMA's order search (a subset of refits)
    updates: int = 0
    fallbacks: int = 0
    timeouts: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    last_fits: list[FitRecord] = field(default_factory=list)


@dataclass
class _FittedState:
    model: str
    fitted: FittedModel
    steps: int
    interval_offset: float | None  # the model's own (upper - mean) at the horizon, if it has one
    fallback_offset: float
    errors: deque[float]  # recent horizon errors, actual - forecast: backtest's first, then live ones
    pending: deque[tuple[float, float]]  # (target timestamp, point forecast) not yet due
    fitted_at_s: float
    picked_at_s: float
    last_timestamp_s: float
    why: str
    mase: float
    history_points: int
    picked_history_points: int


@dataclass(frozen=True)
class _RefitRequest:
    """A refit a call found due but left to `run_requested_refit` (background refits only)."""

    history: FloatArray
    steps: int
    now_s: float
    last_timestamp_s: float


# How often a forecaster refits by default (auto re-selects every three refits).
DEFAULT_REFIT_EVERY_S: Final = 600.0


class SeriesForecaster:
    """Forecasts one series (e.g. one DisaggregatedModel's arrival rate) at the planner's horizon."""

    def __init__(
        self,
        model: str = "auto",
        quantile: float = 0.9,
        step_s: float = 10.0,
        season_steps: int | None = None,
        refit_every_s: float = DEFAULT_REFIT_EVERY_S,
        fit_timeout_s: float = 2.0,
        *,
        repick_every_s: float | None = None,
        history_max_points: int = 360,
        backtest_max_points: int = 120,
        max_gap_steps: int = 3,
        nonnegative: bool = True,
        background_refits: bool = False,
    ) -> None:
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if not 0.5 <= quantile < 1:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile!r}")
        if not (step_s > 0 and math.isfinite(step_s)):
            raise ValueError(f"step_s must be a positive finite number, got {step_s!r}")
        if season_steps is not None and season_steps < 2:
            raise ValueError(f"season_steps must be at least 2 when set, got {season_steps!r}")
        if history_max_points < min_history_points(1):
            raise ValueError(
                f"history_max_points must be at least {min_history_points(1)}, got {history_max_points}"
            )
        if not (refit_every_s >= 0 and fit_timeout_s > 0):
            raise ValueError("refit_every_s must be >= 0 and fit_timeout_s > 0")
        self.model = model
        self.quantile = quantile
        self.step_s = float(step_s)
        self.season_steps = season_steps
        self.refit_every_s = refit_every_s
        self.fit_timeout_s = fit_timeout_s
        self.repick_every_s = 3 * refit_every_s if repick_every_s is None else repick_every_s
        self.history_max_points = history_max_points
        self.backtest_max_points = backtest_max_points
        self.max_gap_steps = max_gap_steps
        self.nonnegative = nonnegative
        self.stats = ForecasterStats()
        self.background_refits = background_refits
        self._state: _FittedState | None = None
        self._refit_request: _RefitRequest | None = None
        self._lock = threading.Lock()  # guards _state and _refit_request; never held during a refit
        self._refitting = threading.Lock()  # one background refit at a time

    def horizon_steps(self, horizon_s: float) -> int:
        """The horizon in steps, rounded up: forecasting short of the lead time would under-provision."""
        return max(1, math.ceil(horizon_s / self.step_s - 1e-9))

    def min_history_points(self, horizon_s: float) -> int:
        """The fewest regular points `forecast` accepts for this horizon."""
        return min_history_points(self.horizon_steps(horizon_s))

    @property
    def max_call_s(self) -> float:
        """An upper bound on one call's wall time: every candidate at its fit limit, plus a margin."""
        return self.fit_timeout_s * len(AUTO_CANDIDATES) + 1.0

    def forecast(
        self,
        timestamps_s: Sequence[float] | FloatArray,
        values: Sequence[float] | FloatArray,
        horizon_s: float,
        now_s: float | None = None,
    ) -> Forecast:
        """Forecast the value `horizon_s` after the last sample.

        Raises `ForecastError` only when the usable history is too short (empty, all NaN, or cut short
        behind a long gap); the message says how many points it has and needs. With background refits,
        `ForecastPendingError` while the first fit has not run yet.
        """
        if not (horizon_s > 0 and math.isfinite(horizon_s)):
            raise ValueError(f"horizon_s must be a positive finite number, got {horizon_s!r}")
        with self._lock:
            return self._forecast(timestamps_s, values, horizon_s, now_s)

    def _forecast(
        self,
        timestamps_s: Sequence[float] | FloatArray,
        values: Sequence[float] | FloatArray,
        horizon_s: float,
        now_s: float | None,
    ) -> Forecast:
        steps = self.horizon_steps(horizon_s)
        regular = regularize(timestamps_s, values, self.step_s, self.max_gap_steps, self.history_max_points)
        history = regular.values
        needed = min_history_points(steps)
        if len(history) < needed:
            behind_gap = (
                f", {regular.dropped_points} older dropped behind a gap" if regular.dropped_points else ""
            )
            raise ForecastError(
                f"history too short: {len(history)} usable points at {self.step_s:g} s steps{behind_gap}; "
                f"need {needed} for a {horizon_s:g} s horizon"
            )
        last_timestamp_s = float(regular.timestamps_s[-1])
        now = last_timestamp_s if now_s is None else now_s
        state = self._state
        due = state is None or not self._can_update(state, steps, now, len(history))
        if state is not None and (not due or self.background_refits):
            action = "updated" if state.steps == steps else f"at the previous {state.steps}-step horizon"
            emitted = self._absorb(state, history, last_timestamp_s, horizon_s, action)
            if emitted is not None:
                if due:  # the caller runs the refit off this call; the next call gets its result
                    self._refit_request = _RefitRequest(history, steps, now, last_timestamp_s)
                    emitted = replace(emitted, reason=f"{emitted.reason}; refit requested")
                return emitted
        if state is None and self.background_refits:
            self._refit_request = _RefitRequest(history, steps, now, last_timestamp_s)
            raise ForecastPendingError(f"first fit on {len(history)} points is running in the background")
        state = self._refit(history, steps, now, last_timestamp_s, self._state)
        self._state = state
        self._refit_request = None
        return self._emit(state, horizon_s, "refitted")

    def _absorb(
        self, state: _FittedState, history: FloatArray, last_timestamp_s: float, horizon_s: float, action: str
    ) -> Forecast | None:
        """Update `state` with the points after its last one and emit; None when it cannot (a gap longer
        than the history, or the model rejects the points): then the caller refits."""
        new_points = round((last_timestamp_s - state.last_timestamp_s) / self.step_s)
        if not 0 <= new_points < len(history):
            return None
        new_values = history[len(history) - new_points :] if new_points > 0 else history[:0]
        if not self._update(state, new_values):
            return None
        self._score_due_forecasts(state, new_values, last_timestamp_s)
        state.last_timestamp_s = last_timestamp_s
        return self._emit(state, horizon_s, f"{action} with {new_points} point(s)")

    @property
    def refit_requested(self) -> bool:
        """A call found a refit due and left it to `run_requested_refit` (background refits only)."""
        return self._refit_request is not None

    def run_requested_refit(self) -> bool:
        """Run the requested refit (blocking: call it in a worker thread) and install it for the next
        call; False when there was nothing to do or a newer fit was installed meanwhile. Calls to
        `forecast` proceed on the current fit while this runs."""
        with self._refitting:
            with self._lock:
                request, self._refit_request = self._refit_request, None
                previous = self._state
            if request is None:
                return False
            fitted = self._refit(
                request.history, request.steps, request.now_s, request.last_timestamp_s, previous
            )
            with self._lock:
                if self._state is not previous:
                    return False
                # Points the current fit absorbed since the request are absorbed again by the next call;
                # a request made meanwhile was made of the fit this one replaces: the next call decides anew.
                self._state = fitted
                self._refit_request = None
                return True

    def _can_update(self, state: _FittedState, steps: int, now: float, history_points: int) -> bool:
        """Update rather than refit: same horizon, refit not yet due, and the history has not doubled
        since the fit (a fit on a young history, often a fallback to naive, is redone as data arrives)."""
        return (
            state.steps == steps
            and 0 <= now - state.fitted_at_s < self.refit_every_s
            and history_points < 2 * state.history_points
        )

    def _score_due_forecasts(
        self, state: _FittedState, new_values: FloatArray, last_timestamp_s: float
    ) -> None:
        """Move forecasts whose target arrived into the error window, so the upper quantile follows the
        errors the model makes now, not only those of its last backtest."""
        first_new_s = last_timestamp_s - (len(new_values) - 1) * self.step_s
        while state.pending and state.pending[0][0] <= last_timestamp_s + self.step_s / 2:
            target_s, predicted = state.pending.popleft()
            index = round((target_s - first_new_s) / self.step_s)
            if 0 <= index < len(new_values):
                state.errors.append(float(new_values[index]) - predicted)

    def _update(self, state: _FittedState, new_values: FloatArray) -> bool:
        """Absorb new points; False (so the caller refits) if the model rejects them."""
        if len(new_values) == 0:
            return True
        try:
            with counted_warnings(self.stats.warnings):
                state.fitted.update(new_values)
        except Exception as exc:  # statsmodels' errors, as in score_candidate: refit rather than fail
            state.why = f"update failed ({type(exc).__name__}), refitting"
            return False
        self.stats.updates += 1
        return bool(np.isfinite(state.fitted.forecast(state.steps)))

    def _refit(
        self,
        history: FloatArray,
        steps: int,
        now: float,
        last_timestamp_s: float,
        previous: _FittedState | None,
    ) -> _FittedState:
        # Re-selection (auto's pick, ARIMA's order) on its own, slower schedule; refits in between keep
        # the selection and warm-start from the previous parameters.
        reselect = (
            previous is None
            or previous.steps != steps
            or now - previous.picked_at_s >= self.repick_every_s
            or len(history) >= 2 * previous.picked_history_points
        )
        repick = self.model == "auto" and reselect
        if self.model != "auto":
            names = ["naive", self.model]
        elif repick or previous is None:
            names = list(AUTO_CANDIDATES)
        else:
            names = ["naive", previous.model]
        season = self.season_steps
        if season is None and any(n in ("holt-winters", "seasonal-naive") for n in names):
            season = detect_season(history)
        if season is None and "seasonal-naive" in names and self.model == "auto":
            names.remove("seasonal-naive")  # nothing to repeat; not worth a "failed" line per refit
        holdout = backtest_points(len(history), steps, self.backtest_max_points)
        candidates = []
        for name in dict.fromkeys(names):  # ordered, unique
            warm = (
                previous.fitted if previous is not None and not reselect and previous.model == name else None
            )
            context = FitContext(season, time.perf_counter() + self.fit_timeout_s, steps=steps, previous=warm)
            candidate = score_candidate(name, history, steps, holdout, context)
            # Naive is exempt: it is the fallback, and it cannot run long.
            over_time = candidate.record.fit_ms > self.fit_timeout_s * 1e3 and name != "naive"
            if candidate.fitted is not None and over_time:
                candidate.fitted, candidate.record.ok = None, False
                candidate.record.reason = "fit ran past its time limit"
            if candidate.record.reason == "fit ran past its time limit":
                self.stats.timeouts += 1
            self.stats.warnings.update(candidate.record.warnings)
            candidates.append(candidate)
        self.stats.refits += 1
        self.stats.reselections += int(reselect)
        self.stats.last_fits = [c.record for c in candidates]
        dropped = "; ".join(f"{c.name} dropped: {c.record.reason}" for c in candidates if c.fitted is None)
        if self.model == "auto":
            chosen, why = pick_best(candidates)
            if not repick and previous is not None and chosen.name != previous.model:
                self.stats.fallbacks += 1
        else:
            wanted = next(c for c in candidates if c.name == self.model)
            chosen = wanted if wanted.fitted is not None else candidates[0]
            why = "configured" if chosen is wanted else f"{self.model} unavailable, naive instead"
            if chosen is not wanted:
                self.stats.fallbacks += 1
        if dropped:
            why = f"{why}; {dropped}"
        if chosen.fitted is None:  # naive cannot fail on a history that passed the length check
            raise ForecastError(f"no model could be fitted: {dropped}")
        with counted_warnings(self.stats.warnings):
            interval_offset = chosen.fitted.interval_upper_offset(steps, self.quantile)
        return _FittedState(
            model=chosen.name,
            fitted=chosen.fitted,
            steps=steps,
            interval_offset=interval_offset,
            fallback_offset=spread_offset(history, steps, self.quantile),
            errors=deque(chosen.errors.tolist(), maxlen=max(self.backtest_max_points, 1)),
            pending=deque(),
            fitted_at_s=now,
            picked_at_s=now if reselect or previous is None else previous.picked_at_s,
            last_timestamp_s=last_timestamp_s,
            why=why,
            mase=chosen.mase,
            history_points=len(history),
            picked_history_points=(
                len(history) if reselect or previous is None else previous.picked_history_points
            ),
        )

    def _emit(self, state: _FittedState, horizon_s: float, action: str) -> Forecast:
        mean = state.fitted.forecast(state.steps)
        target_s = state.last_timestamp_s + state.steps * self.step_s
        if not state.pending or state.pending[-1][0] < target_s:
            state.pending.append((target_s, mean))
        bound = upper_offset(
            np.fromiter(state.errors, dtype=np.float64, count=len(state.errors)),
            state.interval_offset,
            self.quantile,
            state.fallback_offset,
        )
        upper = mean + bound.offset
        if self.nonnegative:
            mean = max(mean, 0.0)
        upper = max(upper, mean)
        prefix = f"auto picked {state.model}" if self.model == "auto" else state.model
        return Forecast(
            mean=mean,
            upper=upper,
            quantile=self.quantile,
            model=state.model,
            horizon_s=horizon_s,
            fitted_at_s=state.fitted_at_s,
            reason=f"{prefix}: {state.why}; upper from {bound.source}; {action}",
            detail=state.fitted.detail,
            backtest_mase=None if math.isnan(state.mase) else state.mase,
        )


async def forecast_async(
    forecaster: SeriesForecaster,
    timestamps_s: Sequence[float] | FloatArray,
    values: Sequence[float] | FloatArray,
    horizon_s: float,
    now_s: float | None = None,
    executor: Executor | None = None,
    timeout_s: float | None = None,
) -> Forecast:
    """Run `forecaster.forecast` off the event loop, within `timeout_s` (default `max_call_s`).

    On timeout raises `ForecastTimeoutError`; the thread finishes on its own shortly after, since each
    fit stops itself at its deadline. The inputs are copied first so the caller may reuse its buffers.
    """
    loop = asyncio.get_running_loop()
    limit_s = forecaster.max_call_s if timeout_s is None else timeout_s
    call = functools.partial(
        forecaster.forecast,
        np.array(timestamps_s, dtype=np.float64),
        np.array(values, dtype=np.float64),
        horizon_s,
        now_s,
    )
    try:
        return await asyncio.wait_for(loop.run_in_executor(executor, call), limit_s)
    except TimeoutError:
        raise ForecastTimeoutError(f"forecast did not finish within {limit_s:g} s") from None
