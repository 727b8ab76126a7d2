"""Every policy on the same trace, config and seed: what `dopd bench` and bench/sim_bench.py run.

`oracle` is calibrated with the simulator (`search.calibrate_oracle`: the fewest replicas around the
capacity model's sizes, with perfect foresight, that still meet the attainment target). `static` and `aggregated-static` get the same GPU count as dopd's mean (so the comparison is at equal GPU-hours) unless
`static_gpus` is given, and its split is searched offline by simulation (`search.best_static_layout`).
Callers: cli.bench, cli.demo, bench/sim_bench.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tqdm import tqdm

from dopd_forecaster.traces import Trace
from dopd_sim.config import SimConfig
from dopd_sim.policies import POLICY_NAMES, make_policy
from dopd_sim.run import RunResult, simulate
from dopd_sim.search import best_static_layout, calibrate_oracle


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
        if name == "oracle":
            prefill_scale, decode_scale, calibrated = calibrate_oracle(trace, config)
            calibrated.summary.layout = f"capacity model x{prefill_scale:.2f} P, x{decode_scale:.2f} D"
            results[name] = _named(calibrated, trace_name, rate_scale)
            continue
        policy = make_policy(name, trace, config, static_layout=layout)
        results[name] = simulate(trace, policy, config, trace_name=trace_name, rate_scale=rate_scale)
    return [results[name] for name in policies if name in results]


def _named(result: RunResult, trace_name: str, rate_scale: float) -> RunResult:
    result.summary.trace = trace_name or result.summary.trace
    result.summary.rate_scale = rate_scale
    return result
