"""The simulator's observation of TPOT is what the dopd router exposes: its percentile and attainment per
finished request (`dopd_request_time_per_output_token_seconds`, as the SLO is written), its mean from
the inter-token gaps (waits for a decode slot included: the gap users see), and the decode step's mean,
those gaps less the decode pods' slot waits (`dopd_decode_slot_wait_seconds`), which the decode
correction learns the engine's speed from."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_helpers import ScriptedPolicy, make_trace, toy_config, toy_profile

from dopd_operator.planner_types import Observation
from dopd_sim.cluster import Simulator
from dopd_sim.config import SimConfig, default_spec
from dopd_sim.policies.base import Layout, TickInput
from dopd_sim.synthetic import poisson


def test_the_tpot_attainment_counts_requests_where_the_gaps_would_count_tokens() -> None:
    # 52 rps of Azure-like requests on one decode replica (about 44 fit in its slots within the 50 ms
    # TPOT SLO): sequences wait for a slot, and the short ones, whose few gaps leave little slack for a
    # wait, miss the SLO more often than a share of gaps (weighted by each request's length) shows (the
    # join order seats the newest timely sequences first, so the waits fall on few of them)
    trace = poisson(52.0, 120.0, seed=1)
    sim = Simulator(
        trace, ScriptedPolicy(Layout(prefill=4, decode=1)), SimConfig(spec=default_spec(), seed=1)
    )
    sim.run()
    # observed after the run, the window's requests are those finished from its start on
    now_s = 60.0
    obs = sim.observer.observe(now_s, sim)
    window_s, slo_s = sim.config.window_seconds, sim.config.spec.slo.tpot_seconds
    log, out = sim.log, trace.output_tokens
    finished = [r for r in range(len(trace)) if log.finish_s[r] >= now_s - window_s and out[r] > 1]
    tpot = np.asarray([log.tpot_s[r] for r in finished])
    gaps = np.asarray([out[r] - 1 for r in finished], dtype=np.float64)
    per_request = float(np.mean(tpot <= slo_s))
    per_gap = float(np.sum(gaps * (tpot <= slo_s)) / np.sum(gaps))
    assert per_request < per_gap - 0.01  # 91.9% of the requests, 93.6% of the gaps
    assert obs.tpot_attainment == pytest.approx(per_request, abs=1e-9)  # 50 ms is a bucket bound
    assert obs.tpot_mean_seconds == pytest.approx(float(np.sum(tpot * gaps) / np.sum(gaps)))
    assert obs.tpot_seconds is not None and math.isfinite(obs.tpot_seconds)


class _Watching(ScriptedPolicy):
    """A fixed layout that keeps the observation of each tick."""

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.seen: dict[float, Observation] = {}

    def decide(self, tick: TickInput) -> Layout:
        self.seen[tick.now_s] = tick.observation
        return super().decide(tick)


def test_a_wait_for_a_decode_slot_shows_in_the_mean_gap_when_the_sequence_joins() -> None:
    """One decode replica of two slots, 10 ms a step, and six 3001-token outputs at once: two decode for
    30 s while four wait. At 45 s the two that joined at 30 s have not finished, but the worker observed
    their first gaps (30 s of wait each) as their second tokens left, and every step since as it ended
    (B gaps a step), so the window's mean gap holds them, as the emulator's and the worker's histograms
    do. Seen only at their finish, a minute later for a reasoning model's outputs, the decode correction
    read the waits and the steps minutes late."""
    step_s = 0.01
    trace = make_trace([0.0] * 6, [100] * 6, [3001] * 6)
    policy = _Watching(Layout(prefill=1, decode=1))
    config = toy_config(
        toy_profile(prefill_a=0.1, decode_a=step_s, max_batch_size=2), controller_interval_seconds=15.0
    )
    sim = Simulator(trace, policy, config)
    sim.run()
    obs = policy.seen[45.0]
    log = sim.log
    joined = [r for r in range(6) if log.join_s[r] <= 45.0]
    finished = [r for r in range(6) if log.finish_s[r] <= 45.0]
    assert len(joined) == 4 and len(finished) == 2  # two decoding since 30 s, two still waiting
    waits = sum(log.join_s[r] - log.first_token_s[r] for r in joined)
    # the steps run by 45 s: the first two's 3000 each, and the 1500 each of the two that joined at 30 s
    steps_s = sum(min(log.finish_s[r], 45.0) - log.join_s[r] for r in joined)
    gaps = round(steps_s / step_s)
    assert waits == pytest.approx(60.0, abs=0.5)
    assert gaps == pytest.approx(2 * 3000 + 2 * 1500, abs=40)  # the second of a pair joins 0.11 s later
    assert obs.tpot_mean_seconds == pytest.approx((waits + steps_s) / gaps, rel=1e-3)
    assert obs.tpot_mean_seconds > 1.6 * step_s
    # less the waits the decode pod counts apart, the gaps are the engine's steps
    assert obs.decode_step_mean_seconds == pytest.approx(step_s, rel=1e-3)
    assert (
        obs.tpot_attainment == 1.0
    )  # the two that finished kept their 10 ms: the percentile waits for the rest


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 10.0), st.integers(1, 400), st.integers(1, 600)),  # arrival, prompt, output
        min_size=1,
        max_size=24,
    ),
    st.integers(1, 6),  # decode slots
)
def test_over_a_window_that_holds_the_whole_run_every_gap_is_counted_once(
    requests: list[tuple[float, int, int]], slots: int
) -> None:
    """However the batches form (sequences joining and leaving mid-stretch, waits for a slot), a window
    that holds the whole run counts n - 1 gaps a request of n tokens and sums them to its time from
    first token to last, as the worker's histogram does; less the waits, the sum is the steps'."""
    requests = sorted(requests)
    trace = make_trace([r[0] for r in requests], [r[1] for r in requests], [r[2] for r in requests])
    policy = _Watching(Layout(prefill=1, decode=1))
    # a step of 10 ms plus 10 us a token of context: the steps lengthen within a stretch
    config = toy_config(
        toy_profile(prefill_a=0.05, decode_a=0.01, decode_b=1e-5, max_batch_size=slots),
        controller_interval_seconds=15.0,
        metrics_window_seconds=600.0,  # longer than any run drawn here (24 x 600 tokens in one slot)
    )
    sim = Simulator(trace, policy, config)
    sim.run()
    log = sim.log
    end_s = max(log.finish_s)
    assert end_s < config.window_seconds  # the window from 0 on holds every gap
    obs = sim.observer.observe(end_s + 1e-6, sim)
    outputs = [r[2] for r in requests]
    gaps = sum(n - 1 for n in outputs)
    lives_s = sum(log.finish_s[i] - log.first_token_s[i] for i, n in enumerate(outputs) if n > 1)
    steps_s = sum(log.finish_s[i] - log.join_s[i] for i, n in enumerate(outputs) if n > 1)
    if gaps == 0:
        assert obs.tpot_mean_seconds is None
        return
    assert obs.tpot_mean_seconds == pytest.approx(lives_s / gaps, rel=1e-6)
    assert obs.decode_step_mean_seconds == pytest.approx(steps_s / gaps, rel=1e-6)
    assert obs.request_tpot_mean_seconds == pytest.approx(
        float(np.mean([log.tpot_s[i] for i, n in enumerate(outputs) if n > 1])), rel=1e-9
    )
