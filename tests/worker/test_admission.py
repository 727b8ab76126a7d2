"""SLO-aware admission, the pure parts: the decision table, the queued-token index, the prefill rate
meter (virtual time), and the router adapter over the router's own worker records."""

from __future__ import annotations

import math

import pytest

from dopd_worker.admission import (
    AdmissionConfig,
    PoolState,
    Priority,
    Reason,
    decide,
    expired,
    predict_ttft_seconds,
)
from dopd_worker.admission_queue import (
    AdmissionQueue,
    AdmittedTokenRate,
    QueuedTokens,
    QueueView,
    room_wait_tokens,
)
from dopd_worker.metrics import create_metrics
from dopd_worker.pool_meters import DecodePaceMeter, PrefillRateMeter
from dopd_worker.router import WorkerState
from dopd_worker.router_admission import RouterAdmission, admission_config, parse_priority
from dopd_worker.scheduler import Policy, SchedulerConfig

SLO = AdmissionConfig(ttft_slo_seconds=1.5)  # thresholds: interactive 1.425 s, standard 1.2 s, batch 0.75 s


def pool(ahead: int, inflight: int = 4000, rate: float | None = 10_000.0, **kw: object) -> PoolState:
    """Two prefill workers at `rate` tokens/s each (the pool drains 20k tokens/s), 0.2 s from dispatch
    to first token; FIFO-like queue view (nothing overtakes)."""
    fields: dict[str, object] = {
        "prefill_workers": 2,
        "decode_workers": 1,
        "tokens_per_second_per_worker": rate,
        "service_seconds": 0.2,
        "inflight_tokens": inflight,
        "room_wait_tokens": 0,
        "queue": QueueView(ahead, ahead, 0.0, None),
        "decode_fill": 0.5,
    }
    fields.update(kw)
    return PoolState(**fields)  # type: ignore[arg-type]


def test_prediction_is_the_queue_ahead_at_the_pool_rate_plus_dispatch_to_first_token() -> None:
    # 10000 / 20000 + 0.2. Draining the queue at one worker's rate would say 1.2; taking the prompt's own
    # tokens at the rate (0.1 s) for its prefill would miss the batch it waits behind and say 0.6.
    assert predict_ttft_seconds(1000, pool(ahead=10_000)) == pytest.approx(0.7)
    # A prompt larger than the measured batches takes at least its own tokens at one worker's rate.
    assert predict_ttft_seconds(5000, pool(ahead=10_000)) == pytest.approx(1.0)
    assert predict_ttft_seconds(1000, pool(ahead=10_000, rate=None)) is None
    assert predict_ttft_seconds(1000, pool(ahead=10_000, service_seconds=None)) is None


@pytest.mark.parametrize(
    ("ahead", "priority", "admitted", "retry_after"),
    [
        # predicted 0.7 s: under every class's threshold
        pytest.param(10_000, Priority.BATCH, True, None, id="light-load-admits-even-batch"),
        # predicted 1.1 s: batch (0.75 s) is shed first, standard (1.2 s) still admitted
        pytest.param(18_000, Priority.BATCH, False, 1, id="batch-shed-first"),
        pytest.param(18_000, Priority.STANDARD, True, None, id="standard-admitted-while-batch-is-shed"),
        # predicted 1.4 s: standard shed, interactive (1.425 s) still admitted: interactive is shed last
        pytest.param(24_000, Priority.STANDARD, False, 1, id="standard-shed-next"),
        pytest.param(24_000, Priority.INTERACTIVE, True, None, id="interactive-admitted-last"),
        # predicted 3.2 s: everyone shed; Retry-After = ceil(predicted - threshold)
        pytest.param(60_000, Priority.INTERACTIVE, False, 2, id="interactive-shed-retry-after-2"),
        pytest.param(60_000, Priority.BATCH, False, 3, id="batch-shed-retry-after-3"),
    ],
)
def test_priority_classes_are_shed_in_order(
    ahead: int, priority: Priority, admitted: bool, retry_after: int | None
) -> None:
    verdict = decide(1000, priority, 100.0, pool(ahead=ahead), SLO)
    assert verdict.admitted is admitted
    assert verdict.retry_after_seconds == retry_after
    if admitted:
        assert verdict.status == 200 and verdict.reason is None
        # the deadline leaves room for dispatch to first token (0.2 s) within the TTL (= the SLO, 1.5 s)
        assert verdict.queue_deadline_seconds == pytest.approx(101.3)
    else:
        assert verdict.status == 429 and verdict.reason is Reason.PREDICTED_TTFT
        assert verdict.queue_deadline_seconds is None
        assert f"{priority.value} request" in verdict.message


