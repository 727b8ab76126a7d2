"""Fixtures for the forecaster tests: the public traces vendored in data/traces, read in place.

A missing trace raises `DataNotFoundError` (the test errors, naming the path and the fix); never a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dopd_forecaster.datasets import AZURE_CONV_2023, MOONCAKE_SYNTHETIC, data_path


@pytest.fixture(scope="session")
def azure_trace_path() -> Path:
    return data_path(AZURE_CONV_2023)


@pytest.fixture(scope="session")
def mooncake_trace_path() -> Path:
    return data_path(MOONCAKE_SYNTHETIC)


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
