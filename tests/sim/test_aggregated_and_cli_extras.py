"""Colocated (chunked-prefill) replicas on a hand-computed case, profile files, and the demo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sim_helpers import ScriptedPolicy, make_trace, toy_config, toy_profile

from dopd_sim.cli import demo
from dopd_sim.config import load_profile
from dopd_sim.policies.base import Layout
from dopd_sim.run import simulate


def test_chunked_prefill_then_decode_on_one_colocated_replica() -> None:
    # Prefill 1 ms/token, no fixed cost; 512 tokens per iteration; decode step 10 ms.
    # Iteration 1 (0 -> 0.512): 512 of request 0's 1000 prompt tokens; request 1 arrives at 0.1 and waits.
    # Iteration 2 (-> 1.024): request 0's last 488 + 24 of request 1's 100: request 0's first token.
    # Iteration 3 (-> 1.110): request 0 decodes (10 ms) beside request 1's last 76 tokens (76 ms).
    # Iteration 4 (-> 1.120): both decode one step and finish.
    # Unchunked (prefill first, then decode), request 1 would see its first token at 1.1 - 0.1 = 1.0 s.
    profile = toy_profile(prefill_a=0.0, prefill_b=0.001, decode_a=0.01)
    policy = ScriptedPolicy(Layout(mixed=1), architecture="aggregated")
    config = toy_config(profile, aggregated_token_budget=512)
    result = simulate(make_trace([0.0, 0.1], [1000, 100], [3, 2]), policy, config)
    assert result.ttft_s.tolist() == pytest.approx([1.024, 1.110 - 0.1])
    assert result.tpot_s.tolist() == pytest.approx([(1.120 - 1.024) / 2, 1.120 - 1.110])


def test_profile_file_from_dopd_profile_is_loaded_with_its_name(tmp_path: Path) -> None:
    profile = toy_profile(decode_b=1e-6)
    document = profile.model_dump(mode="json")
    document["name"], document["description"] = "measured-cpu", "measured by dopd profile"
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(document))
    loaded = load_profile(str(path))
    assert loaded.name == "measured-cpu"
    assert loaded.decode.b_seconds_per_context_token == 1e-6
    assert load_profile("opt-13b-a100").name == "opt-13b-a100"


def test_demo_prints_a_table_and_writes_the_report(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo, ["--out", str(tmp_path / "demo"), "--minutes", "3"])
    assert result.exit_code == 0, result.output
    for policy in ("dopd", "reactive", "static", "oracle"):
        assert f"| {policy} |" in result.output
    assert (tmp_path / "demo" / "report.md").exists()