@pytest.mark.parametrize(
    ("state", "status", "reason", "retry_after"),
    [
        pytest.param(pool(0, prefill_workers=0), 503, Reason.NO_PREFILL_WORKER, 5, id="no-prefill-worker"),
        pytest.param(pool(0, decode_workers=0), 503, Reason.NO_DECODE_WORKER, 5, id="no-decode-worker"),
        pytest.param(pool(0, decode_fill=1.01), 429, Reason.DECODE_FULL, 1, id="decode-kv-full"),
    ],
)
def test_nothing_ready_is_503_and_a_full_decode_pool_is_429(
    state: PoolState, status: int, reason: Reason, retry_after: int
) -> None:
    verdict = decide(10, Priority.INTERACTIVE, 0.0, state, SLO)
    assert (verdict.admitted, verdict.status, verdict.reason, verdict.retry_after_seconds) == (
        False,
        status,
        reason,
        retry_after,
    )


@pytest.mark.parametrize(
    ("itl_seconds", "priority", "admitted"),
    [
        pytest.param(0.046, Priority.BATCH, False, id="46ms-sheds-batch-over-45ms"),
        pytest.param(0.046, Priority.STANDARD, True, id="46ms-keeps-standard-under-47.5ms"),
        pytest.param(0.049, Priority.STANDARD, False, id="49ms-sheds-standard"),
        pytest.param(0.049, Priority.INTERACTIVE, True, id="49ms-keeps-interactive-under-50ms"),
        pytest.param(None, Priority.BATCH, True, id="idle-decode-pool-is-not-slow"),
    ],
)
def test_a_slow_decode_pool_sheds_by_class(
    itl_seconds: float | None, priority: Priority, admitted: bool
) -> None:
    config = AdmissionConfig(ttft_slo_seconds=1.5, tpot_slo_seconds=0.05)  # shares 1.0 / 0.95 / 0.9
    verdict = decide(1000, priority, 0.0, pool(ahead=0, decode_itl_seconds=itl_seconds), config)
    assert verdict.admitted is admitted
    if not admitted:
        assert (verdict.status, verdict.reason, verdict.retry_after_seconds) == (429, Reason.DECODE_SLOW, 1)
    # without a TPOT SLO the pace is not checked
    assert decide(1000, priority, 0.0, pool(ahead=0, decode_itl_seconds=1.0), SLO).admitted


@pytest.mark.parametrize(
    ("fill", "priority", "admitted"),
    [
        pytest.param(0.92, Priority.BATCH, False, id="92%-full-sheds-batch-over-90%"),
        pytest.param(0.92, Priority.STANDARD, True, id="92%-full-keeps-standard-under-95%"),
        pytest.param(0.97, Priority.STANDARD, False, id="97%-full-sheds-standard"),
        pytest.param(0.97, Priority.INTERACTIVE, True, id="97%-full-keeps-the-last-room-for-interactive"),
        pytest.param(1.01, Priority.INTERACTIVE, False, id="no-room-at-all-sheds-interactive"),
    ],
)
def test_decode_room_is_kept_for_the_classes_shed_last(
    fill: float, priority: Priority, admitted: bool
) -> None:
    verdict = decide(1000, priority, 0.0, pool(ahead=0, decode_fill=fill), SLO)
    assert verdict.admitted is admitted
    assert admitted or verdict.reason is Reason.DECODE_FULL


def test_an_idle_pool_admits_a_prompt_that_alone_exceeds_the_slo() -> None:
    # 20000 tokens at 10k/s take 2 s alone: over the SLO, but shedding it would free nothing.
    verdict = decide(20_000, Priority.BATCH, 7.0, pool(ahead=0, inflight=0), SLO)
    assert verdict.admitted and verdict.predicted_ttft_seconds == pytest.approx(2.0)
    assert verdict.queue_deadline_seconds == 7.0  # it can wait no longer than it takes to dispatch it


def test_unknown_rate_admits_and_keeps_the_ttl() -> None:
    verdict = decide(1000, Priority.STANDARD, 3.0, pool(ahead=10**9, rate=None), SLO)
    assert verdict.admitted and verdict.predicted_ttft_seconds is None
    assert verdict.queue_deadline_seconds == 4.5  # arrival + TTL (= the SLO)


