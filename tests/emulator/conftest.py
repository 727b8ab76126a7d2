"""Fixtures for the emulator tests: the simulator tests' toy profiles and traces are reused as they are."""

from __future__ import annotations

import sys
from pathlib import Path

# `sim_helpers` (tiny hand-checkable profiles and traces) and `emulator_helpers` live beside the tests
# that use them (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "sim"))
