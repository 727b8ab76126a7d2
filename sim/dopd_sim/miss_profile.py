"""Where a run's SLO misses fall: by output length, and how many finished only after the last arrival.

The attainment target counts a request a pool left waiting until the load stopped as one miss, however
long it waited. `miss_profile` shows which requests a policy spent its misses on (`bench/miss_profile.py`
runs it on a benchmark scenario, also with the load going on past the scored span: on the reasoning
trace the oracle's 1% is long outputs passed over while timely ones arrive, served once the arrivals
stop). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dopd_forecaster.traces import Trace
from dopd_sim.config import SimConfig
from dopd_sim.metrics import slo_met

# Output-length bands (tokens, upper bounds inclusive); the last is open.
BANDS_TOKENS = (500, 2000, 8000)


@dataclass(frozen=True)
class Band:
    label: str
    requests: int
    misses: int


@dataclass(frozen=True)
class MissProfile:
    requests: int
    misses: int
    bands: tuple[Band, ...]
    misses_finished_after_last_arrival: int
    latest_finish_after_last_arrival_s: float  # 0 when every request finished before the last arrival


def miss_profile(
    trace: Trace,
    ttft_s: npt.NDArray[np.float64],
    tpot_s: npt.NDArray[np.float64],
    config: SimConfig,
    score_from_s: float = 0.0,
    score_until_s: float | None = None,
) -> MissProfile:
    """The misses among the requests arriving in [`score_from_s`, `score_until_s`) (None: to the end), by
    output-length band, and those finishing after the trace's last arrival (a request's finish: arrival
    + TTFT + TPOT per later token). A request never served (NaN) is a miss that never finished."""
    slo = config.spec.slo
    arrival = np.asarray(trace.arrival_s, dtype=np.float64)
    outputs = np.asarray(trace.output_tokens, dtype=np.int64)
    scored = arrival >= score_from_s
    if score_until_s is not None:
        scored &= arrival < score_until_s
    missed = ~slo_met(ttft_s, tpot_s, slo.ttft_seconds, slo.tpot_seconds) & scored
    later_tokens = np.maximum(outputs - 1, 0)
    with np.errstate(invalid="ignore"):
        finish = arrival + ttft_s + np.where(later_tokens > 0, tpot_s * later_tokens, 0.0)
    last_arrival = float(np.max(arrival)) if len(arrival) else 0.0
    served = np.isfinite(finish)
    after = missed & served & (finish > last_arrival)
    latest = float(np.max(finish[served]) - last_arrival) if served.any() else 0.0
    bands: list[Band] = []
    for low, high in zip((0, *BANDS_TOKENS), (*BANDS_TOKENS, None), strict=True):
        in_band = scored & (outputs > low)
        if high is not None:
            in_band &= outputs <= high
        label = f"{low + 1}-{high}" if high is not None else f">{low}"
        bands.append(Band(label, int(in_band.sum()), int((missed & in_band).sum())))
    return MissProfile(
        requests=int(scored.sum()),
        misses=int(missed.sum()),
        bands=tuple(bands),
        misses_finished_after_last_arrival=int(after.sum()),
        latest_finish_after_last_arrival_s=max(latest, 0.0),
    )
