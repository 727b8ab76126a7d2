"""Read DisaggregatedModel manifests from files, turning every validation failure into a SpecError
that names the field and the fix. Used by the CLI, the simulator and the example tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dopd_operator.api import API_VERSION, KIND, DisaggregatedModel
from dopd_operator.errors import SpecError

_FIXES = {
    "extra_forbidden": "unknown field: remove it or check its spelling (fields are camelCase)",
    "missing": "required field is missing",
}


def describe_validation_error(exc: ValidationError, prefix: str = "") -> SpecError:
    """The first error of a pydantic ValidationError as a SpecError (field path in camelCase)."""
    errors = exc.errors()
    first = errors[0]
    field = (
        ".".join(str(part) for part in (prefix.split(".") if prefix else []) + list(first["loc"]))
        or "(document)"
    )
    message = _FIXES.get(first["type"], first["msg"].removeprefix("Value error, "))
    if first["type"] not in _FIXES and "input" in first and not isinstance(first["input"], dict | list):
        message += f" (got {first['input']!r})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return SpecError(field, message)


def parse_model(document: Any, source: str = "<input>") -> DisaggregatedModel:
    """Validate one YAML document as a DisaggregatedModel."""
    if not isinstance(document, dict):
        raise SpecError(source, "not a YAML mapping; expected a DisaggregatedModel manifest")
    if document.get("apiVersion") != API_VERSION or document.get("kind") != KIND:
        raise SpecError(
            "kind",
            f"{source} is a {document.get('apiVersion', '?')}/{document.get('kind', '?')}, "
            f"not a {API_VERSION} {KIND}",
        )
    try:
        return DisaggregatedModel.model_validate(document)
    except ValidationError as exc:
        raise describe_validation_error(exc) from None


def load_models(path: str | Path) -> list[DisaggregatedModel]:
    """Every DisaggregatedModel in a (multi-document) YAML file; SpecError if there is none."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(str(p), f"cannot read file: {exc.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(str(p), f"not valid YAML: {exc}") from None
    if not documents:
        raise SpecError(str(p), "the file is empty; expected a DisaggregatedModel manifest")
    models = [parse_model(d, str(p)) for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if not models:
        return [parse_model(documents[0], str(p))]
    return models


def load_model(path: str | Path) -> DisaggregatedModel:
    """The first DisaggregatedModel in a file."""
    return load_models(path)[0]
