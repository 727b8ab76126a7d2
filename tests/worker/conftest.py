"""Fixtures for the worker tests: a tiny safetensors checkpoint written by the test itself, and real
worker/router subprocesses on 127.0.0.1 free ports, always killed in finalizers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import Cluster


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama checkpoint (config.json + model.safetensors) with weights from a fixed seed."""
    import torch

    from dopd_worker.config import PRESETS
    from dopd_worker.model import build_model, save_checkpoint

    out = tmp_path_factory.mktemp("tiny-llama")
    model = build_model(PRESETS["tiny"], torch.float32, torch.device("cpu"), seed=1234)
    save_checkpoint(model, out)
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.kill_all()
