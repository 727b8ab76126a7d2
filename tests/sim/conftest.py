"""Fixtures for the simulator tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dopd_forecaster.traces import Trace

# The tests import `sim_helpers` beside this file (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))

AZURE = "/work/shared/traces/azure-llm-2023/AzureLLMInferenceTrace_conv.csv"


def _azure_or_synthetic() -> Trace:
    from dopd_sim.synthetic import gamma_bursty
    from dopd_sim.workload import load_workload

    if os.path.exists(AZURE):
        return load_workload(AZURE, rate_scale=4.0, duration_s=600.0)
    return gamma_bursty(20.0, 600.0, cv=3.0, seed=0)


@pytest.fixture(scope="session")
def azure_head() -> Trace:
    """Ten minutes of the Azure conversation trace at 4x (a bursty synthetic trace without ../shared)."""
    return _azure_or_synthetic()
