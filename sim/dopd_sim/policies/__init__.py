"""Scaling policies behind one Protocol (`base.Policy`), one small module each, and their registry.

`make_policy(name, trace, config)` builds a fresh policy for one run (policies keep per-run state).
`static` needs a layout: pass `static_layout`, or let `search.best_static_layout` find one; `static-peak`
is the fixed layout sized for the trace's busiest minute and raised where it falls behind over the trace
(`peak.fitted_static_peak`).
"""

from __future__ import annotations

from collections.abc import Callable

from dopd_forecaster.traces import Trace
from dopd_sim.config import SimConfig
from dopd_sim.policies.aggregated import AggregatedPolicy, FixedAggregatedPolicy
from dopd_sim.policies.base import Layout, Policy, TickInput
from dopd_sim.policies.dopd import DopdPolicy
from dopd_sim.policies.dynamo_sla import DynamoSlaPolicy
from dopd_sim.policies.oracle import OraclePolicy
from dopd_sim.policies.reactive import ReactivePolicy
from dopd_sim.policies.static import StaticPolicy

POLICY_NAMES: tuple[str, ...] = (
    "dopd",
    "dopd-fifo",
    "static",
    "static-peak",
    "aggregated",
    "aggregated-static",
    "reactive",
    "dynamo-sla",
    "oracle",
)
FIXED_POLICIES: tuple[str, ...] = ("static", "static-peak", "aggregated-static")  # layouts that never change

__all__ = ["FIXED_POLICIES", "POLICY_NAMES", "Layout", "Policy", "TickInput", "make_policy"]


def make_policy(
    name: str, trace: Trace, config: SimConfig, static_layout: tuple[int, int] | None = None
) -> Policy:
    """A fresh policy by name (see POLICY_NAMES)."""
    spec = config.spec
    lo = min(spec.prefill.min_replicas, spec.decode.min_replicas) or 1
    hi = max(spec.prefill.max_replicas, spec.decode.max_replicas)
    builders: dict[str, Callable[[], Policy]] = {
        "dopd": DopdPolicy,
        "dopd-fifo": lambda: DopdPolicy(name="dopd-fifo", prefill_queue="fifo"),
        "aggregated": lambda: AggregatedPolicy(max_replicas=2 * hi),
        "reactive": lambda: ReactivePolicy(min_replicas=lo, max_replicas=hi),
        "dynamo-sla": lambda: DynamoSlaPolicy(min_replicas=lo, max_replicas=hi),
        "oracle": lambda: OraclePolicy(trace),
    }
    if name == "aggregated-static":
        if static_layout is None:
            from dopd_sim.search import default_static_gpus

            static_layout = (default_static_gpus(trace, config), 0)
        return FixedAggregatedPolicy(static_layout[0])
    if name == "static-peak":
        if static_layout is None:
            from dopd_sim.peak import fitted_static_peak

            static_layout = fitted_static_peak(trace, config).layout
        return StaticPolicy(*static_layout, name="static-peak")
    if name == "static":
        if static_layout is None:
            from dopd_sim.search import best_static_layout

            static_layout = best_static_layout(trace, config, gpus=None)
        return StaticPolicy(*static_layout)
    if name not in builders:
        raise ValueError(f"unknown policy {name!r}; use one of: {', '.join(POLICY_NAMES)}")
    return builders[name]()
