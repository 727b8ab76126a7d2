"""Every policy on the same trace, config and seed: what `dopd bench`, `dopd demo` and bench/sim_bench.py
run.

`run_policies` is one trace, one seed, the named policies: `oracle` calibrated with the simulator
(`search.oracle_calibration`), `static` and `aggregated-static` given dopd's mean GPU count unless
`static_gpus` says otherwise (the split searched offline, `search.best_static_layout`), `static-peak`
sized for the busiest minute and raised where it falls behind over the trace (`peak.fitted_static_peak`).

`run_suite_seed` is what the published benchmark runs for one trace and seed: dopd, and each baseline at
the best a competent user would get from it (docs/benchmarks/sim.md says how each is tuned):
- `oracle`: the fewest replicas meeting the target with perfect foresight (its calibration factors on the
  capacity model are reported: 1.0 means the model sizes exactly);
- `static-peak`: the fixed layout meeting the target at the busiest minute (raised where it falls behind
  over the span, `static_peak_row`);
- `aggregated-static`: the fewest colocated chunked-prefill replicas meeting it there (raised where they
  fall behind over the span), chunk size swept;
- `reactive`: HPA with its utilization target picked by grid search (`reactive_row`);
- `dynamo-sla`: Dynamo's planner with its adjustment interval and load predictor picked by grid search
  (`dynamo_row`).
The grids, the colocated layout's chunk size and the oracle's full calibration are searched on the
first seed; later seeds reuse the choices (`Tuning`; each seed's fixed layouts are sized for its own
busiest minute, as a user deploys for the peak they see), the oracle's factors moved there in 5% steps
to the fewest replicas that still meet the target. A configuration is better when it meets the target
with fewer GPU-hours, or, when none meets it, reaches more attainment.
Callers: cli.bench, cli.demo, bench/sim_bench.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from dopd_forecaster.traces import Trace
from dopd_operator.queueing import fewest_meeting
from dopd_sim.config import SimConfig
from dopd_sim.peak import (
    CHUNK_SIZES_TOKENS,
    RaisedLayout,
    aggregated_peak_layout,
    fitted_static_peak,
    raise_static_peak,
    static_peak_layout,
)
from dopd_sim.policies import POLICY_NAMES, make_policy
from dopd_sim.policies.aggregated import FixedAggregatedPolicy
from dopd_sim.policies.dopd import DopdPolicy
from dopd_sim.policies.dynamo_sla import DYNAMO_DEFAULT_INTERVAL_SECONDS, DynamoSlaPolicy, Predictor
from dopd_sim.policies.reactive import ReactivePolicy
from dopd_sim.run import RunResult, fixed_layout_span, simulate
from dopd_sim.search import best_static_layout, oracle_calibration

REACTIVE_TARGETS = (0.6, 0.7, 0.8, 0.9)
DYNAMO_CONFIGS: tuple[tuple[float, Predictor], ...] = (
    (DYNAMO_DEFAULT_INTERVAL_SECONDS, "constant"),
    (DYNAMO_DEFAULT_INTERVAL_SECONDS, "arima"),
    (60.0, "constant"),
    (60.0, "arima"),
)
SUITE_POLICIES = ("dopd", "oracle", "static-peak", "aggregated-static", "reactive", "dynamo-sla")


def run_policies(
    trace: Trace,
    config: SimConfig,
    policies: Sequence[str] = POLICY_NAMES,
    trace_name: str = "",
    rate_scale: float = 1.0,
    static_gpus: int | None = None,
    progress: bool = True,
) -> list[RunResult]:
    """Run each named policy once; dopd first, since static is sized from it."""
    order = sorted(policies, key=lambda name: 0 if name == "dopd" else 1)
    results: dict[str, RunResult] = {}
    bar = tqdm(order, desc="policies", unit="policy", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        layout: tuple[int, int] | None = None
        gpus = static_gpus
        if gpus is None and "dopd" in results:
            gpus = max(2, math.ceil(results["dopd"].summary.mean_gpus - 1e-9))
        if name == "static":
            layout = best_static_layout(trace, config, gpus)
        elif name == "aggregated-static" and gpus is not None:
            layout = (gpus, 0)
        if name == "static-peak":  # its fitting runs it: no second run
            results[name] = _named(fitted_static_peak(trace, config).result, trace_name, rate_scale)
            continue
        if name == "oracle":
            found = oracle_calibration(trace, config)
            found.result.summary.layout = _oracle_label(
                found.prefill_scale, found.decode_scale, found.calibrated
            )
            results[name] = _named(found.result, trace_name, rate_scale)
            continue
        policy = make_policy(name, trace, config, static_layout=layout)
        results[name] = simulate(trace, policy, config, trace_name=trace_name, rate_scale=rate_scale)
    return [results[name] for name in policies if name in results]


def _named(result: RunResult, trace_name: str, rate_scale: float) -> RunResult:
    result.summary.trace = trace_name or result.summary.trace
    result.summary.rate_scale = rate_scale
    return result


def _oracle_label(prefill: float, decode: float, calibrated: bool) -> str:
    label = f"capacity model x{prefill:.2f} P, x{decode:.2f} D"
    return label if calibrated else label + " (calibration failed)"


# ------------------------------------------------------------------------------------ the suite


@dataclass(frozen=True)
class Tuning:
    """Choices searched on a trace's first seed and reused on the others."""

    reactive_target: float
    dynamo_interval_s: float
    dynamo_predictor: Predictor
    aggregated_chunk_tokens: int  # each seed sizes its replicas at its own busiest minute, at this chunk
    oracle_scales: tuple[float, float]


