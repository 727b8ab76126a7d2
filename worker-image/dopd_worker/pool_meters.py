"""The serving pools as the router measures them, for admission (`admission.py`). Pure: no clock, no
I/O; times come in as arguments.

`PrefillRateMeter`: prompt tokens served per busy worker-second, and the seconds from handing a prompt
to a worker to its first token. A worker is busy from the moment it is handed a prompt until it holds
none (first token back, or the attempt failed). The meter integrates busy worker-seconds and counts the
tokens of the prompts that reached their first token, both decayed with a half-life; their ratio is the
per-worker rate at which `admission.predict_ttft_seconds` drains the queue ahead of a request. The
dispatch-to-first-token time of served prompts (decayed mean and spread, per power-of-two band of prompt
length) is the rest of a request's TTFT once it leaves the queue: on a batching engine that is the batch
running when it arrives plus its own batch, nearly the same for every prompt that fits a batch, which a
per-token rate alone would not say, and growing with length (convexly) for prompts that fill one. Measured this way both include what the router cannot see directly: batching, a slow engine, HTTP
and KV transfer set-up, a decode pool slow to take the KV. A failed attempt adds busy time and no
tokens, so failures read as a slower pool rather than an impossibly fast one.

`DecodePaceMeter`: the recent inter-token latency of the decode pool, token-weighted, with a short
half-life (the decode batch reacts within seconds to what admission lets in). It is unknown once no
token has come for a while, so an idle pool never reads as a slow one.

Callers: `router.Router` and `openai_api` (prefill dispatch and release, token gaps) and
`dopd_sim.admission` (the same quantities in simulated time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# A prompt's dispatch-to-first-token estimate: the decayed mean plus this many standard deviations, of
# its length band when the band has this many (decayed) served prompts, else of all prompts.
SERVICE_SPREAD_Z = 1.0
MIN_BAND_PROMPTS = 3.0


@dataclass
class _Moments:
    """Decayed count, sum and sum of squares of service seconds."""

    count: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1.0
        self.total += seconds
        self.squares += seconds * seconds

    def decay(self, factor: float) -> None:
        self.count *= factor
        self.total *= factor
        self.squares *= factor

    def high(self) -> float:
        mean = self.total / self.count
        return mean + SERVICE_SPREAD_Z * math.sqrt(max(self.squares / self.count - mean * mean, 0.0))


@dataclass
class PrefillRateMeter:
    half_life_seconds: float = 30.0
    # Busy worker-seconds (decayed) needed before the rate is trusted; below, it is unknown (None).
    min_busy_seconds: float = 1.0
    _inflight: dict[str, int] = field(default_factory=dict, repr=False)
    _started: dict[str, float] = field(default_factory=dict, repr=False)
    _busy_workers: int = 0
    _busy_seconds: float = 0.0
    _tokens: float = 0.0
    _service: _Moments = field(default_factory=_Moments, repr=False)  # every served prompt
    _bands: dict[int, _Moments] = field(default_factory=dict, repr=False)  # by prompt_tokens.bit_length()
    _last_seconds: float | None = None

    def __post_init__(self) -> None:
        if not (self.half_life_seconds > 0 and self.min_busy_seconds > 0):
            raise ValueError("half_life_seconds and min_busy_seconds must be positive")

    def _advance(self, now_seconds: float) -> None:
        last = self._last_seconds
        if last is not None and now_seconds > last:
            elapsed = now_seconds - last
            decay = 0.5 ** (elapsed / self.half_life_seconds)
            self._tokens *= decay
            self._service.decay(decay)
            for band in self._bands.values():
                band.decay(decay)
            self._busy_seconds = self._busy_seconds * decay + self._busy_workers * elapsed
        if last is None or now_seconds > last:
            self._last_seconds = now_seconds

    def started(self, worker: str, request_id: str, now_seconds: float) -> None:
        """Prompt `request_id` was handed to `worker`."""
        self._advance(now_seconds)
        held = self._inflight.get(worker, 0)
        if held == 0:
            self._busy_workers += 1
        self._inflight[worker] = held + 1
        self._started[request_id] = now_seconds

    def finished(
        self, worker: str, request_id: str, prompt_tokens: int, served: bool, now_seconds: float
    ) -> None:
        """`worker` gave prompt `request_id` back: its first token arrived (`served`) or the attempt
        failed."""
        held = self._inflight.get(worker, 0)
        started = self._started.pop(request_id, None)
        if held <= 0 or started is None:
            raise ValueError(
                f"prefill worker {worker} finished prompt {request_id}, which it was never given"
            )
        self._advance(now_seconds)
        if served:
            self._tokens += prompt_tokens
            service = max(now_seconds - started, 0.0)
            self._service.add(service)
            self._bands.setdefault(prompt_tokens.bit_length(), _Moments()).add(service)
        if held == 1:
            del self._inflight[worker]
            self._busy_workers -= 1
        else:
            self._inflight[worker] = held - 1

    def tokens_per_second(self, now_seconds: float) -> float | None:
        """Prompt tokens per busy worker-second over the recent past; None until enough busy time."""
        self._advance(now_seconds)
        if self._busy_seconds < self.min_busy_seconds or self._tokens <= 0:
            return None
        return self._tokens / self._busy_seconds

    def service_seconds(self, prompt_tokens: int | None, now_seconds: float) -> float | None:
        """Dispatch to first token of a prompt of this length (mean plus SERVICE_SPREAD_Z deviations of
        its length band, or of all prompts while the band has too few; None: of all prompts) over the
        recent past; None when the rate is not yet trusted."""
        if self.tokens_per_second(now_seconds) is None or self._service.count <= 0:
            return None
        band = None if prompt_tokens is None else self._bands.get(prompt_tokens.bit_length())
        if band is not None and band.count >= MIN_BAND_PROMPTS - 1e-6:  # decay nibbles at exact counts
            return band.high()
        return self._service.high()


@dataclass
class DecodePaceMeter:
    half_life_seconds: float = 2.0
    min_tokens: float = 20.0  # decayed tokens needed before the pace is trusted
    stale_seconds: float = 1.0  # no token for this long: the pool is idle, the pace unknown
    _gap_sum: float = 0.0
    _tokens: float = 0.0
    _last_seconds: float | None = None
    _last_token_seconds: float | None = None

    def __post_init__(self) -> None:
        if not (self.half_life_seconds > 0 and self.min_tokens > 0 and self.stale_seconds > 0):
            raise ValueError("half_life_seconds, min_tokens and stale_seconds must be positive")

    def _advance(self, now_seconds: float) -> None:
        last = self._last_seconds
        if last is not None and now_seconds > last:
            decay = 0.5 ** ((now_seconds - last) / self.half_life_seconds)
            self._gap_sum *= decay
            self._tokens *= decay
        if last is None or now_seconds > last:
            self._last_seconds = now_seconds

    def observe(self, gap_seconds: float, tokens: float, now_seconds: float) -> None:
        """`tokens` output tokens came `gap_seconds` after the previous token of their sequence."""
        if gap_seconds < 0 or tokens < 0:
            raise ValueError("gap_seconds and tokens must not be negative")
        self._advance(now_seconds)
        self._gap_sum += gap_seconds * tokens
        self._tokens += tokens
        self._last_token_seconds = now_seconds

    def itl_seconds(self, now_seconds: float) -> float | None:
        """Token-weighted mean inter-token latency over the recent past; None when idle or too few."""
        self._advance(now_seconds)
        last = self._last_token_seconds
        if last is None or now_seconds - last > self.stale_seconds or self._tokens < self.min_tokens:
            return None
        return self._gap_sum / self._tokens
