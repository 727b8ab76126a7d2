"""`dopd plan`, `dopd crds` and `dopd profiles`: the planner and the API from the command line."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.crd import crd_yaml
from dopd_operator.errors import SpecError
from dopd_operator.manifest import load_model
from dopd_operator.planner import plan as run_planner
from dopd_operator.planner_load import lead_time_seconds
from dopd_operator.planner_types import Decision, LoadForecast, Observation, PlannerState, RoleObservation


def _positive(name: str) -> Any:
    def check(_: click.Context, __: click.Parameter, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise click.BadParameter(f"must be >= 0, got {value}", param_hint=name)
        return value

    return check


def _hit_mix(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[float, float], ...] | None:
    """`--prefix-hit-mix CACHED:SHARE ...` as the planner's pairs; a bad pair names the option and the fix."""
    if not values:
        return None
    pairs: list[tuple[float, float]] = []
    for value in values:
        cached, _colon, share = value.partition(":")
        try:
            pair = (float(cached), float(share))
        except ValueError:
            pair = (math.nan, math.nan)
        if not (0.0 < pair[0] <= 1.0 and 0.0 < pair[1] <= 1.0):
            raise click.BadParameter(
                f"{value!r} is not CACHED:SHARE with both in (0, 1], e.g. 0.95:0.6",
                param_hint="--prefix-hit-mix",
            )
        pairs.append(pair)
    if sum(share for _, share in pairs) > 1.0 + 1e-9:
        raise click.BadParameter("the SHAREs add up to more than 1", param_hint="--prefix-hit-mix")
    return tuple(pairs)


@click.command()
@click.option(
    "-f",
    "--filename",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="DisaggregatedModel manifest.",
)
@click.option(
    "--rate", type=float, required=True, callback=_positive("--rate"), help="Arrival rate, requests/s."
)
@click.option("--isl", type=float, required=True, callback=_positive("--isl"), help="Mean prompt tokens.")
@click.option("--osl", type=float, required=True, callback=_positive("--osl"), help="Mean output tokens.")
@click.option(
    "--isl-p90", type=float, callback=_positive("--isl-p90"), help="P90 prompt tokens (default: --isl)."
)
@click.option(
    "--osl-p90", type=float, callback=_positive("--osl-p90"), help="P90 output tokens (default: --osl)."
)
@click.option(
    "--prefix-cache-hit-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of prompt tokens served from the prefix cache (vLLM prefix_cache_hits/queries).",
)
@click.option(
    "--prefix-hit-mix",
    "hit_mix",
    multiple=True,
    callback=_hit_mix,
    metavar="CACHED:SHARE",
    help="How the hits fall on prompts: SHARE of the prompt tokens are in prompts that find CACHED of "
    "themselves in the prefix cache (e.g. 0.95:0.6); repeat for several, the rest find nothing (what "
    "dopd's router measures; default: every prompt hits --prefix-cache-hit-rate).",
)
@click.option(
    "--forecast-rate",
    type=float,
    callback=_positive("--forecast-rate"),
    help="Upper-quantile forecast rate at the lead time, requests/s.",
)
@click.option(
    "--current-prefill", type=click.IntRange(min=0), help="Current prefill replicas (default: minReplicas)."
)
@click.option(
    "--current-decode", type=click.IntRange(min=0), help="Current decode replicas (default: minReplicas)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan(
    path: Path,
    rate: float,
    isl: float,
    osl: float,
    isl_p90: float | None,
    osl_p90: float | None,
    prefix_cache_hit_rate: float,
    hit_mix: tuple[tuple[float, float], ...] | None,
    forecast_rate: float | None,
    current_prefill: int | None,
    current_decode: int | None,
    as_json: bool,
) -> None:
    """Print the planner's decision for a DisaggregatedModel at a given load.

    Without --current-prefill/--current-decode this shows the steady-state target for the load: every
    safety rule applies except the per-decision step limits and the tolerance, which only make sense
    relative to a current layout. Give the current replicas to see the next single step instead.
    """
    try:
        model = load_model(path)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    spec = model.spec
    if current_prefill is None and current_decode is None:
        spec = _steady_state(spec)
    prefill_now = spec.prefill.min_replicas if current_prefill is None else current_prefill
    decode_now = spec.decode.min_replicas if current_decode is None else current_decode
    observation = Observation(
        arrival_rate_rps=rate,
        input_tokens_mean=isl,
        input_tokens_p90=isl_p90 if isl_p90 is not None else isl,
        output_tokens_mean=osl,
        output_tokens_p90=osl_p90 if osl_p90 is not None else osl,
        prefix_cache_hit_rate=prefix_cache_hit_rate,
        prefix_hit_mix=hit_mix,
        prefill=RoleObservation(current=prefill_now, ready=prefill_now),
        decode=RoleObservation(current=decode_now, ready=decode_now),
    )
    forecast = None
    if forecast_rate is not None:
        lead = lead_time_seconds(spec, observation)
        forecast = LoadForecast(
            model="given",
            horizon_seconds=lead,
            quantile=spec.forecast.quantile,
            arrival_rate_rps_mean=forecast_rate,
            arrival_rate_rps_upper=forecast_rate,
        )
    try:
        decision = run_planner(spec, observation, forecast, PlannerState(), datetime.now(UTC))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(decision_json(decision), indent=2))
    else:
        click.echo(format_decision(model.metadata.name, decision))


def _steady_state(spec: DisaggregatedModelSpec) -> DisaggregatedModelSpec:
    scaling = spec.scaling.model_copy(
        update={
            "tolerance": 0.0,
            "scale_up": spec.scaling.scale_up.model_copy(update={"max_step_replicas": 1000}),
            "scale_down": spec.scaling.scale_down.model_copy(update={"max_step_replicas": 1000}),
        }
    )
    return spec.model_copy(update={"scaling": scaling})


def decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "prefill": decision.prefill,
        "decode": decision.decode,
        "ratio": decision.ratio,
        "gpus": decision.gpus,
        "raw": {"prefill": decision.raw_prefill, "decode": decision.raw_decode},
        "reasons": list(decision.reasons),
        "clamps": [c.model_dump() for c in decision.clamps],
        "capacity": decision.capacity.model_dump() if decision.capacity else None,
        "metricsHealthy": decision.metrics_healthy,
        "scalingLimited": decision.scaling_limited,
        "capacityBlocked": decision.capacity_blocked,
    }


def format_decision(name: str, decision: Decision) -> str:
    ratio = f"{decision.ratio:.2f}" if decision.ratio is not None else "n/a"
    lines = [
        f"{name}: {decision.prefill} prefill + {decision.decode} decode = {decision.gpus} GPUs (P/D {ratio})",
        "why:",
        *(f"  - {r}" for r in decision.reasons),
    ]
    if decision.clamps:
        lines.append("clamps:")
        lines += [f"  - {c.stage} {c.role}: {c.before} -> {c.after} ({c.reason})" for c in decision.clamps]
    return "\n".join(lines)


@click.command()
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file instead."
)
def crds(output: Path | None) -> None:
    """Print the DisaggregatedModel CRD generated from the API types."""
    text = crd_yaml()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def profiles(as_json: bool) -> None:
    """List the built-in per-replica performance profiles."""
    from dopd_operator.profile_presets import PRESETS

    if as_json:
        click.echo(json.dumps({n: p.model_dump(by_alias=True) for n, p in PRESETS.items()}, indent=2))
        return
    for name, profile in sorted(PRESETS.items()):
        click.echo(f"{name:24} {profile.description}")