def _better(a: RunResult, b: RunResult, target: float) -> bool:
    """Whether `a` beats `b`: meets the target with fewer GPU-hours, or reaches more attainment."""
    a_meets, b_meets = a.summary.slo_attainment >= target, b.summary.slo_attainment >= target
    if a_meets != b_meets:
        return a_meets
    if a_meets:
        return a.summary.gpu_hours < b.summary.gpu_hours
    return a.summary.slo_attainment > b.summary.slo_attainment


def _best_of(
    options: Sequence[Any], run: Callable[[Any], RunResult], target: float
) -> tuple[Any, RunResult, list[dict[str, Any]]]:
    """The best option by `_better`, its run, and every option's attainment and GPU-hours."""
    best: tuple[Any, RunResult] | None = None
    tried: list[dict[str, Any]] = []
    for option in options:
        result = run(option)
        tried.append(
            {
                "option": str(option),
                "attainment": result.summary.slo_attainment,
                "gpu_hours": result.summary.gpu_hours,
            }
        )
        if best is None or _better(result, best[1], target):
            best = (option, result)
    assert best is not None
    return best[0], best[1], tried


def _row(result: RunResult, name: str, setting: str, **extra: Any) -> dict[str, Any]:
    row = result.summary.to_json()
    row["policy"] = name
    row["setting"] = setting
    row.update(extra)
    return row


def dopd_row(
    trace: Trace, config: SimConfig, score_from_s: float = 0.0, score_until_s: float | None = None
) -> dict[str, Any]:
    """dopd's row of a suite seed (`run_suite_seed`), alone: the other rows do not depend on it."""
    policy = DopdPolicy()
    result = simulate(trace, policy, config, score_from_s=score_from_s, score_until_s=score_until_s)
    state = policy.state
    return _row(
        result,
        "dopd",
        f"corrections at the end: prefill x{state.prefill_correction:.2f}, decode x{state.decode_correction:.2f}",
    )


def static_peak_row(
    trace: Trace,
    config: SimConfig,
    score_from_s: float = 0.0,
    goal: float | None = None,
    score_until_s: float | None = None,
) -> dict[str, Any]:
    """static-peak's row of a suite seed (`run_suite_seed`), alone (`static_peak_run`)."""
    raised = static_peak_run(trace, config, score_from_s, goal, score_until_s)[1]
    return _row(raised.result, "static-peak", raised.setting)


def static_peak_run(
    trace: Trace,
    config: SimConfig,
    score_from_s: float = 0.0,
    goal: float | None = None,
    score_until_s: float | None = None,
) -> tuple[Trace, RaisedLayout, float | None]:
    """static-peak as a suite seed runs it: the fewest prefill and decode replicas that meet the target at
    the scored span's busiest minute (`peak.static_peak_layout`), run on the scored span alone (a fixed
    layout learns nothing from a past; with `score_until_s`, and on the load going on past it), and
    raised where it misses `goal` over the span (`peak.raise_static_peak`). Returns what it ran on
    (`run.fixed_layout_span`), the raised layout, and where its scoring ended in the time of what it ran
    on (None: that trace's end)."""
    ran, sized_on, until = fixed_layout_span(trace, score_from_s, score_until_s)
    return ran, raise_static_peak(ran, config, static_peak_layout(sized_on, config), goal, until), until


