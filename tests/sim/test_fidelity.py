"""Fidelity: the simulator, driven by the profile `dopd profile --served` measures through the router,
against real CPU workers (router -> prefill -> KV transfer -> decode) on the same small Poisson trace.

A reduced version of `bench/sim_bench.py`'s `fidelity()` (about 30 requests in 50 s instead of 60 in 120 s). Real
processes on 127.0.0.1 free ports, killed at the end.
"""

from __future__ import annotations

import pytest

from dopd_bench import load_sim_bench

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.timeout(300)]

# Relative error of mean TTFT and mean TPOT. The target is 15%. Runs of this test on 2 shared
# cores, quiet or with one other CPU-bound process, land at 4-17% (the simulator optimistic: the co-located prefill
# and decode workers slow each other when requests overlap, which separate simulated replicas never do);
# with the cores oversubscribed (three CPU hogs on 2 cores) mean TTFT reached -27% and mean TPOT +54%,
# the profile itself being measured in that noise. So 15% would be flaky; 60% held in every run seen before
# and still fails a profile that misses the serving overheads (the in-process profile is off by 67-76%).
# One CI run (2026-12-03, with the profile's per-length mean of 3 rounds) read +65% mean TTFT, the simulator
# pessimistic: the profile's prefill had been timed in a slow moment. The profile now takes the median
# of its rounds, as the in-process profiler does.
BOUND = 0.6


def test_simulator_matches_real_workers_with_the_served_profile() -> None:
    result = load_sim_bench().fidelity(requests_per_s=0.6, duration_s=50.0, seed=5)
    summary = {k: round(v, 4) for k, v in result.items() if k.endswith("_s") or k.endswith("_error")}
    # The profile's description carries its fits' errors: a profile measured in a noisy moment shows there.
    why = f"{summary}; profile: {result['profile']}"
    print(why)
    assert result["requests"] >= 20, why
    assert abs(result["ttft_mean_error"]) < BOUND, why
    assert abs(result["tpot_mean_error"]) < BOUND, why