def test_a_configured_ttl_sets_the_deadline() -> None:
    config = AdmissionConfig(ttft_slo_seconds=1.5, queue_ttl_seconds=10.0)
    verdict = decide(1000, Priority.STANDARD, 0.0, pool(ahead=0), config)
    assert verdict.queue_deadline_seconds == pytest.approx(9.8)  # 10 s minus 0.2 s to its first token


def test_expiry_says_how_long_it_waited_and_when_to_retry() -> None:
    verdict = expired(1000, Priority.STANDARD, 1.43, pool(ahead=30_000), SLO)
    # predicted now 30000 / 20000 + 0.2 = 1.7 s, 0.5 s over the standard threshold
    assert (verdict.status, verdict.reason, verdict.retry_after_seconds) == (429, Reason.EXPIRED, 1)
    assert "waited 1.43s" in verdict.message


@pytest.mark.parametrize(
    "fractions",
    [
        pytest.param({Priority.INTERACTIVE: 0.5, Priority.STANDARD: 0.8, Priority.BATCH: 0.4}, id="rising"),
        pytest.param({Priority.INTERACTIVE: 1.0, Priority.STANDARD: 0.8}, id="missing-batch"),
        pytest.param({Priority.INTERACTIVE: 1.0, Priority.STANDARD: 0.8, Priority.BATCH: 0.0}, id="zero"),
    ],
)
def test_config_refuses_fractions_that_would_not_shed_interactive_last(
    fractions: dict[Priority, float],
) -> None:
    with pytest.raises(ValueError, match="slo_fractions"):
        AdmissionConfig(ttft_slo_seconds=1.0, slo_fractions=fractions)


def test_queued_tokens_by_policy() -> None:
    queue = AdmissionQueue(Policy.LENGTH_AWARE, aging_seconds=5.0, max_prompt_tokens=4096)
    for tokens in (100, 500, 500, 2000):
        queue.queued.add(tokens)
    assert queue.queued.up_to(499) == 100
    view = queue.view(500, 0.0)
    assert (view.tokens_ahead, view.tokens_total) == (1100, 3100)  # equal lengths queued first go first
    assert queue.view(600, 0.0).tokens_ahead == 1100  # the 2000-token prompt goes after it
    fifo = AdmissionQueue(Policy.FIFO, aging_seconds=5.0, max_prompt_tokens=4096)
    fifo.queued.add(2000)
    fifo.admitted.add(10, 0.0)
    # under FIFO everything queued goes first, nothing admitted later overtakes, no aging bound
    assert fifo.view(600, 0.0) == QueueView(2000, 2000, 0.0, None)
    queue.queued.remove(500)
    assert (queue.queued.up_to(500), queue.queued.total_tokens) == (600, 2600)
    with pytest.raises(ValueError, match="outside"):
        QueuedTokens(4096).add(4097)


def test_admitted_rate_counts_only_shorter_prompts_and_decays() -> None:
    rate = AdmittedTokenRate(4096, time_constant_seconds=10.0)
    for _ in range(10):
        rate.add(100, 0.0)
    rate.add(500, 0.0)
    # 1000 tokens of shorter prompts over a 10 s time constant: 100 tokens/s; the 500-token prompt and
    # equal lengths (admitted later, they queue behind it) do not overtake a 500-token prompt
    assert rate.below(500, 0.0) == pytest.approx(100.0)
    assert rate.below(501, 0.0) == pytest.approx(150.0)
    assert rate.below(100, 0.0) == 0.0
    assert rate.below(500, 10.0) == pytest.approx(100.0 / math.e)  # one time constant later
    assert rate.below(500, 2000.0) == pytest.approx(0.0, abs=1e-12)  # rebased far ahead: no overflow


def test_length_aware_wait_is_a_busy_period_capped_by_aging() -> None:
    # 10000 tokens ahead, pool 20000 tokens/s, shorter prompts admitted at 10000 tokens/s: they take half
    # the pool while it waits, so the queue ahead drains at 10000/s: 1.0 s (FIFO arithmetic says 0.5 s)
    overtaken = pool(0, queue=QueueView(10_000, 40_000, 10_000.0, 5.0))
    assert predict_ttft_seconds(1000, overtaken) == pytest.approx(1.0 + 0.2)
    # shorter arrivals alone fill the pool: it waits until it ages (0.5 s), then for all queued (2.0 s)
    starved = pool(0, queue=QueueView(10_000, 40_000, 25_000.0, 0.5))
    assert predict_ttft_seconds(1000, starved) == pytest.approx(0.5 + 2.0 + 0.2)
    nothing_ahead = pool(0, queue=QueueView(0, 40_000, 25_000.0, 0.5))
    assert predict_ttft_seconds(10, nothing_ahead) == pytest.approx(0.2)  # next in line


