"""One recorder per engine (dopd, vllm, sglang) and the label scheme they share, from the model's spec.

Callers: `core.Emulation`, tests.
"""

from __future__ import annotations

from dopd_emulator.engines.base import EngineRecorder, LabelScheme
from dopd_emulator.engines.dopd import DopdRecorder
from dopd_emulator.engines.sglang import SglangRecorder
from dopd_emulator.engines.vllm import VllmRecorder
from dopd_operator.api import DisaggregatedModelSpec, Engine
from dopd_sim.stepping import SteppedSimulator

__all__ = ["EngineRecorder", "LabelScheme", "label_scheme", "make_recorder"]

DEFAULT_ROLE_LABEL = {Engine.DOPD: "role", Engine.VLLM: "role", Engine.SGLANG: "engine_type"}
MODEL_LABEL = {Engine.DOPD: "model", Engine.VLLM: "model_name", Engine.SGLANG: "model_name"}


def label_scheme(spec: DisaggregatedModelSpec, namespace: str) -> LabelScheme:
    """Labels as the presets select them: the namespace label, the role label (the spec's or the
    engine's default), the engine's model label = spec.model, and any other selector label as is.
    A selector the emulated series could never match is an error, not an empty result."""
    engine = spec.engine
    metrics = spec.metrics
    role_label = metrics.role_label or DEFAULT_ROLE_LABEL[engine]
    model_label = MODEL_LABEL[engine]
    extra = dict(metrics.selector)
    if model_label in extra:
        if extra[model_label] != spec.model:
            raise ValueError(
                f"spec.metrics.selector asks for {model_label}={extra[model_label]!r} but the model is "
                f"{spec.model!r}: the emulated series would never match"
            )
        del extra[model_label]
    for reserved in (metrics.namespace_label, role_label, "pod"):
        if reserved in extra:
            raise ValueError(
                f"spec.metrics.selector must not set {reserved!r}: the emulator sets it per series"
            )
    return LabelScheme(metrics.namespace_label, namespace, role_label, spec.model, extra)


def make_recorder(
    spec: DisaggregatedModelSpec,
    namespace: str,
    sim: SteppedSimulator,
    router_pod: str,
    vllm_max_model_len: int = 8192,
    vllm_legacy_names: bool = False,
) -> EngineRecorder:
    scheme = label_scheme(spec, namespace)
    if spec.engine == Engine.DOPD:
        return DopdRecorder(sim, scheme, router_pod=router_pod)
    if spec.engine == Engine.VLLM:
        return VllmRecorder(sim, scheme, vllm_max_model_len, vllm_legacy_names)
    return SglangRecorder(sim, scheme)
