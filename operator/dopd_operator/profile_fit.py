"""Fit DistServe-form latency coefficients to measured samples (non-negative least squares).

Used by the preset derivations (`profile_presets.py`), by `dopd profile` on the real worker, and by the
simulator's calibration. Coefficients are constrained to be >= 0 so a noisy fit never predicts that a
longer prompt is faster. Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from dopd_operator.api import DecodeCoefficients, PrefillCoefficients


@dataclass(frozen=True)
class FitQuality:
    """How well a fit reproduces its samples."""

    samples: int
    mean_abs_pct_error: float
    max_abs_pct_error: float


def _quality(design: np.ndarray, coef: np.ndarray, seconds: np.ndarray) -> FitQuality:
    predicted = design @ coef
    pct = np.abs(predicted - seconds) / np.maximum(seconds, 1e-12)
    return FitQuality(
        samples=len(seconds), mean_abs_pct_error=float(pct.mean()), max_abs_pct_error=float(pct.max())
    )


def _check(name: str, *columns: Sequence[float]) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=float) for c in columns]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"{name}: sample columns differ in length")
    if n < 3:
        raise ValueError(f"{name}: need at least 3 samples to fit 3 coefficients, got {n}")
    if any(not np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(f"{name}: samples contain NaN or infinity")
    if any(np.any(a < 0) for a in arrays):
        raise ValueError(f"{name}: samples must not be negative")
    if np.any(arrays[-1] <= 0):
        raise ValueError(f"{name}: every timing must be > 0 seconds")
    return arrays


def _check_rank(name: str, design: np.ndarray) -> None:
    """Three coefficients need three independent columns: a sweep over one length cannot fit them."""
    if np.linalg.matrix_rank(design / np.maximum(np.abs(design).max(axis=0), 1e-300)) < design.shape[1]:
        raise ValueError(
            f"{name}: samples do not vary enough to fit 3 coefficients; measure several lengths/batch sizes"
        )


def fit_prefill(
    batch_prompt_tokens: Sequence[Sequence[float]], seconds: Sequence[float]
) -> tuple[PrefillCoefficients, FitQuality]:
    """Fit `T = a + b*sum(l) + c*sum(l^2)` to prefill batches (each a list of prompt lengths) and times."""
    (secs,) = _check("fit_prefill", seconds)
    if len(batch_prompt_tokens) != len(secs):
        raise ValueError("fit_prefill: one list of prompt lengths per timing is needed")
    try:
        batches = [np.asarray(b, dtype=float).reshape(-1) for b in batch_prompt_tokens]
    except (TypeError, ValueError):
        raise ValueError("fit_prefill: each sample must be a list of prompt lengths (tokens)") from None
    if any(len(b) == 0 or not np.all(np.isfinite(b)) or np.any(b < 0) for b in batches):
        raise ValueError("fit_prefill: prompt lengths must be finite, >= 0 and at least one per batch")
    sums = np.array([float(b.sum()) for b in batches])
    squares = np.array([float((b * b).sum()) for b in batches])
    design = np.column_stack([np.ones_like(sums), sums, squares])
    _check_rank("fit_prefill", design)
    coef = _nnls_scaled(design, secs)
    return (
        PrefillCoefficients(a_seconds=coef[0], b_seconds_per_token=coef[1], c_seconds_per_token2=coef[2]),
        _quality(design, coef, secs),
    )


def fit_decode(
    batch_sizes: Sequence[float], total_context_tokens: Sequence[float], seconds: Sequence[float]
) -> tuple[DecodeCoefficients, FitQuality]:
    """Fit `T = a + b*sum(ctx) + c*B` to decode steps (batch size, summed context tokens, seconds)."""
    batch, ctx, secs = _check("fit_decode", batch_sizes, total_context_tokens, seconds)
    design = np.column_stack([np.ones_like(batch), ctx, batch])
    _check_rank("fit_decode", design)
    coef = _nnls_scaled(design, secs)
    return (
        DecodeCoefficients(
            a_seconds=coef[0], b_seconds_per_context_token=coef[1], c_seconds_per_sequence=coef[2]
        ),
        _quality(design, coef, secs),
    )


def _nnls_scaled(design: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """NNLS on relative error (rows weighted by 1/seconds) with column scaling for conditioning.

    Relative weighting matters: latency spans three orders of magnitude across prompt lengths, and an
    absolute fit would ignore the short prompts that dominate real traffic.
    """
    weights = 1.0 / np.maximum(seconds, 1e-12)
    weighted = design * weights[:, None]
    scale = np.maximum(np.abs(weighted).max(axis=0), 1e-300)
    coef_scaled, _ = nnls(weighted / scale, seconds * weights)
    return np.asarray(coef_scaled / scale, dtype=float)
