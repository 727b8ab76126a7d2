"""Synthetic generators and rate scaling: the loads the benchmark replays."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import make_trace

from dopd_sim.synthetic import bursts, diurnal, gamma_bursty, poisson, steps, trend
from dopd_sim.trace_spec import generate_from_spec
from dopd_sim.workload import scale_rate


def test_poisson_rate_and_determinism() -> None:
    first, again = poisson(20.0, 1000.0, seed=5), poisson(20.0, 1000.0, seed=5)
    assert len(first) == pytest.approx(20_000, rel=0.03)
    assert np.array_equal(first.arrival_s, again.arrival_s)
    assert np.array_equal(first.input_tokens, again.input_tokens)
    assert not np.array_equal(first.arrival_s[:100], poisson(20.0, 1000.0, seed=6).arrival_s[:100])


def test_gamma_bursty_is_burstier_than_poisson() -> None:
    bursty = gamma_bursty(20.0, 2000.0, cv=3.0, seed=1)
    gaps = np.diff(bursty.arrival_s)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(3.0, rel=0.15)


def test_diurnal_peak_to_trough_and_period() -> None:
    trace = diurnal(mean_rps=50.0, duration_s=7200.0, period_s=3600.0, peak_to_trough=4.0, seed=2)
    counts = np.bincount((trace.arrival_s // 300).astype(int), minlength=24)[:24]
    # Trough at 0 and 3600 s, peak at 1800 and 5400 s; 5-minute buckets smooth the peak slightly.
    assert counts[5] / counts[0] > 2.5
    assert counts[17] / counts[12] > 2.5


def test_step_changes_rate() -> None:
    trace = steps([5.0, 50.0], 600.0, seed=3)
    first = np.count_nonzero(trace.arrival_s < 590)
    second = np.count_nonzero(trace.arrival_s > 610)
    assert second / first == pytest.approx(10.0, rel=0.15)


def test_generate_from_spec_rejects_unknown_parameters() -> None:
    assert len(generate_from_spec("poisson,rate_rps=5,duration_s=100")) > 300
    with pytest.raises(ValueError, match=r"unknown parameters.*: rat$"):
        generate_from_spec("poisson,rat=5")
    with pytest.raises(ValueError, match="unknown synthetic"):
        generate_from_spec("weibull")


def test_rate_scale_keeps_span_and_multiplies_requests() -> None:
    trace = poisson(10.0, 600.0, seed=4)
    scaled = scale_rate(trace, 2.5, seed=0)
    assert len(scaled) == pytest.approx(2.5 * len(trace), rel=0.02)
    assert scaled.arrival_s[0] == 0.0
    assert np.all(np.diff(scaled.arrival_s) >= 0)
    assert scaled.duration_s <= trace.duration_s
    assert set(scaled.input_tokens.tolist()) <= set(trace.input_tokens.tolist())


def test_rate_scale_one_is_identity() -> None:
    trace = make_trace([0.0, 1.0], [5, 6], [7, 8])
    assert scale_rate(trace, 1.0) is trace


def test_bursts_raise_the_rate_inside_episodes_only() -> None:
    trace = bursts(50.0, 3600.0, factor=3.0, burst_s=120.0, per_hour=6.0, seed=4)
    per_minute = np.bincount((trace.arrival_s // 60).astype(int), minlength=60)[:60] / 60
    # Outside bursts the rate is 50 rps; inside 150. Without bursts no minute would exceed ~60.
    assert np.median(per_minute) == pytest.approx(50.0, rel=0.1)
    assert per_minute.max() == pytest.approx(150.0, rel=0.1)


def test_trend_rises_linearly() -> None:
    trace = trend(30.0, 210.0, 3600.0, seed=5)
    per_ten_minutes = np.bincount((trace.arrival_s // 600).astype(int), minlength=6)[:6] / 600
    # Midpoints of the six ten-minute spans: 45, 75, ..., 195 rps.
    assert per_ten_minutes.tolist() == pytest.approx([45, 75, 105, 135, 165, 195], rel=0.05)


@pytest.mark.parametrize(
    ("mix", "input_mean", "output_mean"),
    [
        pytest.param("azure", 1155, 211, id="azure-conversation"),
        # 85% x 1155 + 15% x 12000 (capped at 32k)
        pytest.param("long-mix", 2780, 211, id="long-prompt-mix"),
        pytest.param("code", 2000, 30, id="code-completion"),
        # the log-normal's mean, a little less for the clip at 16k
        pytest.param("reasoning", 800, 2400, id="reasoning"),
    ],
)
def test_length_mixes(mix: str, input_mean: float, output_mean: float) -> None:
    trace = generate_from_spec(f"poisson,rate_rps=50,duration_s=600,lengths={mix}", seed=6)
    assert float(np.mean(trace.input_tokens)) == pytest.approx(input_mean, rel=0.06)
    assert float(np.mean(trace.output_tokens)) == pytest.approx(output_mean, rel=0.06)
    with pytest.raises(ValueError, match="unknown length mix"):
        generate_from_spec("poisson,lengths=chat")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_mix_shift_moves_the_lengths_at_a_flat_rate(seed: int) -> None:
    """Code completion before the shift, conversation after, linearly in between; the rate stays flat, so
    what changes is the ratio of prefill to decode work the requests bring."""
    trace = generate_from_spec(
        "poisson,rate_rps=60,duration_s=1200,lengths=code,shift_to=azure,shift_start_s=300,shift_end_s=900",
        seed,
    )
    arrival = np.asarray(trace.arrival_s)
    outputs = np.asarray(trace.output_tokens)
    before, after = arrival < 300, arrival >= 900
    middle = (arrival >= 550) & (arrival < 650)
    assert float(np.mean(outputs[before])) == pytest.approx(30, rel=0.1)
    assert float(np.mean(outputs[after])) == pytest.approx(211, rel=0.1)
    # Halfway through the shift about half the requests come from each mix: code's outputs stop at 256.
    assert float(np.mean(outputs[middle] > 256)) == pytest.approx(
        0.5 * float(np.mean(outputs[after] > 256)), rel=0.25
    )
    assert np.count_nonzero(before) / 300 == pytest.approx(np.count_nonzero(after) / 300, rel=0.05)


def test_a_mix_shift_names_what_is_missing_or_wrong() -> None:
    with pytest.raises(ValueError, match=r"takes all of shift_to, shift_start_s and shift_end_s .*shift_to"):
        generate_from_spec("poisson,lengths=code,shift_to=azure")
    with pytest.raises(ValueError, match="unknown length mix shift_to='chat'"):
        generate_from_spec("poisson,shift_to=chat,shift_start_s=0,shift_end_s=10")
    with pytest.raises(ValueError, match="shift_start_s <= shift_end_s"):
        generate_from_spec("poisson,shift_to=code,shift_start_s=20,shift_end_s=10")
    with pytest.raises(ValueError, match="unknown parameters for synthetic:poisson: shift_at"):
        generate_from_spec("poisson,shift_at=4")


@pytest.mark.parametrize(
    "spec",
    [
        "gamma,rate_rps=80,cv=2,duration_s=1500",
        "diurnal,mean_rps=60,duration_s=1500,period_s=1500,peak_to_trough=3",
        "step,rates=20/90/40/120/60,step_seconds=300",
        "bursts,base_rps=50,factor=2,burst_s=200,per_hour=8,duration_s=1500",
        "trend,start_rps=20,end_rps=120,duration_s=1500",
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_generated_trace_carries_the_law_it_was_drawn_from(spec: str, seed: int) -> None:
    # Each 5-minute window's arrivals are one draw of the law's expected count, within 4.5 standard
    # deviations (a renewal process's count varies as its rate times its gaps' scv).
    trace = generate_from_spec(spec, seed)
    law = trace.law
    assert law is not None
    for start in range(0, 1500, 300):
        expected = float(law.expected_arrivals(start + 300.0) - law.expected_arrivals(float(start)))
        drawn = np.count_nonzero((trace.arrival_s >= start) & (trace.arrival_s < start + 300))
        assert abs(drawn - expected) <= 4.5 * np.sqrt(expected * law.gap_scv), (start, drawn, expected)
    assert law.gap_scv == (4.0 if spec.startswith("gamma") else 1.0)


@pytest.mark.parametrize("rate_scale", [2.5, 0.5])
def test_rate_scaling_carries_the_superposed_law(rate_scale: float) -> None:
    # The shifted copies' laws summed: a step load scaled keeps every minute's count within reach of
    # the law, though the copies' shifts move the step.
    trace = scale_rate(steps([20.0, 90.0, 40.0], 300.0, seed=4), rate_scale, seed=4)
    law = trace.law
    assert law is not None
    for start in range(0, 840, 60):
        expected = float(law.expected_arrivals(start + 60.0) - law.expected_arrivals(float(start)))
        drawn = np.count_nonzero((trace.arrival_s >= start) & (trace.arrival_s < start + 60))
        assert abs(drawn - expected) <= 4.5 * np.sqrt(expected) + 1, (start, drawn, expected)
    assert law.gap_scv == 1.0  # thinned or superposed, Poisson stays Poisson
    bursty = scale_rate(gamma_bursty(40.0, 600.0, cv=2.0, seed=4), rate_scale, seed=4).law
    assert bursty is not None
    # Whitt's QNA: a copy thinned to p has scv p*4 + 1 - p; copies mix by rate.
    thinned = 0.5 * 4.0 + 0.5
    assert bursty.gap_scv == pytest.approx((2 * 4.0 + 0.5 * thinned) / 2.5 if rate_scale == 2.5 else thinned)
