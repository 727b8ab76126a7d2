"""bench/sim_bench.py loaded as a module for the tests (bench/ is a directory of scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SIM_BENCH = Path(__file__).resolve().parents[1] / "bench" / "sim_bench.py"


def load_sim_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dopd_sim_bench", SIM_BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
