"""Where the repository's vendored data lives: the public traces and the measured performance data.

The files sit in the repository's `data/` folder (data/README.md lists each one with its source, license
and readers). `data_dir()` is `$DOPD_DATA_DIR` when that is set and non-empty (the XDG convention: an
empty variable counts as unset), else `<repository>/data`; `data_path()` resolves one file or folder
under it and raises `DataNotFoundError` when it is not there, naming the path, the variable and the fix.
Nothing substitutes other data for a missing file.

Callers: the simulator's `dopd demo` (sim/dopd_sim/cli.py), the benchmark scripts (bench/*.py), the test
fixtures (tests/sim/conftest.py, tests/forecaster/conftest.py, tests/operator/test_profiles.py) and
scripts/readme_samples.py. It lives in the forecaster because that is the lowest layer the simulator,
the benchmarks and the tests all import, and it imports nothing from dopd.

The default only works from a source checkout (an editable install included): a wheel carries no data,
so an installed package must be given `DOPD_DATA_DIR`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

DATA_DIR_ENV: Final = "DOPD_DATA_DIR"
REPOSITORY_DATA_DIR: Final = Path(__file__).resolve().parents[2] / "data"

# Paths relative to the data folder, as data/README.md lists them.
AZURE_CONV_2023: Final = "traces/azure-llm-2023/AzureLLMInferenceTrace_conv.csv"
MOONCAKE_SYNTHETIC: Final = "traces/mooncake-fast25/synthetic_trace.jsonl"
PERF_MODELS: Final = "perf-models"


class DataNotFoundError(FileNotFoundError):
    """A vendored data file or folder is not where `data_dir()` says it should be."""


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$DOPD_DATA_DIR` if set and non-empty, else the repository's `data/` folder (not checked here)."""
    env = os.environ if environ is None else environ
    override = env.get(DATA_DIR_ENV, "")
    return Path(override).expanduser() if override else REPOSITORY_DATA_DIR


def data_path(relative: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file or folder `relative` under `data_dir()`; raises `DataNotFoundError` if it does not exist."""
    env = os.environ if environ is None else environ
    root = data_dir(env)
    path = root / relative
    if path.exists():
        return path
    if env.get(DATA_DIR_ENV, ""):
        where = f"{DATA_DIR_ENV} is set to {root}"
        fix = f"point {DATA_DIR_ENV} at a folder laid out like the repository's data/, or unset it"
    else:
        where = f"{DATA_DIR_ENV} is not set, so the repository's data folder {root} was used"
        fix = (
            f"run from a checkout of the dopd repository (its data/ folder holds the file), "
            f"or set {DATA_DIR_ENV} to a copy of that folder"
        )
    raise DataNotFoundError(
        f"data file {relative} not found at {path}: {where}. Fix: {fix}; "
        "data/README.md lists every file and where it comes from."
    )
