"""The API types: defaults users can omit, and rejections that name the field and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from dopd_operator.api import DisaggregatedModelSpec, ScalingMode
from dopd_operator.errors import SpecError
from dopd_operator.manifest import load_model, load_models, parse_model
from dopd_operator.profile import resolve_profile

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = DisaggregatedModelSpec.model_validate({"model": "m"})
    assert (spec.prefill.min_replicas, spec.prefill.max_replicas) == (1, 8)
    assert (spec.slo.ttft_seconds, spec.slo.tpot_seconds, spec.slo.percentile) == (1.5, 0.05, 90.0)
    assert spec.scaling.mode is ScalingMode.ACTIVE
    # scale-down is slow (HPA's 300 s window), scale-up immediate
    assert spec.scaling.scale_down.stabilization_seconds == 300
    assert spec.scaling.scale_up.stabilization_seconds == 0
    assert spec.scaling.gpu_budget is None
    assert spec.profile.preset == "llama3-8b-h100"


def test_partial_scale_down_keeps_its_own_window_default() -> None:
    spec = DisaggregatedModelSpec.model_validate(
        {"model": "m", "scaling": {"scaleDown": {"maxStepReplicas": 3}}}
    )
    assert spec.scaling.scale_down.stabilization_seconds == 300  # not the scale-up default of 0


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        pytest.param(
            {"model": "m", "prefill": {"minReplicas": 5, "maxReplicas": 2}},
            "spec.prefill",
            "minReplicas (5) must be <= maxReplicas (2)",
            id="min-above-max",
        ),
        pytest.param(
            {"model": "m", "scaling": {"ratioBand": {"min": 3, "max": 1}}},
            "spec.scaling.ratioBand",
            "ratioBand.min (3.0) must be <= ratioBand.max (1.0)",
            id="ratio-band-reversed",
        ),
        pytest.param(
            {
                "model": "m",
                "scaling": {"gpuBudget": 1},
                "prefill": {"minReplicas": 1},
                "decode": {"minReplicas": 1},
            },
            "spec",
            "gpuBudget (1) is smaller than the GPUs the minimum",
            id="budget-below-minimums",
        ),
        pytest.param({"model": "m", "prefil": {}}, "spec.prefil", "unknown field", id="unknown-field"),
        pytest.param(
            {"model": "m", "decode": {"maxReplicas": "many"}},
            "spec.decode.maxReplicas",
            "valid integer",
            id="wrong-type",
        ),
        pytest.param(
            {"model": "m", "profile": {}},
            "spec.profile",
            "exactly one of preset or inline",
            id="profile-neither",
        ),
        pytest.param(
            {"model": "m", "scaling": {"onMetricsUnknown": "Fallback"}},
            "spec.scaling",
            "needs fallbackReplicas",
            id="fallback-without-replicas",
        ),
        pytest.param(
            {"model": "m", "scaling": {"mode": "Sometimes"}},
            "spec.scaling.mode",
            "'Active', 'Advisory' or 'Paused'",
            id="bad-mode",
        ),
    ],
)
def test_invalid_specs_are_rejected_naming_the_field(spec: dict[str, object], field: str, words: str) -> None:
    doc = {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    with pytest.raises(SpecError) as caught:
        parse_model(doc)
    assert caught.value.field == field
    assert words in caught.value.message


def test_a_deployment_is_not_a_disaggregated_model() -> None:
    with pytest.raises(
        SpecError, match=re.escape("apps/v1/Deployment, not a dopd.io/v1alpha1 DisaggregatedModel")
    ):
        parse_model({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}})


def test_unreadable_and_empty_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read file"):
        load_model(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="empty"):
        load_model(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_model(broken)


def test_pydantic_and_k8s_shapes_round_trip() -> None:
    spec = DisaggregatedModelSpec.model_validate({"model": "m", "scaling": {"gpuBudget": 16}})
    again = DisaggregatedModelSpec.model_validate(spec.to_k8s())
    assert again == spec
    assert spec.to_k8s()["scaling"]["gpuBudget"] == 16  # camelCase on the wire


def test_every_field_has_a_description() -> None:
    from pydantic import BaseModel

    from dopd_operator import api

    missing = [
        f"{cls.__name__}.{name}"
        for cls in vars(api).values()
        if isinstance(cls, type) and issubclass(cls, api.ApiModel) and cls is not api.ApiModel
        for name, field in cls.model_fields.items()
        if issubclass(cls, BaseModel) and not field.description and name not in {"metadata", "spec", "status"}
    ]
    assert missing == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_loads_and_resolves_its_profile(path: Path) -> None:
    models = load_models(path)
    assert models
    for model in models:
        profile = resolve_profile(model.spec.profile)
        assert profile.kv_capacity_tokens > 0


def test_examples_cover_all_three_engines() -> None:
    engines = {m.spec.engine.value for p in EXAMPLES for m in load_models(p)}
    assert engines == {"dopd", "vllm", "sglang"}


def test_invalid_spec_raises_pydantic_error_in_python_too() -> None:
    with pytest.raises(ValidationError):
        DisaggregatedModelSpec.model_validate({"model": ""})
