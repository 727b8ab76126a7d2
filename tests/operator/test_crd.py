"""The generated CRD: in sync with the API types, structural, and carrying the rules users rely on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dopd_operator.crd import build_crd, crd_yaml

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "dopd.io_disaggregatedmodels.yaml"


def test_committed_crd_matches_the_api_types() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `make crds` and commit the result"


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    problems = []
    for path, node in _walk(schema):
        if "type" not in node:
            problems.append(f"{path}: no type")
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            if forbidden in node:
                problems.append(f"{path}: {forbidden}")
        if "properties" in node and node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: properties with preserve-unknown-fields")
    assert problems == []


def test_pod_templates_preserve_unknown_fields() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for role in ("prefill", "decode"):
        template = spec["properties"][role]["properties"]["template"]
        assert template == {**template, "type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_cel_rules_cover_the_cross_field_checks() -> None:
    text = yaml.safe_dump(build_crd())
    assert "self.minReplicas <= self.maxReplicas" in text
    assert "self.min <= self.max" in text
    assert "self.scaling.gpuBudget" in text


def test_names_columns_and_subresources() -> None:
    crd = build_crd()["spec"]
    assert crd["names"]["shortNames"] == ["dm"] and "dopd" in crd["names"]["categories"]
    version = crd["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Prefill", "Decode", "Ratio", "GPUs", "Load-RPS", "SLO", "Mode", "Age"]


def test_nested_defaults_are_whole_objects() -> None:
    """An omitted spec.scaling must still get its defaults so CEL and the operator see them."""
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["scaling"]["default"]["scaleDown"]["stabilizationSeconds"] == 300
    assert spec["properties"]["profile"]["default"] == {"preset": "llama3-8b-h100"}