def test_meter_divides_served_tokens_by_busy_worker_seconds() -> None:
    meter = PrefillRateMeter(half_life_seconds=1e12, min_busy_seconds=1.0)
    meter.started("a", "r1", 0.0)
    meter.finished("a", "r1", 1000, served=True, now_seconds=0.5)
    assert meter.tokens_per_second(0.5) is None  # 0.5 busy seconds: not enough to trust
    assert meter.service_seconds(1000, 0.5) is None
    meter.started("a", "r2", 1.0)
    meter.started("a", "r3", 1.0)  # two prompts batched on one worker: one busy second for both
    meter.finished("a", "r2", 1000, served=True, now_seconds=1.5)
    meter.finished("a", "r3", 1000, served=True, now_seconds=2.0)
    # 3000 tokens / 1.5 busy s; the idle half second between does not count (else 3000 / 2.0 = 1500)
    assert meter.tokens_per_second(2.0) == pytest.approx(2000.0)
    assert meter.tokens_per_second(50.0) == pytest.approx(2000.0)  # idle time never lowers it
    # dispatch to first token 0.5, 0.5, 1.0 s: mean 2/3 plus one deviation (sqrt(1/18) = 0.2357)
    assert meter.service_seconds(1000, 2.0) == pytest.approx(0.6667 + 0.2357, abs=1e-4)


def test_meter_rate_is_per_worker_and_failures_add_time_not_tokens() -> None:
    meter = PrefillRateMeter(half_life_seconds=1e12)
    for worker in ("a", "b"):
        meter.started(worker, f"{worker}1", 0.0)
    meter.finished("a", "a1", 1000, served=True, now_seconds=1.0)
    meter.finished("b", "b1", 1000, served=True, now_seconds=1.0)
    # two busy worker-seconds: 1000 per worker (the pool's wall-clock busy time would say 2000)
    assert meter.tokens_per_second(1.0) == pytest.approx(1000.0)
    meter.started("a", "a2", 2.0)
    meter.finished("a", "a2", 5000, served=False, now_seconds=3.0)  # a failed attempt: a second, no tokens
    assert meter.tokens_per_second(3.0) == pytest.approx(2000.0 / 3.0)
    assert meter.service_seconds(None, 3.0) == pytest.approx(1.0)  # a failed attempt is no service time
    with pytest.raises(ValueError, match="never given"):
        meter.finished("b", "b1", 10, served=True, now_seconds=4.0)


def test_meter_follows_a_change_of_rate() -> None:
    meter = PrefillRateMeter(half_life_seconds=10.0)
    meter.started("a", "r1", 0.0)
    meter.finished("a", "r1", 1000, served=True, now_seconds=1.0)  # 1000 tokens/s
    meter.started("a", "r2", 20.0)
    meter.finished("a", "r2", 3000, served=True, now_seconds=21.0)  # then 3000 tokens/s
    # Two half-lives later the first second counts a quarter: (1000 * 0.25 + 3000) / (0.25 + 1). Without
    # the decay the two seconds would weigh alike: 4000 / 2 = 2000.
    assert meter.tokens_per_second(21.0) == pytest.approx(2600.0)


def test_decode_pace_is_token_weighted_and_unknown_when_idle() -> None:
    pace = DecodePaceMeter(half_life_seconds=1e12, min_tokens=20.0, stale_seconds=1.0)
    pace.observe(0.02, 10.0, 0.0)
    assert pace.itl_seconds(0.0) is None  # 10 tokens: too few to trust
    pace.observe(0.05, 30.0, 0.5)
    # (10 * 20 ms + 30 * 50 ms) / 40 tokens; an unweighted mean of the two samples would say 35 ms
    assert pace.itl_seconds(0.5) == pytest.approx(0.0425)
    assert pace.itl_seconds(1.6) is None  # no token for 1.1 s: idle, not slow


def _worker(url: str, role: str, **kw: object) -> WorkerState:
    state = WorkerState(url, role)
    state.healthy = True
    for key, value in kw.items():
        setattr(state, key, value)
    return state