def aggregated_static_row(
    trace: Trace,
    config: SimConfig,
    score_from_s: float = 0.0,
    chunk_tokens: int | None = None,
    goal: float | None = None,
    score_until_s: float | None = None,
) -> tuple[dict[str, Any], int]:
    """aggregated-static's row of a suite seed (`run_suite_seed`), alone, and its chunk size: the fewest
    colocated replicas that meet the target at the scored span's busiest minute (as static-peak is sized
    for each seed's own), at `chunk_tokens`, or at the chunk that needs the fewest (None: the sweep, on a
    trace's first seed). A fixed layout learns nothing from a past: it runs on the scored span alone.
    Where that layout misses `goal` over the span (a peak longer than a minute builds a queue the
    minute alone does not show), it is raised, as a user who saw it fall behind would, to the fewest
    replicas, up to 1.5x, that meet it there; kept as sized where none does (the goal is out of a
    colocated layout's reach). With `score_until_s` the load goes on past the span
    (`run.fixed_layout_span`)."""
    ran, sized_on, until = fixed_layout_span(trace, score_from_s, score_until_s)
    chunks = CHUNK_SIZES_TOKENS if chunk_tokens is None else (chunk_tokens,)
    peak_replicas, chunk = aggregated_peak_layout(sized_on, config, chunks)
    chunked = dataclasses.replace(config, aggregated_token_budget=chunk)

    def run(replicas: int) -> RunResult:
        return simulate(ran, FixedAggregatedPolicy(replicas), chunked, score_until_s=until)

    runs = {peak_replicas: run(peak_replicas)}

    def meets(replicas: int) -> bool:
        if replicas not in runs:
            runs[replicas] = run(replicas)
        return goal is None or runs[replicas].summary.slo_attainment >= goal - 1e-12

    replicas = peak_replicas
    if not meets(peak_replicas):
        raised = fewest_meeting(meets, peak_replicas + 1, math.ceil(1.5 * peak_replicas), peak_replicas + 1)
        replicas = raised if meets(raised) else peak_replicas
    setting = f"{replicas} colocated, chunk {chunk} tokens"
    if replicas != peak_replicas:
        setting += f" (raised from the busiest minute's {peak_replicas}, which fell behind over the span)"
    return _row(runs[replicas], "aggregated-static", setting), chunk


def _replica_bounds(config: SimConfig) -> tuple[int, int]:
    """The bounds the autoscaling baselines scale each role within: the spec's, one range for both."""
    spec = config.spec
    return min(spec.prefill.min_replicas, spec.decode.min_replicas) or 1, max(
        spec.prefill.max_replicas, spec.decode.max_replicas
    )


def reactive_row(
    trace: Trace,
    config: SimConfig,
    score_from_s: float = 0.0,
    utilization_target: float | None = None,
    goal: float | None = None,
    score_until_s: float | None = None,
) -> tuple[dict[str, Any], float]:
    """reactive's row of a suite seed (`run_suite_seed`), alone, and its utilization target: HPA per role
    at `utilization_target`, or at the best of REACTIVE_TARGETS for `goal` (None: the sweep, on a trace's
    first seed; `_better`), within the spec's replica bounds."""
    lo, hi = _replica_bounds(config)
    targets = REACTIVE_TARGETS if utilization_target is None else (utilization_target,)

    def run(u: float) -> RunResult:
        policy = ReactivePolicy(
            min_replicas=lo, max_replicas=hi, prefill_utilization_target=u, decode_kv_target=u
        )
        return simulate(trace, policy, config, score_from_s=score_from_s, score_until_s=score_until_s)

    target = config.spec.slo.attainment_target if goal is None else goal
    chosen, result, tried = _best_of(targets, run, target)
    setting = f"utilization target {chosen:g}"
    return _row(result, "reactive", setting, grid=tried, utilization_target=chosen), float(chosen)


