"""Per-request latencies and the numbers a run is judged by.

Definitions (docs/simulator.md repeats them for readers of the benchmark):
- TTFT = first token - arrival. The first token goes out when the prompt's KV reaches the decode side
  (the end of its prefill batch plus the KV transfer), as dopd's decode worker emits it; a one-token
  output ends at its prefill batch.
- TPOT = (last token - first token) / (output tokens - 1); it includes any wait for a decode replica
  with room, because a user sees that as the gap after the first token. 0 for one-token outputs.
- A request attains the SLO when TTFT <= ttft_seconds and TPOT <= tpot_seconds. Rejected requests (a
  prompt that cannot fit a decode replica's KV) and requests left unfinished count as missing it.
- slo_attainment = attaining requests / all requests; goodput_rps = attaining requests / trace seconds.
- Percentiles are nearest-rank over completed requests.

Callers: `cluster.Simulator` (recording), `run.simulate` (summary), `observe` (windowed views),
`policies.dynamo_sla` (interval averages).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from dopd_forecaster.traces import Trace

FloatArray = npt.NDArray[np.float64]


class RequestLog:
    """What happened to each request, plus time-ordered event lists for windowed metrics."""

    def __init__(self, requests: int) -> None:
        self.first_token_s: list[float] = [math.nan] * requests
        self.finish_s: list[float] = [math.nan] * requests
        self.ttft_s: list[float] = [math.nan] * requests
        self.tpot_s: list[float] = [math.nan] * requests
        self.rejected: list[bool] = [False] * requests
        self.finished = 0  # completed + rejected
        self.completed = 0
        # Time-ordered (events are processed in time order), for windowed percentiles.
        self.first_token_times: list[float] = []
        self.first_token_ttft: list[float] = []
        self.first_token_index: list[int] = []  # request of each first token (its prompt length)
        self.finish_times: list[float] = []
        self.finish_tpot: list[float] = []
        self.finish_output_index: list[int] = []
        # The inter-token gaps as the decode worker observes them, each when it leaves: a sequence's wait
        # for a decode slot when it joins a batch (`join`, folded into its first step's gap), and the
        # batch's steps as they run (`decode_steps`, one entry per stretch of steps with one batch).
        self.join_s: list[float] = [math.nan] * requests
        self.join_times: list[float] = []  # when each sequence joined its batch
        self.join_waits: list[float] = []  # seconds each waited for its slot after its first token
        self.steps_start_s: list[float] = []  # when each stretch of decode steps began
        self.steps_end_s: list[float] = []  # when it ended (time-ordered)
        self.steps_batch: list[int] = []  # sequences in its batch: each step yields that many gaps
        self.steps_count: list[int] = []  # decode steps in it
        self.shed_times: list[float] = []  # when each request the router turned away was turned away

    def grow(self, count: int) -> None:
        """Room for `count` more requests (the emulator extends its load as it loops a trace)."""
        for column in (self.first_token_s, self.finish_s, self.ttft_s, self.tpot_s, self.join_s):
            column.extend([math.nan] * count)
        self.rejected.extend([False] * count)

    def first_token(self, request: int, now_s: float, arrival_s: float) -> None:
        self.first_token_s[request] = now_s
        ttft = now_s - arrival_s
        self.ttft_s[request] = ttft
        self.first_token_times.append(now_s)
        self.first_token_ttft.append(ttft)
        self.first_token_index.append(request)

    def join(self, request: int, now_s: float) -> None:
        """A sequence joins a decode batch (only outputs of two or more tokens reach one). Its first
        inter-token gap is its wait for the slot (the prefill's token left when its KV arrived) plus its
        first step: the wait is logged now, as the worker observes the gap when the next token leaves,
        not a sequence's life later at its finish (for a 3000-token output, two minutes)."""
        self.join_s[request] = now_s
        self.join_times.append(now_s)
        self.join_waits.append(now_s - self.first_token_s[request])

    def decode_steps(self, start_s: float, end_s: float, batch: int, steps: int) -> None:
        """A decode replica ran `steps` steps with `batch` sequences from `start_s` to `end_s`: `batch`
        gaps a step, as the worker observes them (per step, weight B), not at each sequence's finish."""
        self.steps_start_s.append(start_s)
        self.steps_end_s.append(end_s)
        self.steps_batch.append(batch)
        self.steps_count.append(steps)

    def finish(self, request: int, now_s: float, tpot_s: float) -> None:
        """A request completes with `tpot_s`, its mean gap from first token to last (waits included)."""
        self.finish_s[request] = now_s
        self.tpot_s[request] = tpot_s
        self.finished += 1
        self.completed += 1
        self.finish_times.append(now_s)
        self.finish_tpot.append(tpot_s)
        self.finish_output_index.append(request)

    def reject(self, request: int, now_s: float) -> None:
        self.rejected[request] = True
        self.finished += 1
        self.shed_times.append(now_s)


def percentile(values: FloatArray, q: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least q% of values at or below it)."""
    if len(values) == 0:
        return None
    ordered = np.sort(values)
    rank = max(math.ceil(q / 100.0 * len(ordered)), 1)
    return float(ordered[rank - 1])


def slo_met(
    ttft_s: FloatArray, tpot_s: FloatArray, ttft_slo_s: float, tpot_slo_s: float
) -> npt.NDArray[np.bool_]:
    """Per request: both objectives met (NaN, i.e. never served, is a miss)."""
    with np.errstate(invalid="ignore"):
        return (ttft_s <= ttft_slo_s) & (tpot_s <= tpot_slo_s)


@dataclass(frozen=True)
class TimelinePoint:
    """The cluster at one controller tick, for the plots."""

    time_s: float
    arrival_rate_rps: float
    target_prefill: int
    target_decode: int
    target_mixed: int
    ready_prefill: int
    ready_decode: int
    ready_mixed: int
    gpus: int
    window_attainment: float | None


@dataclass
class RunSummary:
    """`dopd simulate --json`: one object per run."""

    policy: str
    trace: str
    rate_scale: float
    seed: int
    requests: int
    completed: int
    rejected: int
    unfinished: int
    slo_attainment: float
    ttft_attainment: float
    tpot_attainment: float
    goodput_rps: float
    goodput_rps_per_gpu: float
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p90_s: float | None
    tpot_p99_s: float | None
    ttft_mean_s: float | None
    tpot_mean_s: float | None
    gpu_hours: float
    mean_gpus: float
    peak_gpus: int
    scale_actions: int
    duration_s: float
    simulated_end_s: float
    wall_seconds: float
    layout: str = ""
    timeline: list[dict[str, Any]] = field(default_factory=list)
    scored_from_s: float = 0.0  # requests arriving earlier were the load's past, not scored (run.py)
    # Prompt tokens served from the prefix cache over those looked up from scored_from_s on (what vLLM
    # reports as prefix_cache_hits / prefix_cache_queries); None when the trace carries no block hashes.
    prefix_cache_hit_rate: float | None = None

    def to_json(self, include_timeline: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not include_timeline:
            data.pop("timeline")
        return data


def summarize_latencies(
    ttft_s: FloatArray, tpot_s: FloatArray, ttft_slo_s: float, tpot_slo_s: float
) -> dict[str, float | None]:
    """Attainment shares and latency percentiles over all requests (unserved ones are NaN)."""
    requests = len(ttft_s)
    met = slo_met(ttft_s, tpot_s, ttft_slo_s, tpot_slo_s)
    with np.errstate(invalid="ignore"):
        ttft_ok = ttft_s <= ttft_slo_s
        tpot_ok = tpot_s <= tpot_slo_s
    served_ttft = ttft_s[np.isfinite(ttft_s)]
    served_tpot = tpot_s[np.isfinite(tpot_s)]

    def share(mask: npt.NDArray[np.bool_]) -> float:
        return float(np.count_nonzero(mask)) / requests if requests else 0.0

    return {
        "slo_attainment": share(met),
        "ttft_attainment": share(ttft_ok),
        "tpot_attainment": share(tpot_ok),
        "met": float(np.count_nonzero(met)),
        "ttft_p50_s": percentile(served_ttft, 50),
        "ttft_p90_s": percentile(served_ttft, 90),
        "ttft_p99_s": percentile(served_ttft, 99),
        "tpot_p50_s": percentile(served_tpot, 50),
        "tpot_p90_s": percentile(served_tpot, 90),
        "tpot_p99_s": percentile(served_tpot, 99),
        "ttft_mean_s": float(np.mean(served_ttft)) if len(served_ttft) else None,
        "tpot_mean_s": float(np.mean(served_tpot)) if len(served_tpot) else None,
    }


@dataclass(frozen=True)
class IntervalAverages:
    """What NVIDIA Dynamo's planner reads each adjustment interval: averages over the interval, not
    percentiles. None: nothing was observed in the interval."""

    seconds: float
    requests: int  # arrivals in the interval
    ttft_mean_s: float | None  # over first tokens in the interval
    itl_mean_s: float | None  # mean TPOT over requests finished in the interval
    isl_mean: float | None  # over arrivals
    osl_mean: float | None  # over requests finished in the interval
    # arrival to last token, over requests finished in the interval (the frontend's request duration)
    request_duration_mean_s: float | None = None


def interval_averages(log: RequestLog, trace: Trace, start_s: float, end_s: float) -> IntervalAverages:
    """Dynamo's interval averages over [start_s, end_s) from a run's request log."""
    lo = int(np.searchsorted(trace.arrival_s, start_s, side="left"))
    hi = int(np.searchsorted(trace.arrival_s, end_s, side="left"))
    first = bisect.bisect_left(log.first_token_times, start_s)
    last = bisect.bisect_left(log.first_token_times, end_s)
    ttft = log.first_token_ttft[first:last]
    first = bisect.bisect_left(log.finish_times, start_s)
    last = bisect.bisect_left(log.finish_times, end_s)
    itl = [tpot for tpot in log.finish_tpot[first:last] if tpot > 0]  # one-token outputs have no ITL
    finished = log.finish_output_index[first:last]
    durations = np.asarray(log.finish_times[first:last]) - trace.arrival_s[finished]
    return IntervalAverages(
        seconds=end_s - start_s,
        requests=hi - lo,
        ttft_mean_s=float(np.mean(ttft)) if ttft else None,
        itl_mean_s=float(np.mean(itl)) if itl else None,
        isl_mean=float(np.mean(trace.input_tokens[lo:hi])) if hi > lo else None,
        osl_mean=float(np.mean(trace.output_tokens[finished])) if finished else None,
        request_duration_mean_s=float(np.mean(durations)) if finished else None,
    )
