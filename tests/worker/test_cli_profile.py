"""The CLI edge: importing it stays torch-free, and `dopd profile` writes a profile the planner and the
simulator load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import sys, dopd_worker.cli as c; assert 'torch' not in sys.modules; print(c.worker.name, c.router.name, c.profile.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["worker", "router", "profile"]


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_profile_writes_a_loadable_performance_profile(tmp_path: Path) -> None:
    import yaml

    from dopd_operator.profile import PerformanceProfile
    from dopd_worker.profiler import ProfileRequest, run_profile

    out = tmp_path / "tiny.yaml"
    run_profile(
        ProfileRequest(
            model="tiny",
            device="cpu",
            prompt_lengths=[16, 64, 256],
            batch_sizes=[1, 8],
            context_lengths=[32, 256],
            kv_cache_tokens=4096,
            repeats=2,
        ),
        out,
    )
    profile = PerformanceProfile.model_validate(yaml.safe_load(out.read_text()))
    assert profile.kv_capacity_tokens == 4096  # the paged cache's size, not a guess
    assert profile.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4  # K+V, 2 layers, 2 kv heads, head_dim 16, fp32
    assert profile.kv_transfer_bytes_per_second > 0
    # Every requested shape was measured (3 lengths x single/pair; 2 batch sizes x 2 contexts) ...
    assert "over 6 batches" in profile.description and "over 4 steps" in profile.description
    # ... and the fit explains some time (timings on this shared 2-core machine are too noisy to say more).
    assert profile.prefill_seconds(256) > 0 and profile.decode_step_seconds(8, 256) > 0
    # The simulator's loader (what `dopd simulate --profile FILE` uses) reads the same file.
    from dopd_sim.config import load_profile

    assert load_profile(str(out)).kv_capacity_tokens == 4096


def test_served_profile_counts_staggered_streams_by_time_overlap() -> None:
    from dopd_worker.served_profile import Completion, effective_batch

    # Two requests decode over [1, 3] and [2, 3]: the first shares half its span, the second all of it.
    runs = [Completion(0.0, 1.0, 3.0, 11), Completion(0.5, 1.5, 3.0, 6)]
    assert effective_batch(runs) == [1.5, 2.0]
    assert runs[0].tpot_s == 0.2  # (end - sent - TTFT) / (tokens - 1)


def test_served_profile_takes_the_median_round_so_one_slow_round_does_not_move_the_fit() -> None:
    from dopd_worker.served_profile import decode_points, prefill_points

    # Three rounds per prompt length; the 128-token prompt's second round ran 5x slow (a neighbour's burst).
    batches, ttfts = prefill_points({16: [0.010, 0.011, 0.012], 128: [0.020, 0.100, 0.021]})
    assert batches == [[16], [128]]
    assert ttfts == [0.011, 0.021]
    # Decode: (effective batch, mean TPOT) per round; summed context counts half the output per sequence.
    sizes, totals, tpots = decode_points({(4, 256): [(3.8, 0.005), (3.9, 0.030), (4.0, 0.006)]}, 24)
    assert sizes == [3.9] and tpots == [0.006]
    assert totals == [3.9 * (256 + 12)]
