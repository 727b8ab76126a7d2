"""Fixtures for the forecaster tests: the shared public traces, read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """`../shared/traces` beside the repository; a missing directory fails the test, never skips it."""
    if not (SHARED_TRACES / "README.md").is_file():
        pytest.fail(f"shared traces not found at {SHARED_TRACES}; they are read in place, not copied")
    return SHARED_TRACES


@pytest.fixture(scope="session")
def azure_trace_path(shared_traces: Path) -> Path:
    return shared_traces / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"


@pytest.fixture(scope="session")
def mooncake_trace_path(shared_traces: Path) -> Path:
    return shared_traces / "mooncake-fast25" / "synthetic_trace.jsonl"


@pytest.fixture(scope="session")
def azure_head_200(azure_trace_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The header and first 199 requests of the Azure trace, cut at test time."""
    return _cut(azure_trace_path, 200, tmp_path_factory.mktemp("azure") / "azure_head.csv")


@pytest.fixture(scope="session")
def mooncake_head_200(mooncake_trace_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 200 Mooncake requests, cut at test time."""
    return _cut(mooncake_trace_path, 200, tmp_path_factory.mktemp("mooncake") / "mooncake_head.jsonl")


def _cut(source: Path, n_lines: int, target: Path) -> Path:
    with open(source, encoding="utf-8") as handle:
        target.write_text("".join(next(handle) for _ in range(n_lines)), encoding="utf-8")
    return target
