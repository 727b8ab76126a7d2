"""The simulator's observation of TPOT is what the dopd router exposes: its percentile and attainment per
finished request (`dopd_request_time_per_output_token_seconds`, as the SLO is written), its mean from
the inter-token gaps (waits for a decode slot included), which the decode correction learns from."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_helpers import ScriptedPolicy

from dopd_sim.cluster import Simulator
from dopd_sim.config import SimConfig, default_spec
from dopd_sim.policies.base import Layout
from dopd_sim.synthetic import poisson


def test_the_tpot_attainment_counts_requests_where_the_gaps_would_count_tokens() -> None:
    # 52 rps of Azure-like requests on one decode replica (about 44 fit in its slots within the 50 ms
    # TPOT SLO): sequences wait for a slot, and the short ones, whose few gaps leave little slack for a
    # wait, miss the SLO more often than a share of gaps (weighted by each request's length) shows
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
    assert per_request < 0.8 and per_gap > 0.9  # 73% of the requests, 93% of the gaps
    assert obs.tpot_attainment == pytest.approx(per_request, abs=1e-9)  # 50 ms is a bucket bound
    assert obs.tpot_mean_seconds == pytest.approx(float(np.sum(tpot * gaps) / np.sum(gaps)))
    assert obs.tpot_seconds is not None and math.isfinite(obs.tpot_seconds)
