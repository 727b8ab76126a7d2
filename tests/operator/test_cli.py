"""`dopd plan`, `dopd crds`, `dopd profiles` as a user runs them: real subprocesses, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vllm-llama3-8b.yaml"


def dopd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dopd_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plan_json_has_the_documented_keys() -> None:
    out = dopd(
        "plan",
        "-f",
        str(EXAMPLE),
        "--rate",
        "30",
        "--isl",
        "1200",
        "--osl",
        "250",
        "--isl-p90",
        "3000",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    decision = json.loads(out.stdout)
    assert {"prefill", "decode", "ratio", "gpus", "reasons", "clamps"} <= decision.keys()
    assert decision["prefill"] >= 1 and decision["decode"] >= 1
    assert decision["ratio"] == pytest.approx(decision["prefill"] / decision["decode"])
    assert decision["gpus"] == decision["prefill"] + decision["decode"]  # 1 GPU per replica in this example


def test_plan_text_explains_itself() -> None:
    out = dopd("plan", "-f", str(EXAMPLE), "--rate", "30", "--isl", "1200", "--osl", "250")
    assert out.returncode == 0, out.stderr
    assert "llama3-8b:" in out.stdout and "why:" in out.stdout and "decode: B*=" in out.stdout


def test_plan_reports_budget_clamps() -> None:
    out = dopd("plan", "-f", str(EXAMPLE), "--rate", "2000", "--isl", "1200", "--osl", "250", "--json")
    decision = json.loads(out.stdout)
    assert decision["gpus"] == 24  # the example's gpuBudget
    assert "GpuBudget" in {c["stage"] for c in decision["clamps"]}


BAD_DOCS = {
    "unknown-field": ("spec:\n  model: m\n  prefil: {}\n", "spec.prefil: unknown field"),
    "wrong-type": ("spec:\n  model: m\n  decode: {maxReplicas: lots}\n", "spec.decode.maxReplicas"),
    "min-above-max": (
        "spec:\n  model: m\n  prefill: {minReplicas: 9, maxReplicas: 2}\n",
        "minReplicas (9) must be <= maxReplicas (2)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_plan_rejects_bad_manifests_without_traceback(tmp_path: Path, case: str) -> None:
    body, message = BAD_DOCS[case]
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: dopd.io/v1alpha1\nkind: DisaggregatedModel\nmetadata: {name: x}\n" + body)
    out = dopd("plan", "-f", str(path), "--rate", "1", "--isl", "100", "--osl", "10")
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_rejects_a_file_that_is_not_a_disaggregated_model(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
    out = dopd("plan", "-f", str(path), "--rate", "1", "--isl", "100", "--osl", "10")
    assert out.returncode != 0 and "not a dopd.io/v1alpha1 DisaggregatedModel" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_rejects_negative_rate() -> None:
    out = dopd("plan", "-f", str(EXAMPLE), "--rate", "-3", "--isl", "100", "--osl", "10")
    assert out.returncode != 0 and "--rate" in out.stderr and "must be >= 0" in out.stderr


def test_plan_credits_a_prefix_cache_hit_rate_and_rejects_one_out_of_range() -> None:
    args = ("plan", "-f", str(EXAMPLE), "--rate", "60", "--isl", "4000", "--osl", "100", "--json")
    cold = json.loads(dopd(*args).stdout)
    warm = dopd(*args, "--prefix-cache-hit-rate", "0.6")
    assert warm.returncode == 0, warm.stderr
    decision = json.loads(warm.stdout)
    assert decision["prefill"] < cold["prefill"]  # 60% of the prompt tokens are not computed
    assert any("60% prefix-cache hits" in r for r in decision["reasons"])
    bad = dopd(*args, "--prefix-cache-hit-rate", "1.5")
    assert bad.returncode != 0 and "--prefix-cache-hit-rate" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_takes_how_the_hits_fall_on_prompts() -> None:
    """Long prompts, 60% of their tokens cached: spread evenly, a long prompt keeps too much to compute
    and the decision says many are out of reach; as most-or-nothing (the router's measure), fewer are,
    and the reason names the cached prompts' own limit. A malformed pair is refused, naming the option."""
    args = ("plan", "-f", str(EXAMPLE), "--rate", "4", "--isl", "20000", "--isl-p90", "60000", "--osl", "100")
    even = dopd(*args, "--json", "--prefix-cache-hit-rate", "0.6")
    mixed = dopd(*args, "--json", "--prefix-cache-hit-rate", "0.6", "--prefix-hit-mix", "0.97:0.62")
    assert even.returncode == 0 and mixed.returncode == 0, mixed.stderr
    reasons = " ".join(json.loads(mixed.stdout)["reasons"])
    assert "that find 97% of themselves in the prefix cache" in reasons
    assert "that find" not in " ".join(json.loads(even.stdout)["reasons"])
    for bad in ("0.97", "1.5:0.2", "0.9:0.7 0.5:0.5"):
        out = dopd(*args, *[x for pair in bad.split() for x in ("--prefix-hit-mix", pair)])
        assert out.returncode != 0 and "--prefix-hit-mix" in out.stderr and "Traceback" not in out.stderr, bad


def test_crds_prints_the_committed_crd() -> None:
    out = dopd("crds")
    assert out.returncode == 0
    assert out.stdout == (ROOT / "crds" / "dopd.io_disaggregatedmodels.yaml").read_text()


def test_profiles_lists_presets() -> None:
    out = dopd("profiles")
    assert out.returncode == 0 and "llama3-8b-h100" in out.stdout and "opt-13b-a100" in out.stdout
