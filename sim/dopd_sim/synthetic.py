"""Synthetic request traces, returned as the shared `Trace` type so every consumer treats them like a
real trace. Arrival shapes: Poisson, Gamma-bursty renewal, diurnal (sinusoidal rate, any period), step
changes, bursts (a Poisson base with episodes at a multiple of its rate, at random times) and a slow
linear trend. Length mixes (`LENGTH_MIXES`): `azure` (the Azure 2023 conversation trace's 1155/1020
prompt and 211/129 output tokens, mean/median), `long-mix` (85% of those and 15% long-document prompts,
12k/10k tokens up to 32k), `code` (code completion: 2k/1.5k-token prompts of context, 30/20-token
completions) and `reasoning` (a reasoning model's answers, decode-heavy: 800/500-token prompts, 2400/1600
output tokens up to 16k, so a decode replica's KV cache, not its batch limit, caps its sequences).
A `MixShift` moves a trace's requests from one mix to another over a span of time (a tenant's traffic
moving onto the model at a flat rate: the P/D ratio the load needs changes while its rate does not).

Lengths are drawn from log-normals fitted to a mean and a median, clipped to [1, max] (the capacity
model fits a gamma, so the benchmark's generated traces are not drawn from the model's own family).
Everything is drawn from one seeded numpy Generator, so a (spec, seed) pair is one trace. Each trace
also carries the law it was drawn from (`Trace.law`: the rate over 1 s bins, the gaps' scv), the load
the oracle sizes for rather than that one draw's busiest minute. Callers: `trace_spec` (a spec string
to a trace), demo, bench, tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dopd_forecaster.traces import ArrivalLaw, Trace

FloatArray = npt.NDArray[np.float64]


def lognormal(rng: np.random.Generator, mean: float, median: float, size: int) -> FloatArray:
    """`size` draws of the log-normal with this mean and median (its sigma from their ratio)."""
    sigma = math.sqrt(2 * math.log(max(mean / median, 1.0)))
    return np.asarray(rng.lognormal(math.log(median), sigma, size), dtype=np.float64)


@dataclass(frozen=True)
class LengthModel:
    """Log-normal prompt and output lengths, given as mean and median tokens; optionally a share of the
    prompts drawn from a second, long-document log-normal."""

    input_mean: float = 1155.0
    input_median: float = 1020.0
    output_mean: float = 211.0
    output_median: float = 129.0
    input_max: int = 16384
    output_max: int = 2048
    long_share: float = 0.0
    long_input_mean: float = 12000.0
    long_input_median: float = 10000.0
    long_input_max: int = 32768

    def sample(self, rng: np.random.Generator, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        def draw(mean: float, median: float, top: int) -> npt.NDArray[np.int64]:
            return np.clip(np.rint(lognormal(rng, mean, median, n)), 1, top).astype(np.int64)

        inputs = draw(self.input_mean, self.input_median, self.input_max)
        outputs = draw(self.output_mean, self.output_median, self.output_max)
        if self.long_share > 0:
            long = rng.random(n) < self.long_share
            inputs = np.where(
                long, draw(self.long_input_mean, self.long_input_median, self.long_input_max), inputs
            )
        return inputs, outputs


LENGTH_MIXES: dict[str, LengthModel] = {
    "azure": LengthModel(),
    "long-mix": LengthModel(long_share=0.15),
    "code": LengthModel(
        input_mean=2000.0,
        input_median=1500.0,
        input_max=8192,
        output_mean=30.0,
        output_median=20.0,
        output_max=256,
    ),
    "reasoning": LengthModel(
        input_mean=800.0,
        input_median=500.0,
        input_max=8192,
        output_mean=2400.0,
        output_median=1600.0,
        output_max=16384,
    ),
}


@dataclass(frozen=True)
class MixShift:
    """Requests drawn from `before` until `start_s`, from `after` from `end_s` on, and in between from
    `after` with a probability rising linearly from 0 to 1 (times in the trace's own seconds)."""

    before: LengthModel
    after: LengthModel
    start_s: float
    end_s: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_s <= self.end_s:
            raise ValueError(
                f"a mix shift needs 0 <= shift_start_s <= shift_end_s, got {self.start_s} and {self.end_s}"
            )

    def after_share(self, arrival_s: FloatArray) -> FloatArray:
        """The probability that a request arriving at each of `arrival_s` is drawn from `after`."""
        if self.end_s == self.start_s:
            return np.where(arrival_s >= self.start_s, 1.0, 0.0)
        share: FloatArray = np.clip((arrival_s - self.start_s) / (self.end_s - self.start_s), 0.0, 1.0)
        return share


Lengths = LengthModel | MixShift


def sample_lengths(
    lengths: Lengths, rng: np.random.Generator, arrival_s: FloatArray
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Prompt and output tokens for requests arriving at `arrival_s`."""
    n = len(arrival_s)
    if isinstance(lengths, LengthModel):
        return lengths.sample(rng, n)
    early_inputs, early_outputs = lengths.before.sample(rng, n)
    late_inputs, late_outputs = lengths.after.sample(rng, n)
    late = rng.random(n) < lengths.after_share(arrival_s)
    return np.where(late, late_inputs, early_inputs), np.where(late, late_outputs, early_outputs)


RateFn = Callable[[FloatArray], FloatArray]
# The generators' laws (`Trace.law`): the rate averaged over 1 s bins, from 8 points in each.
LAW_BIN_SECONDS = 1.0
_LAW_POINTS_PER_BIN = 8


def arrival_law(rate_fn: RateFn, duration_s: float, gap_scv: float = 1.0) -> ArrivalLaw:
    """The law of arrivals at rate `rate_fn(t)` over [0, duration_s), gaps of `gap_scv` at a steady
    rate."""
    bins = max(1, math.ceil(duration_s / LAW_BIN_SECONDS - 1e-9))
    points: FloatArray = (np.arange(bins * _LAW_POINTS_PER_BIN, dtype=np.float64) + 0.5) * (
        LAW_BIN_SECONDS / _LAW_POINTS_PER_BIN
    )
    rates: FloatArray = np.where(points < duration_s, rate_fn(points), 0.0)
    means = np.asarray(rates.reshape(bins, _LAW_POINTS_PER_BIN).mean(axis=1), dtype=np.float64)
    return ArrivalLaw(means, LAW_BIN_SECONDS, 0.0, gap_scv)


def _trace(
    arrivals: FloatArray, rng: np.random.Generator, lengths: Lengths, name: str, law: ArrivalLaw
) -> Trace:
    """The trace of these arrivals, re-based to a first arrival at 0.0 (its law moved with it)."""
    arrivals = np.sort(arrivals)
    first = float(arrivals[0]) if len(arrivals) else 0.0
    inputs, outputs = sample_lengths(lengths, rng, arrivals)
    return Trace(
        (arrivals - first).astype(np.float64),
        inputs,
        outputs,
        f"synthetic:{name}",
        "synthetic",
        law=law.shifted(-first),
    )


def _constant(rate_rps: float) -> RateFn:
    def rate(t: FloatArray) -> FloatArray:
        return np.full(len(t), rate_rps)

    return rate


def poisson(rate_rps: float, duration_s: float, seed: int = 0, lengths: Lengths | None = None) -> Trace:
    """Homogeneous Poisson arrivals."""
    return gamma_bursty(rate_rps, duration_s, cv=1.0, seed=seed, lengths=lengths, name="poisson")


def gamma_bursty(
    rate_rps: float,
    duration_s: float,
    cv: float = 3.0,
    seed: int = 0,
    lengths: Lengths | None = None,
    name: str = "gamma",
) -> Trace:
    """Renewal arrivals with Gamma inter-arrival times of coefficient of variation `cv` (1 = Poisson)."""
    rng = np.random.default_rng(seed)
    shape = 1.0 / (cv * cv)
    expected = int(rate_rps * duration_s * 1.2) + 16
    gaps = rng.gamma(shape, 1.0 / (rate_rps * shape), expected)
    arrivals = np.cumsum(gaps)
    while arrivals[-1] < duration_s:
        more = np.cumsum(rng.gamma(shape, 1.0 / (rate_rps * shape), expected)) + arrivals[-1]
        arrivals = np.concatenate([arrivals, more])
    law = arrival_law(_constant(rate_rps), duration_s, gap_scv=cv * cv)
    return _trace(arrivals[arrivals < duration_s], rng, lengths or LengthModel(), name, law)


def _inhomogeneous(
    rate_fn: RateFn,
    peak_rps: float,
    duration_s: float,
    rng: np.random.Generator,
    lengths: Lengths,
    name: str,
) -> Trace:
    """A Poisson process with rate `rate_fn(t) <= peak_rps`, drawn by thinning, with its law."""
    n = rng.poisson(peak_rps * duration_s)
    candidates = np.sort(rng.uniform(0.0, duration_s, n))
    accept = rng.random(n) * peak_rps < rate_fn(candidates)
    return _trace(candidates[accept], rng, lengths, name, arrival_law(rate_fn, duration_s))


def diurnal(
    mean_rps: float,
    duration_s: float,
    period_s: float = 3600.0,
    peak_to_trough: float = 4.0,
    seed: int = 0,
    lengths: Lengths | None = None,
) -> Trace:
    """Sinusoidal rate with the given period, mean and peak/trough ratio; starts at the trough."""
    amplitude = (peak_to_trough - 1) / (peak_to_trough + 1)
    rng = np.random.default_rng(seed)

    def rate(t: FloatArray) -> FloatArray:
        return mean_rps * (1 - amplitude * np.cos(2 * np.pi * t / period_s))

    return _inhomogeneous(
        rate, mean_rps * (1 + amplitude), duration_s, rng, lengths or LengthModel(), "diurnal"
    )


def bursts(
    base_rps: float,
    duration_s: float,
    factor: float = 3.0,
    burst_s: float = 120.0,
    per_hour: float = 6.0,
    seed: int = 0,
    lengths: Lengths | None = None,
) -> Trace:
    """Poisson arrivals at `base_rps`, with burst episodes (at `factor` times the base rate, `burst_s`
    long) starting as a Poisson process of `per_hour` a hour: a flash crowd, a batch job, a retry storm."""
    rng = np.random.default_rng(seed)
    starts = np.cumsum(rng.exponential(3600.0 / per_hour, int(per_hour * duration_s / 3600.0 * 3) + 4))
    starts = starts[starts < duration_s]

    def rate(t: FloatArray) -> FloatArray:
        inside = np.zeros(len(t), dtype=bool)
        for start in starts:
            inside |= (t >= start) & (t < start + burst_s)
        out: FloatArray = np.where(inside, base_rps * factor, base_rps)
        return out

    return _inhomogeneous(rate, base_rps * factor, duration_s, rng, lengths or LengthModel(), "bursts")


def trend(
    start_rps: float, end_rps: float, duration_s: float, seed: int = 0, lengths: Lengths | None = None
) -> Trace:
    """Poisson arrivals whose rate moves linearly from `start_rps` to `end_rps` (a slow trend)."""
    rng = np.random.default_rng(seed)

    def rate(t: FloatArray) -> FloatArray:
        out: FloatArray = start_rps + (end_rps - start_rps) * t / duration_s
        return out

    peak = max(start_rps, end_rps)
    return _inhomogeneous(rate, peak, duration_s, rng, lengths or LengthModel(), "trend")


def steps(
    rates_rps: list[float], step_seconds: float, seed: int = 0, lengths: Lengths | None = None
) -> Trace:
    """Poisson arrivals whose rate jumps to each of `rates_rps` in turn, `step_seconds` each."""
    rng = np.random.default_rng(seed)
    pieces = []
    for index, level in enumerate(rates_rps):
        n = rng.poisson(level * step_seconds)
        pieces.append(np.sort(rng.uniform(0.0, step_seconds, n)) + index * step_seconds)
    arrivals = np.concatenate(pieces) if pieces else np.zeros(0)
    levels = np.asarray(rates_rps, dtype=np.float64)

    def rate(t: FloatArray) -> FloatArray:
        if not len(levels):
            return np.zeros(len(t))
        out: FloatArray = levels[np.minimum((t // step_seconds).astype(np.int64), len(levels) - 1)]
        return out

    law = arrival_law(rate, step_seconds * len(levels))
    return _trace(arrivals, rng, lengths or LengthModel(), "step", law)
