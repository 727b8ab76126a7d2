"""Where a run's misses fall (`dopd_sim.miss_profile`): which requests a pool spent its misses on, and
which it left waiting until the load stopped, a wait the attainment target counts as one miss; and the
load going on past a generated trace's span (`dopd_sim.workload.continued_workload`)."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dopd_forecaster.traces import Trace
from dopd_sim.config import SimConfig
from dopd_sim.miss_profile import miss_profile
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.run import simulate
from dopd_sim.trace_spec import generate_from_spec
from dopd_sim.workload import continued_workload, load_workload


def _trace(arrival_s: list[float], output_tokens: list[int]) -> Trace:
    return Trace(
        np.asarray(arrival_s, dtype=np.float64),
        np.full(len(arrival_s), 100, dtype=np.int64),
        np.asarray(output_tokens, dtype=np.int64),
        "test",
        "test",
    )


def test_a_miss_is_counted_in_its_band_and_by_when_it_finished() -> None:
    """Against the default SLO (TTFT 1.5 s, TPOT 50 ms), after one unscored request: a 300-token output
    met; a 3,000-token one late by its TTFT that finished before the last arrival (at 10 s); a
    1,500-token one whose 0.1 s TPOT ends at 153 s; a 10,000-token one met, the last to finish (204 s);
    an 800-token one never served."""
    config = SimConfig()
    trace = _trace([0.0, 1.0, 2.0, 3.0, 4.0, 10.0], [50, 300, 3_000, 1_500, 10_000, 800])
    ttft = np.array([5.0, 0.2, 2.0, 0.5, 0.3, math.nan])
    tpot = np.array([0.01, 0.02, 0.001, 0.1, 0.02, math.nan])
    profile = miss_profile(trace, ttft, tpot, config, score_from_s=0.5)
    assert (profile.requests, profile.misses) == (5, 3)
    assert [(b.label, b.requests, b.misses) for b in profile.bands] == [
        ("1-500", 1, 0),
        ("501-2000", 2, 2),
        ("2001-8000", 1, 1),
        (">8000", 1, 0),
    ]
    # Of the misses only the 1,500-token output finished after the last arrival: the 3,000-token one
    # ended at 7 s, the one never served never did.
    assert profile.misses_finished_after_last_arrival == 1
    assert math.isclose(profile.latest_finish_after_last_arrival_s, 4.0 + 0.3 + 0.02 * 9_999 - 10.0)


def test_a_saturated_decode_pool_leaves_its_longest_outputs_waiting_until_the_load_stops() -> None:
    """Eight decode replicas where reasoning-length outputs at 20 rps need about twelve. The join order
    seats the newest timely sequence that fits, and a long output's KV fits later than a short one's:
    the longest outputs wait, every miss is served only once the arrivals stop, and an output over 8,000
    tokens misses ten times as often as one under 500. The attainment target alone does not show this
    wait (bench/miss_profile.py)."""
    trace = generate_from_spec("poisson,rate_rps=20,duration_s=600,lengths=reasoning", 0)
    config = SimConfig(seed=0)
    result = simulate(trace, StaticPolicy(1, 8), config)
    profile = miss_profile(trace, result.ttft_s, result.tpot_s, config)
    assert profile.misses > 0.02 * profile.requests
    assert sum(b.requests for b in profile.bands) == profile.requests
    assert sum(b.misses for b in profile.bands) == profile.misses
    assert profile.misses_finished_after_last_arrival == profile.misses
    shortest, longest = profile.bands[0], profile.bands[-1]
    assert longest.misses / longest.requests > 10 * shortest.misses / shortest.requests


@pytest.mark.parametrize(
    ("scenario", "policy"),
    [("reasoning", "oracle"), ("reasoning", "static-peak"), ("steps-reasoning", "oracle")],
)
def test_the_command_profiles_a_recorded_benchmark_seed(scenario: str, policy: str) -> None:
    """`bench/miss_profile.py` as the docs cite it: a recorded seed of the reasoning trace, the oracle
    at the factors results.json holds and static-peak held to its target, and a held-out shape's oracle
    at the factors held-out/results.json holds, each line of the table adding up to the total it
    prints."""
    script = Path(__file__).resolve().parents[2] / "bench" / "miss_profile.py"
    out = subprocess.run(
        [sys.executable, str(script), scenario, "--seed", "0", "--policy", policy],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    head = re.search(r"(\d+) of (\d+) scored requests missed", out)
    assert head is not None, out
    rows = re.findall(r"^\s*\S+ \|\s+(\d+) \|\s+(\d+) \|", out, re.MULTILINE)
    assert len(rows) == 4, out
    assert sum(int(r[0]) for r in rows) == int(head.group(2))
    assert sum(int(r[1]) for r in rows) == int(head.group(1))
    assert "misses that finished only after the last arrival" in out


def test_a_generated_load_goes_on_with_the_same_requests_then_more_of_its_law() -> None:
    """The continued trace keeps every request of the scenario as generated (so a run scored on them
    compares with the suite's), then draws on under the longer spec's law; a trace that cannot go on
    (a file, a step spec without its steps) is refused naming what can; a step spec's last level goes on."""
    source = "synthetic:diurnal,mean_rps=20,duration_s=600,period_s=600,peak_to_trough=3,lengths=reasoning"
    own = load_workload(source, seed=4)
    continued = continued_workload(source, 4, 300.0)
    n = len(own)
    assert len(continued) > n
    for column in ("arrival_s", "input_tokens", "output_tokens"):
        assert np.array_equal(getattr(continued, column)[:n], getattr(own, column))
    assert np.all(np.diff(continued.arrival_s) >= 0)
    assert own.duration_s < continued.arrival_s[n] and continued.duration_s > 600.0 + 200.0
    assert continued.law is not None and own.law is not None
    # The law goes on: the next cycle's trough, then its rise.
    assert continued.law.busiest_mean_rps(840.0, 840.0, 60.0) > continued.law.busiest_mean_rps(
        600.0, 600.0, 60.0
    )
    # A trend goes on at its slope, and one that would fall below 0 rps is refused.
    rising = continued_workload("synthetic:trend,start_rps=10,end_rps=40,duration_s=300", 2, 150.0)
    assert rising.law is not None
    assert rising.law.busiest_mean_rps(420.0, 420.0, 10.0) == pytest.approx(
        10.0 + 30.0 * 425.0 / 300.0, rel=0.01
    )
    with pytest.raises(ValueError, match="falls to 0 rps"):
        continued_workload("synthetic:trend,start_rps=40,end_rps=10,duration_s=300", 2, 150.0)
    # A step spec's last level goes on, in whole steps.
    level = continued_workload("synthetic:step,rates=4/8,step_seconds=60", 1, 90.0)
    assert level.law is not None and level.duration_s > 200.0
    assert level.law.busiest_mean_rps(150.0, 150.0, 30.0) == pytest.approx(8.0)
    for bad in ("synthetic:step,rates=4/8", "trace.csv"):
        with pytest.raises(ValueError, match="duration_s"):
            continued_workload(bad, 0, 60.0)


def test_the_command_scores_the_same_requests_with_the_load_going_on() -> None:
    """`--load-goes-on`: the oracle at the recorded factors on reasoning seed 0 with 5 more minutes of
    load scores exactly the scenario's requests; a scenario that cannot go on (chat's block hashes) is
    refused."""
    script = Path(__file__).resolve().parents[2] / "bench" / "miss_profile.py"
    own = load_workload(
        "synthetic:diurnal,mean_rps=20,duration_s=1800,period_s=1800,peak_to_trough=3,lengths=reasoning",
        seed=0,
    )
    out = subprocess.run(
        [sys.executable, str(script), "reasoning", "--seed", "0", "--load-goes-on", "300"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    head = re.search(
        r"the load going on 300 s past the span .*: ([\d.]+)% attainment.* (\d+) of (\d+) scored", out
    )
    assert head is not None, out
    assert int(head.group(3)) == len(own)
    refused = subprocess.run(
        [sys.executable, str(script), "chat", "--load-goes-on", "300"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2 and "block hashes" in refused.stderr


def test_every_benchmark_scenario_runs_on_its_own_requests_and_those_that_can_go_on_do() -> None:
    """Both benchmarks run a scenario as `Scenario.run_trace` gives it: its own requests, and where its
    load goes on (`goes_on_s`), then more of its law, scored to its own end. Every generated shape but
    the chat's can go on, so a shape whose law cannot fails here, not an hour into a benchmark; only a
    trace file and chat's block hashes end the run."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import held_out
        import sim_bench
    finally:
        sys.path.pop(0)
    going_on = 0
    for as_run in (*sim_bench.SCENARIOS, *held_out.HELD_OUT):
        own, scenario = as_run.trace(1, False), as_run
        if as_run.goes_on_s == 0:
            ran, until = as_run.run_trace(1, False)
            assert until is None and len(ran) == len(own), as_run.name
            if as_run.source.startswith("synthetic:chat") or not as_run.source.startswith("synthetic:"):
                continue
            scenario = dataclasses.replace(as_run, goes_on_s=sim_bench.GOES_ON_S)
        going_on += 1
        ran, until = scenario.run_trace(1, False)
        n = len(own)
        assert until is not None and own.arrival_s[-1] < until <= ran.arrival_s[n], scenario.name
        assert np.array_equal(ran.arrival_s[:n], own.arrival_s), scenario.name
        assert ran.duration_s >= own.duration_s + scenario.goes_on_s - 60.0, scenario.name
        # and `--quick`'s 10-minute slice is not the trace, so it does not go on
        assert scenario.run_trace(1, True)[1] is None
    assert going_on == len(sim_bench.SCENARIOS) - 3 + len(held_out.HELD_OUT) - 1  # all but 2 files, 2 chats
