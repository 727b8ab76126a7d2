"""Helpers for the simulator tests: tiny hand-checkable profiles, traces and scripted policies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dopd_forecaster.traces import Trace
from dopd_operator.api import DecodeCoefficients, PrefillCoefficients
from dopd_operator.profile import PerformanceProfile
from dopd_sim.config import SimConfig, default_spec
from dopd_sim.policies.base import Architecture, Layout, TickInput


def make_trace(arrival_s: list[float], input_tokens: list[int], output_tokens: list[int]) -> Trace:
    return Trace(
        np.asarray(arrival_s, dtype=np.float64),
        np.asarray(input_tokens, dtype=np.int64),
        np.asarray(output_tokens, dtype=np.int64),
        "test",
        "canonical",
    )


def toy_profile(
    prefill_a: float = 0.1,
    prefill_b: float = 0.0,
    decode_a: float = 0.01,
    decode_b: float = 0.0,
    kv_capacity_tokens: int = 1_000_000,
    max_batch_size: int = 256,
) -> PerformanceProfile:
    return PerformanceProfile(
        name="toy",
        prefill=PrefillCoefficients(
            a_seconds=prefill_a, b_seconds_per_token=prefill_b, c_seconds_per_token2=0.0
        ),
        decode=DecodeCoefficients(
            a_seconds=decode_a, b_seconds_per_context_token=decode_b, c_seconds_per_sequence=0.0
        ),
        kv_capacity_tokens=kv_capacity_tokens,
        max_batch_size=max_batch_size,
        kv_bytes_per_token=0,
    )


def toy_config(profile: PerformanceProfile, startup_seconds: float = 0.0, **kwargs: object) -> SimConfig:
    spec = default_spec().model_copy(deep=True)
    spec.prefill.startup_seconds = startup_seconds
    spec.decode.startup_seconds = startup_seconds
    return SimConfig(spec=spec, profile=profile, **kwargs)  # type: ignore[arg-type]


@dataclass
class ScriptedPolicy:
    """Starts at `initial`; from each time in `schedule` on, asks for that layout."""

    initial: Layout
    schedule: list[tuple[float, Layout]] = field(default_factory=list)
    name: str = "scripted"
    architecture: Architecture = "disaggregated"

    def initial_layout(self, tick: TickInput) -> Layout:
        return self.initial

    def decide(self, tick: TickInput) -> Layout:
        layout = self.initial
        for start_s, wanted in self.schedule:
            if tick.now_s >= start_s:
                layout = wanted
        return layout