def dynamo_row(
    trace: Trace,
    config: SimConfig,
    score_from_s: float = 0.0,
    option: tuple[float, Predictor] | None = None,
    goal: float | None = None,
    score_until_s: float | None = None,
) -> tuple[dict[str, Any], tuple[float, Predictor]]:
    """dynamo-sla's row of a suite seed (`run_suite_seed`), alone, and its (adjustment interval,
    predictor): at `option`, or the best of DYNAMO_CONFIGS for `goal` (None: the sweep, on a trace's
    first seed; `_better`), within the spec's replica bounds."""
    lo, hi = _replica_bounds(config)
    options = DYNAMO_CONFIGS if option is None else (option,)

    def run(choice: tuple[float, Predictor]) -> RunResult:
        interval, predictor = choice
        policy = DynamoSlaPolicy(
            min_replicas=lo, max_replicas=hi, adjustment_interval_s=interval, predictor=predictor
        )
        return simulate(trace, policy, config, score_from_s=score_from_s, score_until_s=score_until_s)

    target = config.spec.slo.attainment_target if goal is None else goal
    (interval, predictor), result, tried = _best_of(options, run, target)
    setting = f"interval {interval:g} s, {predictor} predictor"
    row = _row(
        result, "dynamo-sla", setting, grid=tried, dynamo_interval_s=interval, dynamo_predictor=predictor
    )
    return row, (interval, predictor)


def run_suite_seed(
    trace: Trace,
    config: SimConfig,
    tuning: Tuning | None,
    policies: Sequence[str] = SUITE_POLICIES,
    oracle_iterations: int = 4,
    score_from_s: float = 0.0,
    score_until_s: float | None = None,
) -> tuple[list[dict[str, Any]], Tuning]:
    """One trace and seed through dopd and the tuned baselines (module docstring). With `tuning` None
    the grids are searched here and the choices returned for the other seeds. With `score_from_s` the
    trace's first seconds are the load's past (`run.simulate`): every policy runs through them and is
    scored, tuned, calibrated and sized on the rest alone; the fixed layouts (static-peak,
    aggregated-static), which learn nothing from a past, are sized for the rest's busiest minute and run
    on the rest alone (so a past busier than their layout leaves them no queue). With `score_until_s`
    the load goes on past the scored span: every policy runs on through it and is scored, calibrated
    and sized on the span alone (the fixed layouts for its busiest minute)."""
    rows: list[dict[str, Any]] = []
    if tuning is None:
        found = oracle_calibration(
            trace,
            config,
            iterations=oracle_iterations,
            score_from_s=score_from_s,
            score_until_s=score_until_s,
        )
    else:  # from the first seed's calibration, in 5% steps
        found = oracle_calibration(
            trace,
            config,
            iterations=0,
            start=tuning.oracle_scales,
            step=1.05,
            score_from_s=score_from_s,
            score_until_s=score_until_s,
        )
    target = found.target  # the spec's target, or that share of the ceiling where it is out of reach
    rows.append(
        _row(
            found.result,
            "oracle",
            _oracle_label(found.prefill_scale, found.decode_scale, found.calibrated),
            prefill_scale=found.prefill_scale,
            decode_scale=found.decode_scale,
            model_gpu_hours=found.model_result.summary.gpu_hours,
            model_attainment=found.model_result.summary.slo_attainment,
            model_prefix_cache_hit_rate=found.model_result.summary.prefix_cache_hit_rate,
            calibrated=found.calibrated,
            prefill_resized=found.prefill_resized,
            decode_resized=found.decode_resized,
            feasible=found.feasible,
            ceiling=found.ceiling,
            target=target,
        )
    )
    if "dopd" in policies:
        rows.append(dopd_row(trace, config, score_from_s, score_until_s))
    if "static-peak" in policies:
        rows.append(static_peak_row(trace, config, score_from_s, target, score_until_s))
    chunk = tuning.aggregated_chunk_tokens if tuning is not None else 0
    if "aggregated-static" in policies:
        row, chunk = aggregated_static_row(
            trace, config, score_from_s, chunk if tuning is not None else None, target, score_until_s
        )
        rows.append(row)
    reactive_target = tuning.reactive_target if tuning is not None else 0.0
    if "reactive" in policies:
        row, reactive_target = reactive_row(
            trace,
            config,
            score_from_s,
            reactive_target if tuning is not None else None,
            target,
            score_until_s,
        )
        rows.append(row)
    dynamo = (tuning.dynamo_interval_s, tuning.dynamo_predictor) if tuning is not None else DYNAMO_CONFIGS[0]
    if "dynamo-sla" in policies:
        row, dynamo = dynamo_row(
            trace, config, score_from_s, dynamo if tuning is not None else None, target, score_until_s
        )
        rows.append(row)
    chosen = Tuning(
        reactive_target=reactive_target,
        dynamo_interval_s=dynamo[0],
        dynamo_predictor=dynamo[1],
        aggregated_chunk_tokens=chunk,
        oracle_scales=(found.prefill_scale, found.decode_scale),
    )
    return rows, chosen
