"""Specs that pass the schema but can never work are explained, never crash the operator."""

from __future__ import annotations

from typing import Any

import pytest

from dopd_operator.controller.validation import check

BASE: dict[str, Any] = {"model": "m", "profile": {"preset": "llama3-8b-h100"}}


def _with(**overrides: Any) -> dict[str, Any]:
    return {**BASE, **overrides}


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        pytest.param(
            _with(profile={"preset": "llama9-h900"}),
            "spec.profile.preset",
            "unknown profile preset",
            id="unknown-preset",
        ),
        pytest.param(
            _with(prefill={"template": {"spec": {"containers": []}}}),
            "spec.prefill.template.spec.containers",
            "no containers",
            id="template-without-containers",
        ),
        pytest.param(
            _with(slo={"tpotSeconds": 0.001}),
            "spec.slo.tpotSeconds",
            "single sequence already takes",
            id="tpot-unreachable-at-batch-1",
        ),
        pytest.param({"model": ""}, "spec.model", "at least 1 character", id="schema-error-names-the-field"),
        pytest.param(
            _with(metrics={"selector": {"__name__": "x"}}),
            "spec.metrics.selector",
            "reserved by Prometheus",
            id="reserved-label-in-selector",
        ),
    ],
)
def test_each_problem_names_its_field(spec: dict[str, Any], field: str, words: str) -> None:
    _, problems = check(spec, "m")
    assert problems, "expected a problem"
    assert problems[0].field == field
    assert words in problems[0].message


def test_a_working_spec_has_no_problems() -> None:
    spec, problems = check(BASE, "m")
    assert spec is not None and problems == []
