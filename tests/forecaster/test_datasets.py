"""The vendored data and its resolver (`dopd_forecaster.datasets`).

Why these tests: a clone must run its tests and `dopd demo` with nothing beside it, and a missing or
misplaced data folder must stop with a message that says which file, where it was looked for and how to
fix it, never be replaced by a generated trace (which would make the demo's table and the trace tests
quietly mean something else).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dopd_forecaster.datasets import (
    AZURE_CONV_2023,
    DATA_DIR_ENV,
    MOONCAKE_SYNTHETIC,
    PERF_MODELS,
    REPOSITORY_DATA_DIR,
    DataNotFoundError,
    data_dir,
    data_path,
)

REPO = Path(__file__).resolve().parents[2]


def test_default_is_the_repositorys_data_folder() -> None:
    assert REPOSITORY_DATA_DIR == REPO / "data"
    assert data_dir({}) == REPO / "data"
    # An empty variable counts as unset (the XDG convention), not as the current directory.
    assert data_dir({DATA_DIR_ENV: ""}) == REPO / "data"


def test_the_vendored_files_are_where_the_readers_look() -> None:
    azure = data_path(AZURE_CONV_2023, {})
    assert azure == REPO / "data" / "traces" / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
    # The upstream header and row count (data/README.md: 19366 requests); a truncated copy has fewer.
    lines = azure.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "TIMESTAMP,ContextTokens,GeneratedTokens"
    assert len(lines) == 19367
    assert data_path(MOONCAKE_SYNTHETIC, {}).is_file()
    assert data_path(PERF_MODELS, {}).is_dir()


def test_every_vendored_file_matches_its_checksum_and_has_its_license() -> None:
    root = REPO / "data"
    listed = {}
    for line in (root / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    present = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name not in {"README.md", "SHA256SUMS"}
    }
    assert present == set(listed), "data/SHA256SUMS and the files in data/ differ"
    for name, digest in listed.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    # Every source folder carries its license beside its data.
    for source in (
        "traces/azure-llm-2023",
        "traces/mooncake-fast25",
        "perf-models/distserve",
        "perf-models/splitwise-sim",
        "perf-models/vidur",
        "perf-models/llmservingsim",
    ):
        assert any(n.startswith(f"{source}/LICENSE") for n in listed), source


def test_override_reads_another_copy(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "x.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    assert data_dir({DATA_DIR_ENV: str(tmp_path)}) == tmp_path
    assert data_path("traces/x.csv", {DATA_DIR_ENV: str(tmp_path)}) == tmp_path / "traces" / "x.csv"


def test_an_empty_override_folder_names_the_file_the_variable_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        data_path(AZURE_CONV_2023, {DATA_DIR_ENV: str(tmp_path)})
    message = str(caught.value)
    assert str(tmp_path / AZURE_CONV_2023) in message
    assert f"DOPD_DATA_DIR is set to {tmp_path}" in message
    assert "unset it" in message and "data/README.md" in message
    assert isinstance(caught.value, FileNotFoundError)  # callers that catch the builtin still do


def test_a_missing_file_without_override_points_at_the_checkout() -> None:
    with pytest.raises(DataNotFoundError, match="DOPD_DATA_DIR is not set, so the repository's data folder"):
        data_path("traces/not-vendored.csv", {})


def test_demo_stops_with_the_fix_instead_of_a_stand_in_trace(tmp_path: Path) -> None:
    from dopd_sim.cli import demo

    out = tmp_path / "demo"
    result = CliRunner().invoke(
        demo, ["--out", str(out), "--minutes", "1"], env={DATA_DIR_ENV: str(tmp_path)}
    )
    # Before: the demo replayed a generated diurnal trace and exited 0 with a table.
    assert result.exit_code == 1, result.output
    assert f"data file {AZURE_CONV_2023} not found at {tmp_path / AZURE_CONV_2023}" in result.output
    assert "dopd bench --trace synthetic:diurnal" in result.output
    assert "| dopd |" not in result.output and not out.exists()


def test_sim_trace_fixture_fails_instead_of_substituting(tmp_path: Path) -> None:
    """tests/sim/conftest.py used to fall back to a synthetic trace when the Azure trace was missing, so
    the test below passed on the wrong input. With an empty data folder it must error."""
    env = {**os.environ, DATA_DIR_ENV: str(tmp_path)}
    test = "tests/sim/test_engine.py::test_conservation_on_a_real_trace_slice"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DataNotFoundError" in done.stdout and "1 error" in done.stdout, done.stdout
