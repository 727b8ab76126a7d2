"""Semantic checks the CRD schema cannot make: a spec that passes the API server's schema and CEL rules
but can never work. Pure: (raw spec, name) -> the parsed spec or the list of every problem, each a
SpecError naming the field and the fix.

The controller turns problems into `SpecValid=False` with the first one as the message, a Warning Event,
and no further action for that model (its Deployments are left as they are); it never raises into
Kopf's retry loop for them, so one bad model cannot crash-loop the operator or delay the others.
Callers: `controller.handlers`, the property test that throws random specs at a running operator.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.controller.children import children
from dopd_operator.errors import SpecError
from dopd_operator.manifest import describe_validation_error
from dopd_operator.metrics.presets import check_metrics_spec
from dopd_operator.profile import resolve_profile


def parse_spec(raw: Any) -> DisaggregatedModelSpec:
    """The spec as the API types read it; a SpecError naming the first bad field otherwise."""
    try:
        return DisaggregatedModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise describe_validation_error(exc, prefix="spec") from None


def problems(spec: DisaggregatedModelSpec, model_name: str) -> list[SpecError]:
    """Every semantic problem of a schema-valid spec (empty when it can work)."""
    found: list[SpecError] = []
    try:
        profile = resolve_profile(spec.profile)
    except SpecError as exc:
        found.append(exc)
    else:
        batch_of_one = profile.decode.a_seconds + profile.decode.c_seconds_per_sequence
        if batch_of_one > spec.slo.tpot_seconds:
            found.append(
                SpecError(
                    "spec.slo.tpotSeconds",
                    f"is {spec.slo.tpot_seconds:g}s but one decode step of a single sequence already takes "
                    f"{batch_of_one:g}s with profile {profile.name!r}: raise tpotSeconds or use a faster "
                    "profile (more GPUs per replica)",
                )
            )
        if profile.prefill.a_seconds > spec.slo.ttft_seconds:
            found.append(
                SpecError(
                    "spec.slo.ttftSeconds",
                    f"is {spec.slo.ttft_seconds:g}s but the profile's fixed prefill cost alone is "
                    f"{profile.prefill.a_seconds:g}s: raise ttftSeconds or fix the profile",
                )
            )
    try:
        children(spec, model_name, "validation", "validation")
    except SpecError as exc:
        found.append(exc)
    try:
        check_metrics_spec(spec)  # label names the engine preset cannot query with
    except SpecError as exc:
        found.append(exc)
    return found


def check(raw_spec: Any, model_name: str) -> tuple[DisaggregatedModelSpec | None, list[SpecError]]:
    """Parse and check; (spec, []) when the model can work, (spec or None, problems) otherwise."""
    try:
        spec = parse_spec(raw_spec)
    except SpecError as exc:
        return None, [exc]
    return spec, problems(spec, model_name)