def test_router_adapter_reads_the_router_workers_and_counts_rejections() -> None:
    metrics = create_metrics("router", "m")
    adapter = RouterAdmission(SLO, SchedulerConfig(), 8192, metrics)
    workers = [
        _worker("p1", "prefill", inflight_tokens=3000),
        _worker("p2", "prefill", inflight_tokens=1000),
        _worker("p3", "prefill", inflight_tokens=9999, healthy=False),  # not usable: not counted
        _worker("d1", "decode", capacity_tokens=1000, kv_usage=0.5, inflight_tokens=300),
    ]
    state = adapter.pool(workers, 100, 500, 0.0)
    assert (state.prefill_workers, state.decode_workers, state.inflight_tokens) == (2, 1, 4000)
    assert state.decode_fill == pytest.approx(1.0)  # max(0.5, 0.3) + 500/1000: fits exactly
    assert adapter.pool(workers, 100, 501, 0.0).decode_fill == pytest.approx(1.001)
    verdict = adapter.admit(workers, 100, 501, Priority.BATCH, 0.0)
    assert verdict.reason is Reason.DECODE_FULL
    adapter.expire(workers, 100, 10, Priority.INTERACTIVE, 2.0, 1.0)
    text = metrics.exposition().decode()
    assert (
        'dopd_requests_rejected_total{model="m",priority="batch",reason="decode_full",role="router"} 1.0'
        in text
    )
    assert 'dopd_requests_expired_total{model="m",priority="interactive",role="router"} 1.0' in text


def test_priority_header_and_flags() -> None:
    assert parse_priority(None) is Priority.STANDARD
    assert parse_priority(" Interactive ") is Priority.INTERACTIVE
    with pytest.raises(ValueError, match="interactive, standard, batch"):
        parse_priority("urgent")
    config = admission_config(2.0, ["batch=0.25"], None)
    assert config is not None and config.threshold_seconds(Priority.BATCH) == 0.5
    assert math.isclose(config.ttl_seconds, 2.0)
    assert admission_config(None, [], None) is None
    for bad in (["bogus=1"], ["standard"], ["batch=x"]):
        with pytest.raises(ValueError, match="CLASS=FRACTION"):
            admission_config(2.0, bad, None)
    with pytest.raises(ValueError, match="need --ttft-slo-seconds"):
        admission_config(None, ["batch=0.2"], None)


def test_service_time_is_measured_per_length_band() -> None:
    meter = PrefillRateMeter(half_life_seconds=1e12, min_busy_seconds=0.1)
    now = 0.0
    for i in range(3):  # three 1000-token prompts take 0.2 s each, three 20000-token ones 4 s each
        meter.started("a", f"s{i}", now)
        meter.finished("a", f"s{i}", 1000, served=True, now_seconds=now + 0.2)
        meter.started("a", f"l{i}", now + 1.0)
        meter.finished("a", f"l{i}", 20_000, served=True, now_seconds=now + 5.0)
        now += 10.0
    assert meter.service_seconds(1000, now) == pytest.approx(0.2)  # its band: 512..1023 tokens
    assert meter.service_seconds(600, now) == pytest.approx(0.2)  # the same band
    assert meter.service_seconds(20_000, now) == pytest.approx(4.0)  # 16384..32767 tokens
    # an unseen band gets all prompts' figure: mean 2.1 s plus one deviation 1.9 s (one pooled figure
    # for every length would tell a 1000-token prompt 4 s as well)
    assert meter.service_seconds(3000, now) == pytest.approx(4.0, abs=0.01)


def test_a_prompt_that_fits_no_worker_waits_for_half_the_excess() -> None:
    # budget 8192; workers holding 20000 and 9000 tokens: a 1000-token prompt fits the second once 1808
    # tokens of it finish (the first would need 12808)
    assert room_wait_tokens([20_000, 9000], 1000, 8192) == 1808
    assert room_wait_tokens([20_000, 0], 1000, 8192) == 0  # an empty worker takes any prompt
    assert room_wait_tokens([5000, 9000], 1000, 8192) == 0  # 5000 + 1000 fits the budget
    # nothing queued ahead, yet 0.5 * 1808 / 10000 s before it fits, then 0.2 s to its first token
    full = pool(0, room_wait_tokens=1808)
    assert predict_ttft_seconds(1000, full) == pytest.approx(0.0904 + 0.2)
