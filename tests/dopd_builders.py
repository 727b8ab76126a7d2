"""Shared builders for the operator tests (and the planner benchmark): specs and observations from small
dicts, validated for real; a rising reuse curve and Mooncake-like capacity models for the prefix cache."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from dopd_operator.api import DisaggregatedModelSpec, ReadySince, SloSpec
from dopd_operator.capacity import CapacityModel, Workload
from dopd_operator.planner_types import Observation, PlannerState, RoleObservation
from dopd_operator.prefix_curve import PrefixCacheCurve
from dopd_operator.profile_presets import PRESETS

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)

# The router's reuse distances (`Observation.prefix_reuse_share_within`): a share of prompt-block tokens
# that keeps growing with the cache size, from 5% at 64k tokens to 70% at 268M.
RISING_REUSE = tuple((float(2 ** (16 + i / 2)), 0.05 + 0.65 * i / 24) for i in range(25))


def long_prompts(
    rate_rps: float,
    curve: PrefixCacheCurve | None,
    hit_rate: float,
    mix: tuple[tuple[float, float], ...] | None = None,
) -> CapacityModel:
    """Mooncake-like prompts (mean 15k tokens, P90 30k) on the llama3-8b-h100 profile: at the SLO's 1.5 s
    many are feasible only when much of them is cached; the hits spread evenly, or falling as `mix`."""
    workload = Workload(
        rate_rps,
        15_000,
        30_000,
        200,
        400,
        prefix_cache_hit_rate=hit_rate,
        prefix_cache_curve=curve,
        prefix_hit_mix=mix,
    )
    return CapacityModel(PRESETS["llama3-8b-h100"], SloSpec(), workload)


def make_spec(**overrides: Any) -> DisaggregatedModelSpec:
    """A spec with wide bounds and no smoothing unless overridden (camelCase keys, as in YAML)."""
    base: dict[str, Any] = {
        "model": "m",
        "prefill": {"minReplicas": 1, "maxReplicas": 64},
        "decode": {"minReplicas": 1, "maxReplicas": 64},
        "profile": {"preset": "llama3-8b-h100"},
        "scaling": {
            "scaleUp": {"maxStepReplicas": 1000, "stabilizationSeconds": 0},
            "scaleDown": {"maxStepReplicas": 1000, "maxStepPercent": 100, "stabilizationSeconds": 0},
            "tolerance": 0,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return DisaggregatedModelSpec.model_validate(base)


def make_obs(
    rate: float | None = 10.0,
    isl: float | None = 1000.0,
    osl: float | None = 200.0,
    prefill: int = 1,
    decode: int = 1,
    **extra: Any,
) -> Observation:
    return Observation(
        arrival_rate_rps=rate,
        shed_rate_rps=extra.pop("shed_rate_rps", None if rate is None else 0.0),
        input_tokens_mean=isl,
        input_tokens_p90=extra.pop("isl_p90", None if isl is None else isl * 2),
        output_tokens_mean=osl,
        output_tokens_p90=extra.pop("osl_p90", None if osl is None else osl * 2),
        prefill=extra.pop("prefill_obs", RoleObservation(current=prefill, ready=prefill)),
        decode=extra.pop("decode_obs", RoleObservation(current=decode, ready=decode)),
        latency_percentile=extra.pop(
            "latency_percentile",
            90.0 if "ttft_seconds" in extra or "tpot_seconds" in extra else None,
        ),
        # no sequence waited for a decode slot unless said: the step's mean is the gaps'
        decode_step_mean_seconds=extra.pop("decode_step_mean_seconds", extra.get("tpot_mean_seconds")),
        **extra,
    )


def fresh_ticks(observation: Observation) -> Iterator[Observation]:
    """The observation as consecutive ticks read it, for timing decisions: the same load, its token
    means a millionth apart each time (a real window's means never repeat), so no tick finds the last
    one's length fit memoized (`LengthDistribution.from_mean_p90`). Unknown lengths stay unknown."""
    isl, osl = observation.input_tokens_mean, observation.output_tokens_mean
    for i in itertools.count(1):
        if isl is None or osl is None:
            yield observation
            continue
        moved = 1.0 + 1e-6 * i
        yield observation.model_copy(
            update={"input_tokens_mean": isl * moved, "output_tokens_mean": osl * moved}
        )


def settled_state(obs: Observation, **fields: Any) -> PlannerState:
    """A planner state that has seen `obs`'s Ready counts for an hour before T0, so its corrections learn
    from the latencies (a fresh state holds them for one metrics window)."""
    since = T0 - timedelta(hours=1)
    return PlannerState(
        prefill_ready=ReadySince(count=obs.prefill.ready, since=since),
        decode_ready=ReadySince(count=obs.decode.ready, since=since),
        **fields,
    )
