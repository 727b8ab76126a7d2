"""Prompt and output length distributions for the capacity model (`capacity.py`, its only caller).

A gamma distribution fitted to the observed mean and P90, or, where the lengths themselves are known
(the simulator's oracle), their quantiles. Either way the distribution is held as a 200-point quantile
grid up to the 99.75th percentile, rescaled so its mean is the observed mean, over which the capacity
model takes moments (prefill time is convex in length, so never at the mean) and conditional grids
(`below`: the lengths that can still meet the TTFT SLO). Pure: numpy and scipy only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy.special import gammainc, gammaincinv

FloatArray = npt.NDArray[np.float64]

GRID_POINTS = 200
GRID_P: FloatArray = (np.arange(GRID_POINTS, dtype=np.float64) + 0.5) / GRID_POINTS

# Gamma shapes below this put most mass near zero and the P90/mean ratio falls again; observed ratios
# above the largest a gamma has (3.03, at this shape) are clamped to it.
_MIN_SHAPE = 0.2


@dataclass(frozen=True)
class LengthDistribution:
    """A gamma length distribution fitted to a mean and a P90 (tokens).

    Gamma, not log-normal: prompt and output lengths of LLM traffic have a heavy body and a thin tail
    (bounded by the context window). Fitted to the same two numbers, a log-normal puts E[L^2] at 4.0x
    the squared mean for the Azure 2023 conversation prompts (measured: 1.9x) and at 4.0x for Mooncake's
    (2.4x); a gamma puts them at 2.2x and 2.4x. E[L^2] is what the quadratic prefill cost is paid on.

    Two numbers cannot pin down every mix (a bimodal one, say); where the lengths themselves are known
    (the simulator's oracle, told the load exactly), `from_lengths` takes their quantiles instead.
    """

    mean_tokens: float
    shape: float  # gamma shape k; math.inf for a point mass
    empirical: tuple[float, ...] | None = None  # the grid's quantiles, when built from known lengths

    @classmethod
    def from_lengths(cls, lengths: Sequence[float]) -> LengthDistribution:
        """The distribution of known lengths (their quantiles at the grid's points)."""
        values = np.asarray(lengths, dtype=np.float64)
        if len(values) == 0 or float(np.mean(values)) <= 0:
            return cls(mean_tokens=0.0, shape=math.inf)
        grid = np.quantile(values, GRID_P)
        grid = grid * (float(np.mean(values)) / float(np.mean(grid)))
        return cls(
            mean_tokens=float(np.mean(values)), shape=math.inf, empirical=tuple(float(x) for x in grid)
        )

    @classmethod
    def from_mean_p90(cls, mean_tokens: float, p90_tokens: float | None) -> LengthDistribution:
        """The gamma fitted to a mean and a P90 (a point mass without a P90 above the mean). Memoized: a
        decision builds a capacity model per rate and hit rate it tries, all with the same lengths, and
        the fit and its quantile grid were most of a decision's time."""
        return _fitted(mean_tokens, p90_tokens)

    @classmethod
    def _fit(cls, mean_tokens: float, p90_tokens: float | None) -> LengthDistribution:
        if mean_tokens <= 0:
            return cls(mean_tokens=0.0, shape=math.inf)
        ratio = 1.0 if p90_tokens is None else min(max(p90_tokens / mean_tokens, 1.0), MAX_P90_OVER_MEAN)
        if ratio <= 1.0 + 1e-9:
            return cls(mean_tokens=mean_tokens, shape=math.inf)
        # P90/mean of a gamma falls as the shape grows (from its maximum at _MIN_SHAPE): bisect in log k.
        low, high = math.log(_MIN_SHAPE), math.log(1e6)
        for _ in range(60):
            mid = (low + high) / 2
            if mid in (low, high):  # converged to the last bit: the steps left change nothing
                break
            if _gamma_p90_over_mean(math.exp(mid)) > ratio:
                low = mid
            else:
                high = mid
        return cls(mean_tokens=mean_tokens, shape=math.exp((low + high) / 2))

    def _quantiles(self, p: FloatArray) -> FloatArray:
        """Quantiles of the fitted gamma (before the grid's rescaling), or of the known lengths."""
        if self.empirical is not None:
            out: FloatArray = np.interp(p, GRID_P, np.asarray(self.empirical))
            return out
        if math.isinf(self.shape):
            return np.full(np.shape(p), self.mean_tokens)
        gamma: FloatArray = gammaincinv(self.shape, p) * (self.mean_tokens / self.shape)
        return gamma

    def _cdf(self, tokens: float) -> float:
        if self.empirical is not None:
            return float(np.interp(tokens, np.asarray(self.empirical), GRID_P, left=0.0, right=1.0))
        if math.isinf(self.shape):
            return 1.0 if tokens >= self.mean_tokens else 0.0
        return float(gammainc(self.shape, tokens * self.shape / self.mean_tokens))

    def moment(self, k: int) -> float:
        """E[L^k] over the distribution truncated at its 99.75th percentile.

        Real prompts are bounded by the context window; an untruncated fourth moment (which the
        prefill-time variance needs, since T_p is quadratic in L) is dominated by prompts that cannot
        exist. The quantile grid is rescaled so the mean stays exactly the observed mean.
        """
        return float(np.mean(self.grid**k)) if self.mean_tokens > 0 else 0.0

    @cached_property
    def _unscaled_grid(self) -> FloatArray:
        """The grid's quantiles before rescaling: computed once, read by `_scale` and `grid`."""
        return self._quantiles(GRID_P)

    @cached_property
    def _scale(self) -> float:
        return float(self.mean_tokens / np.mean(self._unscaled_grid))

    @cached_property
    def grid(self) -> FloatArray:
        """Equally likely lengths at the grid's quantiles (the 0.25th to 99.75th percentile), scaled so
        their mean is the observed mean."""
        if self.mean_tokens <= 0:
            return np.zeros(GRID_POINTS)
        out: FloatArray = self._scale * self._unscaled_grid
        out.setflags(write=False)  # shared by every model of the same lengths (`from_mean_p90`)
        return out

    def below(self, limit_tokens: float) -> tuple[FloatArray, float]:
        """Equally likely lengths of the (scaled) distribution conditional on `L <= limit_tokens`, and
        the probability of that condition.

        The grid moves continuously with the limit and the distribution: when lengths grow (the gamma's
        scale), the lengths below a fixed limit grow too, so sizing for them is monotone in the lengths,
        with no jump when one grid point crosses the limit.
        """
        if self.mean_tokens <= 0:
            return np.zeros(GRID_POINTS), 1.0
        if limit_tokens <= 0:
            return np.zeros(GRID_POINTS), 0.0
        share = min(self._cdf(limit_tokens / self._scale), 1.0)
        if share <= 0.0:
            return np.full(GRID_POINTS, limit_tokens), 0.0
        out: FloatArray = self._scale * self._quantiles(share * GRID_P)
        return np.minimum(out, limit_tokens), share

    def quantile(self, q: float) -> float:
        if self.mean_tokens <= 0:
            return 0.0
        return float(self._quantiles(np.array([q]))[0])


@functools.lru_cache(maxsize=256)
def _fitted(mean_tokens: float, p90_tokens: float | None) -> LengthDistribution:
    return LengthDistribution._fit(mean_tokens, p90_tokens)


def _gamma_p90_over_mean(shape: float) -> float:
    return float(gammaincinv(shape, 0.9) / shape)


# The widest spread a fit takes: P90 over mean at the least gamma shape (3.03).
MAX_P90_OVER_MEAN = _gamma_p90_over_mean(_MIN_SHAPE)


@functools.lru_cache(maxsize=64)
def length_bias(p90_over_mean: float) -> float:
    """E[L^2] / E[L]^2 of the lengths fitted to a mean and this P90 over it: how much longer than the
    mean the average length a resident weighted by its length is (1 for a point mass). Memoized apart
    from the fits (`from_mean_p90`): a search over spreads (`planner_lengths.seated_output_lengths`)
    tries some thirty, which had evicted a tick's own fits from theirs."""
    fitted = LengthDistribution._fit(1.0, p90_over_mean)
    return fitted.moment(2) / fitted.moment(1) ** 2
