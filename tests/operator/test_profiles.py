"""The built-in performance presets and the profile fitter.

Why these tests: the planner sizes replicas straight from a preset, so a preset that is non-monotone,
drifts from its documented derivation, or a fitter that silently accepts garbage turns into a wrong
replica count. The derivation tests read data/perf-models and FAIL (not skip) without it: the
presets are only trustworthy while they can be re-derived.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dopd_forecaster.datasets import PERF_MODELS, data_dir, data_path
from dopd_operator.api import ProfileSpec
from dopd_operator.profile import PerformanceProfile, resolve_profile
from dopd_operator.profile_fit import fit_decode, fit_prefill
from dopd_operator.profile_presets import PRESETS

REPO = Path(__file__).resolve().parents[2]
DATA = data_dir() / PERF_MODELS  # `_derive_module` checks it exists

# Documented in docs/profiles.md (llama2-70b-h100-tp8): mean abs error against every raw Splitwise row.
SPLITWISE_TP8_PREFILL_MEAN_BOUND = 0.20
SPLITWISE_TP8_DECODE_MEAN_BOUND = 0.03


def _derive_module() -> ModuleType:
    data_path(PERF_MODELS)  # raises DataNotFoundError, naming the path and the fix, when it is missing
    spec = importlib.util.spec_from_file_location("derive_profiles", REPO / "bench" / "derive_profiles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _close(actual: float, expected: float, rel: float) -> bool:
    return math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-15)


# ---------------------------------------------------------------------------------------------- presets


def test_required_presets_exist_and_resolve() -> None:
    for name in ("opt-13b-a100", "llama3-8b-h100", "llama2-70b-h100-tp8"):
        assert name in PRESETS
        assert resolve_profile(ProfileSpec(preset=name)) is PRESETS[name]
    for name, profile in PRESETS.items():
        assert isinstance(profile, PerformanceProfile) and profile.name == name and profile.description


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_monotone_and_plausible(name: str) -> None:
    p = PRESETS[name]
    lengths = [1, 16, 128, 512, 1024, 2048, 4096, 8192]
    prefill = [p.prefill_seconds(n) for n in lengths]
    assert all(b > a for a, b in itertools.pairwise(prefill)), prefill
    assert p.prefill_batch_seconds([512, 512]) > p.prefill_batch_seconds([512])
    assert 0.005 < p.prefill_seconds(512) < 1.0  # one 512-token prompt: milliseconds to under a second
    for ctx in (128, 1024, 4096):
        steps = [p.decode_step_seconds(b, ctx) for b in (1, 2, 8, 32, 64, 128, 256)]
        assert all(b > a for a, b in itertools.pairwise(steps)), steps
    for batch in (1, 32, 256):
        steps = [p.decode_step_seconds(batch, c) for c in (128, 512, 2048, 8192)]
        assert all(b > a for a, b in itertools.pairwise(steps)), steps
    assert 0.003 < p.decode_step_seconds(1, 512) < 0.1  # a decode step at batch 1
    assert p.kv_capacity_tokens >= 16 * 2048  # at least a handful of long sequences fit
    assert p.kv_bytes_per_token > 0 and p.kv_transfer_seconds(1024) > 0


def test_kv_arithmetic_of_presets() -> None:
    # 2 (K,V) x layers x kv heads x head dim x 2 bytes
    assert PRESETS["llama3-8b-h100"].kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    assert PRESETS["opt-13b-a100"].kv_bytes_per_token == 2 * 40 * 5120 * 2
    assert PRESETS["llama2-70b-h100-tp8"].kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    # (80 GB x 0.9 - 16.06 GB of weights) / 131072 B
    assert PRESETS["llama3-8b-h100"].kv_capacity_tokens == pytest.approx((72e9 - 16.06e9) / 131_072, rel=1e-3)
    assert PRESETS["opt-13b-a100"].kv_capacity_tokens == pytest.approx((72e9 - 25.7e9) / 819_200, rel=1e-3)


def test_distserve_figure1_anchor_numbers() -> None:
    """The numbers quoted under 'DistServe Figure 1 anchor' in docs/profiles.md."""
    p = PRESETS["opt-13b-a100"]
    assert 1 / p.prefill_seconds(512) == pytest.approx(13.86, abs=0.05)
    ctx = 512 + 64 / 2
    per_seq = p.decode.b_seconds_per_context_token * ctx + p.decode.c_seconds_per_sequence
    assert int((0.04 - p.decode.a_seconds) // per_seq) == 53


def test_importing_presets_does_no_io() -> None:
    """The planner is pure: importing the presets must not open data files."""
    code = (
        "import sys\n"
        "import dopd_operator.profile\n"
        "opened = []\n"
        "def hook(event, args):\n"
        "    if event == 'open' and not str(args[0]).endswith(('.py', '.pyc')):\n"
        "        opened.append(args[0])\n"
        "sys.addaudithook(hook)\n"
        "import dopd_operator.profile_presets\n"
        "print(opened)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


# ----------------------------------------------------------------------------------------------- fitter


def test_fit_prefill_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(7)
    a, b, c = 0.020, 1.0e-4, 8.0e-9
    batches = [list(rng.integers(16, 4096, size=rng.integers(1, 5)).astype(float)) for _ in range(200)]
    truth = np.array([a + b * sum(x) + c * sum(v * v for v in x) for x in batches])
    seconds = truth * (1 + rng.normal(0, 0.02, len(truth)))  # 2% timing noise
    coef, quality = fit_prefill(batches, list(seconds))
    assert _close(coef.a_seconds, a, 0.10)
    assert _close(coef.b_seconds_per_token, b, 0.05)
    assert _close(coef.c_seconds_per_token2, c, 0.10)
    assert quality.samples == 200 and quality.mean_abs_pct_error < 0.03


def test_fit_decode_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(11)
    a, b, c = 0.015, 5.0e-7, 8.0e-5
    batch = rng.integers(1, 257, size=300).astype(float)
    ctx = batch * rng.integers(64, 4096, size=300)
    seconds = (a + b * ctx + c * batch) * (1 + rng.normal(0, 0.02, 300))
    coef, quality = fit_decode(list(batch), list(ctx), list(seconds))
    assert _close(coef.a_seconds, a, 0.05)
    assert _close(coef.b_seconds_per_context_token, b, 0.05)
    assert _close(coef.c_seconds_per_sequence, c, 0.15)
    assert quality.mean_abs_pct_error < 0.03


def test_fitters_reject_too_few_or_non_finite_samples() -> None:
    with pytest.raises(ValueError, match="at least 3 samples"):
        fit_prefill([[128.0], [256.0]], [0.01, 0.02])
    with pytest.raises(ValueError, match="at least 3 samples"):
        fit_decode([1.0, 2.0], [100.0, 200.0], [0.01, 0.02])
    with pytest.raises(ValueError, match="NaN or infinity"):
        fit_prefill([[128.0], [256.0], [512.0]], [0.01, float("nan"), 0.03])
    with pytest.raises(ValueError, match="NaN or infinity"):
        fit_decode([1.0, 2.0, 4.0], [100.0, float("nan"), 400.0], [0.01, 0.02, 0.03])
    with pytest.raises(ValueError, match="differ in length"):
        fit_decode([1.0, 2.0, 4.0], [100.0, 200.0], [0.01, 0.02, 0.03])
    with pytest.raises(ValueError, match="one list of prompt lengths per timing"):
        fit_prefill([[128.0], [256.0]], [0.01, 0.02, 0.03])
    # NaN prompt lengths are rejected too, though (today) by scipy's message, not the fitter's own
    with pytest.raises(ValueError):
        fit_prefill([[128.0], [float("nan")], [512.0]], [0.01, 0.02, 0.03])


# ------------------------------------------------------------------------------------------ derivations


def test_splitwise_preset_rederives_from_the_csv() -> None:
    derive = _derive_module()
    fit = derive.derive_splitwise(DATA, "llama2-70b", "h100-80gb", 8)
    preset = PRESETS["llama2-70b-h100-tp8"]
    for field in ("a_seconds", "b_seconds_per_token", "c_seconds_per_token2"):
        assert _close(getattr(preset.prefill, field), getattr(fit.prefill, field), 0.01), field
    for field in ("a_seconds", "b_seconds_per_context_token", "c_seconds_per_sequence"):
        assert _close(getattr(preset.decode, field), getattr(fit.decode, field), 0.01), field
    assert fit.rows == 105
    assert fit.prefill_raw_errors[0] < SPLITWISE_TP8_PREFILL_MEAN_BOUND
    assert fit.decode_raw_errors[0] < SPLITWISE_TP8_DECODE_MEAN_BOUND
    # and the pasted preset itself, against every raw row
    rows = derive._splitwise_rows(DATA, "llama2-70b", "h100-80gb", 8)
    pre_err = [
        abs(
            preset.prefill_batch_seconds([float(r["prompt_size"])] * int(r["batch_size"]))
            - float(r["prompt_time"]) * 1e-3
        )
        / (float(r["prompt_time"]) * 1e-3)
        for r in rows
    ]
    dec_err = [
        abs(
            preset.decode_step_seconds(int(r["batch_size"]), int(r["prompt_size"]) + int(r["token_size"]) / 2)
            - float(r["token_time"]) * 1e-3
        )
        / (float(r["token_time"]) * 1e-3)
        for r in rows
    ]
    assert float(np.mean(pre_err)) < SPLITWISE_TP8_PREFILL_MEAN_BOUND
    assert float(np.mean(dec_err)) < SPLITWISE_TP8_DECODE_MEAN_BOUND


def test_every_preset_matches_its_derivation() -> None:
    derive = _derive_module()
    for d in derive.derive_all(DATA):
        p = PRESETS[d.name]
        pairs = [
            (p.prefill.a_seconds, d.prefill.a_seconds),
            (p.prefill.b_seconds_per_token, d.prefill.b_seconds_per_token),
            (p.prefill.c_seconds_per_token2, d.prefill.c_seconds_per_token2),
            (p.decode.a_seconds, d.decode.a_seconds),
            (p.decode.b_seconds_per_context_token, d.decode.b_seconds_per_context_token),
            (p.decode.c_seconds_per_sequence, d.decode.c_seconds_per_sequence),
        ]
        assert all(_close(x, y, 1e-6) for x, y in pairs), (d.name, pairs)
        assert p.kv_capacity_tokens == d.kv_capacity_tokens and p.kv_bytes_per_token == d.kv_bytes_per_token
        assert p.max_batch_size == d.max_batch_size
        assert _close(p.kv_transfer_bytes_per_second, d.kv_transfer_bytes_per_second, 1e-9)


@pytest.mark.parametrize(
    ("batches", "seconds", "words"),
    [
        pytest.param([[100], [200], [300]], [0.0, 0.0, 0.0], "> 0 seconds", id="zero-timings"),
        pytest.param([[100], [-5], [300]], [0.1, 0.2, 0.3], "finite, >= 0", id="negative-length"),
        pytest.param([[100], [100], [100]], [0.1, 0.1, 0.1], "do not vary enough", id="one-length-only"),
    ],
)
def test_fit_prefill_rejects_samples_it_cannot_fit(
    batches: list[list[float]], seconds: list[float], words: str
) -> None:
    from dopd_operator.profile_fit import fit_prefill

    with pytest.raises(ValueError, match=words):
        fit_prefill(batches, seconds)


def test_fit_decode_rejects_a_single_operating_point() -> None:
    from dopd_operator.profile_fit import fit_decode

    with pytest.raises(ValueError, match="do not vary enough"):
        fit_decode([8, 8, 8], [4000, 4000, 4000], [0.02, 0.02, 0.02])
