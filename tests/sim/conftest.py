"""Fixtures for the simulator tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dopd_forecaster.datasets import AZURE_CONV_2023, data_path
from dopd_forecaster.traces import Trace

# The tests import `sim_helpers` beside this file (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def azure_head() -> Trace:
    """Ten minutes of the vendored Azure conversation trace at 4x. A missing trace raises
    `DataNotFoundError` (the test errors, naming the path and the fix); nothing is substituted."""
    from dopd_sim.workload import load_workload

    return load_workload(str(data_path(AZURE_CONV_2023)), rate_scale=4.0, duration_s=600.0)
