"""DistServe Figure 1 anchor: one A100's prefill-only and decode-only goodput for OPT-13B."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from profile_derivation.derivation import Derivation


def _md1_p90_wait(rate: float, service: float, n: int = 200_000, seed: int = 0) -> float:
    """P90 TTFT of a FCFS single-server queue with Poisson arrivals and fixed service (Lindley recursion)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, n)
    wait = 0.0
    ttft = np.empty(n)
    for i in range(n):
        ttft[i] = wait + service
        wait = max(0.0, wait + service - gaps[(i + 1) % n])
    return float(np.quantile(ttft[n // 10 :], 0.9))


@dataclass(frozen=True)
class Figure1Anchor:
    """Prefill-only and decode-only rates of one GPU in DistServe's Figure 1 setting."""

    prefill_seconds: float
    prefill_capacity_rps: float
    prefill_goodput_rps: float
    decode_batch: int
    decode_capacity_rps: float
    decode_goodput_rps: float


def figure1_anchor(d: Derivation) -> Figure1Anchor:
    """Prefill-only and decode-only goodput of one A100 for OPT-13B, input 512 / output 64 (DistServe
    Fig. 1)."""
    prompt, output = 512, 64
    ttft_slo, tpot_slo = 0.4, 0.04
    t_p = d.prefill.batch_seconds([prompt])
    capacity = 1.0 / t_p
    # largest Poisson rate whose P90 TTFT (M/D/1, one prompt per prefill batch) meets the SLO
    lo, hi = 0.0, capacity * 0.999
    for _ in range(30):
        mid = (lo + hi) / 2
        if _md1_p90_wait(mid, t_p, n=40_000) <= ttft_slo:
            lo = mid
        else:
            hi = mid
    prefill_goodput = lo
    # decode: mean context over a request's decode is prompt + output/2
    ctx = prompt + output / 2
    per_seq = d.decode.b_seconds_per_context_token * ctx + d.decode.c_seconds_per_sequence
    b_max = int((tpot_slo - d.decode.a_seconds) // per_seq)
    step_at_bmax = d.decode.step_seconds(b_max, b_max * ctx)
    decode_saturated = b_max / (output * step_at_bmax)
    # with Poisson arrivals the in-flight count is ~Poisson(m); keep its P90 (normal approximation,
    # m + 1.2816 sqrt(m)) at b_max: solve for sqrt(m)
    z = 1.2816
    mean_inflight = ((-z + math.sqrt(z * z + 4 * b_max)) / 2) ** 2
    step_mean = d.decode.step_seconds(mean_inflight, mean_inflight * ctx)
    decode_poisson = mean_inflight / (output * step_mean)
    return Figure1Anchor(t_p, capacity, prefill_goodput, b_max, decode_saturated, decode_poisson)


def figure1_table(f: Figure1Anchor) -> str:
    return "\n".join(
        [
            "| quantity | this preset | DistServe paper (Fig. 1) |",
            "|---|---:|---:|",
            f"| prefill time of one 512-token prompt | {f.prefill_seconds * 1e3:.1f} ms | - |",
            f"| prefill-only capacity, 1 / T_p(512) | {f.prefill_capacity_rps:.1f} rps | - |",
            f"| prefill-only goodput: Poisson arrivals, P90 TTFT <= 0.4 s | {f.prefill_goodput_rps:.1f} "
            "rps | 5.6 rps |",
            f"| largest decode batch with step time <= 0.04 s (context/seq 544) | {f.decode_batch} | - |",
            f"| decode-only capacity at that batch, B / (64 x step) | {f.decode_capacity_rps:.1f} rps | - |",
            f"| decode-only goodput: Poisson arrivals, P90 in-flight batch <= {f.decode_batch} "
            f"| {f.decode_goodput_rps:.1f} rps | 10 rps |",
            f"| decode-only / prefill-only goodput | {f.decode_goodput_rps / f.prefill_goodput_rps:.2f} | "
            f"{10 / 5.6:.2f} |",
        ]
    )
