"""Generate the DisaggregatedModel CRD from the pydantic API types.

Pydantic emits JSON Schema (draft 2020-12 with $refs); Kubernetes wants a *structural* OpenAPI v3
schema: every node typed, no $ref, no anyOf-with-null, boolean exclusive bounds, defaults given as
whole objects. This module does that conversion, so the API types stay the single source of truth and
`crds/dopd.io_disaggregatedmodels.yaml` is never edited by hand (a test fails on drift).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from dopd_operator import api

_DROP_KEYS = {"title", "additionalProperties"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Prefill",
        "type": "string",
        "jsonPath": ".status.prefill.summary",
        "description": "Prefill ready/desired",
    },
    {
        "name": "Decode",
        "type": "string",
        "jsonPath": ".status.decode.summary",
        "description": "Decode ready/desired",
    },
    {
        "name": "Ratio",
        "type": "string",
        "jsonPath": ".status.ratio",
        "description": "Decided prefill:decode ratio",
    },
    {
        "name": "GPUs",
        "type": "integer",
        "jsonPath": ".status.gpus",
        "description": "GPUs of the decided layout",
    },
    {
        "name": "Load-RPS",
        "type": "number",
        "jsonPath": ".status.load.arrivalRateRps",
        "description": "Observed arrival rate, requests per second",
    },
    {
        "name": "SLO",
        "type": "string",
        "jsonPath": ".status.sloAttainment.summary",
        "description": "SLO attainment",
    },
    {
        "name": "Mode",
        "type": "string",
        "jsonPath": ".spec.scaling.mode",
        "description": "Active, Advisory or Paused",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"cannot make a structural schema from anyOf {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "absent") is None:
            del rest["default"]
        return _structural({**_structural(options[0], defs), **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "default" and value is None:
            continue
        else:
            out[key] = _structural(value, defs)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("properties", None)
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _object_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give every defaulted sub-object its whole default, so the API server fills nested defaults.

    Without this, an omitted `spec.scaling` would stay absent and CEL rules that read
    `self.scaling.gpuBudget` would see no defaults at all.
    """
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        annotation = field.annotation
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            prop["default"] = value.to_k8s() if isinstance(value, api.ApiModel) else value
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _object_defaults(annotation, prop)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    _object_defaults(model, schema)
    return schema


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict, ready for YAML."""
    spec_schema = openapi_schema(api.DisaggregatedModelSpec)
    status_schema = openapi_schema(api.DisaggregatedModelStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "dopd", "app.kubernetes.io/part-of": "dopd"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": api.DisaggregatedModel.__doc__,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `dopd crds` from operator/dopd_operator/api.py. Do not edit: run `make crds`.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
