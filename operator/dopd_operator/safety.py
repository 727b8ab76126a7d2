"""The safety layer: small pure stages that turn the capacity model's answer into a safe target.

Each stage takes a `Layout` (prefill, decode replicas) and returns one, appending a `Clamp` for every
role it changed, so `kubectl describe dm` can say exactly which rule moved the answer and why. Order
(see `planner.plan`): bounds -> ratio band -> GPU budget -> pending pods -> stabilization -> the
saturated decode pool's hold -> step limits -> tolerance -> bounds and budget again (hard limits win
over smoothing). Stabilization comes before the step limits as in the HPA
(`normalizeDesiredReplicasWithBehaviors`): the window smooths the recommendation, the rate limit then
bounds the move.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple

from dopd_operator.api import ROLES, DisaggregatedModelSpec, Recommendation, Role
from dopd_operator.planner_types import Clamp, Observation


class Layout(NamedTuple):
    prefill: int
    decode: int

    def get(self, role: Role) -> int:
        return self.prefill if role == "prefill" else self.decode

    def replace(self, role: Role, value: int) -> Layout:
        return self._replace(prefill=value) if role == "prefill" else self._replace(decode=value)


def gpus(layout: Layout, spec: DisaggregatedModelSpec) -> int:
    return layout.prefill * spec.prefill.gpus_per_replica + layout.decode * spec.decode.gpus_per_replica


def _record(clamps: list[Clamp] | None, stage: str, role: Role, before: int, after: int, reason: str) -> None:
    if clamps is not None and before != after:
        clamps.append(Clamp(stage=stage, role=role, before=before, after=after, reason=reason))


def clamp_bounds(layout: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp] | None) -> Layout:
    """minReplicas <= replicas <= maxReplicas per role."""
    out = layout
    for role in ROLES:
        rs = spec.role(role)
        value = layout.get(role)
        if value < rs.min_replicas:
            _record(
                clamps,
                "TooFewReplicas",
                role,
                value,
                rs.min_replicas,
                f"{role}.minReplicas is {rs.min_replicas}",
            )
            out = out.replace(role, rs.min_replicas)
        elif value > rs.max_replicas:
            _record(
                clamps,
                "TooManyReplicas",
                role,
                value,
                rs.max_replicas,
                f"{role}.maxReplicas is {rs.max_replicas}",
            )
            out = out.replace(role, rs.max_replicas)
    return out


def apply_ratio_band(layout: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp] | None) -> Layout:
    """Keep prefill/decode inside the ratio band by raising the short side (never by cutting capacity).

    Raising one side can push the ratio out the other end when the band is narrow (min = max = 1.5
    needs 3:2, not 2:1 or 2:2), so the raises repeat until both hold or a maximum stops them.
    """
    band = spec.scaling.ratio_band
    p, d = layout
    for _ in range(64):
        before = (p, d)
        if d > 0 and p / d < band.min - 1e-9:
            p = max(p, min(math.ceil(band.min * d - 1e-9), spec.prefill.max_replicas))
        if p > 0 and (d == 0 or p / d > band.max + 1e-9):
            d = max(d, min(math.ceil(p / band.max - 1e-9), spec.decode.max_replicas))
        if (p, d) == before:
            break
    why = f"P/D {layout.prefill}/{layout.decode} is outside ratioBand [{band.min:g}, {band.max:g}]"
    _record(clamps, "RatioBand", "prefill", layout.prefill, p, why)
    _record(clamps, "RatioBand", "decode", layout.decode, d, why)
    return Layout(p, d)


def fit_budget(
    wanted: Layout,
    layout_at: Callable[[float], Layout],
    rate_rps: float,
    spec: DisaggregatedModelSpec,
    clamps: list[Clamp] | None,
) -> tuple[Layout, float]:
    """The layout on the GPU-budget frontier that sustains the highest rate, and that rate.

    `wanted` is `layout_at(rate_rps)`, already computed by the caller. `layout_at(rate)` is the shaped
    (bounded, ratio-banded) requirement at a rate; it is monotone, so
    the highest rate whose requirement fits the budget is found by bisection. That maximizes
    min(mu_P(N_P), mu_D(N_D)) subject to the budget: producer and consumer balanced. GPUs left over
    go to the role that binds first above that rate.
    """
    budget = spec.scaling.gpu_budget
    if budget is None or gpus(wanted, spec) <= budget:
        return wanted, rate_rps
    low, high = 0.0, rate_rps
    for _ in range(40):
        mid = (low + high) / 2
        if gpus(layout_at(mid), spec) <= budget:
            low = mid
        else:
            high = mid
    best = layout_at(low)
    if gpus(best, spec) > budget:  # even the minimums do not fit: cut decode, then prefill, to the budget
        best = _cut_to_budget(best, spec)
    bottleneck = layout_at(high)
    for role in ROLES:
        if bottleneck.get(role) > best.get(role):
            grown = best.replace(role, best.get(role) + 1)
            if gpus(grown, spec) <= budget and grown.get(role) <= spec.role(role).max_replicas:
                best = grown
    for role in ROLES:
        _record(
            clamps,
            "GpuBudget",
            role,
            wanted.get(role),
            best.get(role),
            f"{gpus(wanted, spec)} GPUs wanted, gpuBudget is {budget}; the budget sustains about {low:.2f} rps",
        )
    return best, low


def _cut_to_budget(layout: Layout, spec: DisaggregatedModelSpec) -> Layout:
    """Remove replicas until the layout fits the budget, never below a role's minReplicas.

    Used when even the shaped minimum does not fit (a ratio band the budget cannot honour): the
    minimums are hard (CEL guarantees they fit), the band gives way. The role furthest above its
    minimum loses a replica first, so the result does not depend on the current layout.
    """
    budget = spec.scaling.gpu_budget
    assert budget is not None
    out = layout
    while gpus(out, spec) > budget:
        slack = {role: out.get(role) - spec.role(role).min_replicas for role in ROLES}
        role: Role = "prefill" if slack["prefill"] > slack["decode"] else "decode"
        if slack[role] <= 0:
            break
        out = out.replace(role, out.get(role) - 1)
    return out


def enforce_budget(layout: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp] | None) -> Layout:
    """Hard budget check after smoothing: trim the larger pool until the layout fits."""
    if spec.scaling.gpu_budget is None or gpus(layout, spec) <= spec.scaling.gpu_budget:
        return layout
    out = _cut_to_budget(layout, spec)
    for role in ROLES:
        _record(
            clamps,
            "GpuBudget",
            role,
            layout.get(role),
            out.get(role),
            f"gpuBudget is {spec.scaling.gpu_budget}",
        )
    return out


def hold_unschedulable(
    layout: Layout, current: Layout, observation: Observation, clamps: list[Clamp] | None
) -> tuple[Layout, bool]:
    """Pending pods are not capacity: do not add replicas to a role whose pods cannot be scheduled."""
    out, blocked = layout, False
    for role in ROLES:
        stuck = observation.role(role).unschedulable
        if stuck > 0 and layout.get(role) > current.get(role):
            blocked = True
            _record(
                clamps,
                "CapacityBlocked",
                role,
                layout.get(role),
                current.get(role),
                f"{stuck} {role} pod(s) cannot be scheduled (not enough free GPUs); not adding more",
            )
            out = out.replace(role, current.get(role))
    return out, blocked


def stabilize(
    layout: Layout,
    current: Layout,
    history: list[Recommendation],
    spec: DisaggregatedModelSpec,
    now: datetime,
    clamps: list[Clamp] | None,
    scale_down_window_seconds: float | None = None,
) -> Layout:
    """HPA stabilization: scale up to the lowest, down to the highest recommendation in the window.

    `scale_down_window_seconds` overrides the spec's scale-down window (the planner shortens it while
    its forecasts have covered the load; see `planner._scale_down_window`)."""
    down_seconds = (
        spec.scaling.scale_down.stabilization_seconds
        if scale_down_window_seconds is None
        else scale_down_window_seconds
    )
    up_cutoff = now - timedelta(seconds=spec.scaling.scale_up.stabilization_seconds)
    down_cutoff = now - timedelta(seconds=down_seconds)
    out = layout
    for role in ROLES:
        proposed = layout.get(role)
        up_rec = down_rec = proposed
        for rec in history:
            value = rec.prefill if role == "prefill" else rec.decode
            if rec.time >= up_cutoff:
                up_rec = min(up_rec, value)
            if rec.time >= down_cutoff:
                down_rec = max(down_rec, value)
        result = current.get(role)
        result = max(result, up_rec)
        result = min(result, down_rec)
        if result != proposed:
            stage = "ScaleUpStabilized" if proposed > current.get(role) else "ScaleDownStabilized"
            window = (
                spec.scaling.scale_up.stabilization_seconds if stage == "ScaleUpStabilized" else down_seconds
            )
            _record(
                clamps,
                stage,
                role,
                proposed,
                result,
                f"recommendations in the last {window:g}s allow {result}",
            )
            out = out.replace(role, result)
    return out


def hold_while_saturated(
    layout: Layout, current: Layout, saturated: str | None, clamps: list[Clamp] | None
) -> Layout:
    """No decode replica is released while the decode pool is saturated (`saturated` says how: its
    slots full and sequences waiting for one; None: it is not). A pool that cannot seat what it is
    given needs more replicas whatever the capacity model reads: a model that sizes it smaller has
    read the load wrong (the lengths measured as requests end trail a mix moving to longer answers),
    and releasing replicas there, or cancelling those still starting, deepens the queue that shows it.
    On a conversation trace shifting to a reasoning model's answers, the held lengths read one decode
    replica enough while 600 sequences waited for a slot, and the scale-down window, shortened on a
    dip of the arrivals, cancelled six of the twelve ordered a minute before."""
    if saturated is None or layout.decode >= current.decode:
        return layout
    _record(
        clamps,
        "SaturatedHold",
        "decode",
        layout.decode,
        current.decode,
        f"no decode replica released while {saturated}",
    )
    return layout.replace("decode", current.decode)


def hold_found_replicas(
    layout: Layout, current: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp] | None
) -> Layout:
    """A fresh planner (no recommendation history) does not scale down before its scale-down window has
    seen the load: the replicas it finds count as a recommendation, as the HPA's do. No-op with no
    scale-down window."""
    window = spec.scaling.scale_down.stabilization_seconds
    if window <= 0:
        return layout
    out = layout
    for role in ROLES:
        if layout.get(role) < current.get(role):
            _record(
                clamps,
                "ScaleDownStabilized",
                role,
                layout.get(role),
                current.get(role),
                f"first decision: the {current.get(role)} replicas found count as a recommendation "
                f"for the next {window:g}s",
            )
            out = out.replace(role, current.get(role))
    return out


def limit_steps(
    layout: Layout, current: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp] | None
) -> Layout:
    """At most max(maxStepReplicas, maxStepPercent of current) replicas added or removed per decision."""
    out = layout
    for role in ROLES:
        now_value, wanted = current.get(role), layout.get(role)
        up, down = spec.scaling.scale_up, spec.scaling.scale_down
        up_limit = now_value + max(
            up.max_step_replicas, math.ceil(now_value * up.max_step_percent / 100 - 1e-9)
        )
        down_limit = now_value - max(
            down.max_step_replicas, math.floor(now_value * down.max_step_percent / 100 + 1e-9)
        )
        if wanted > up_limit:
            _record(
                clamps,
                "ScaleUpLimit",
                role,
                wanted,
                up_limit,
                f"scaleUp allows +{up_limit - now_value} per decision",
            )
            out = out.replace(role, up_limit)
        elif wanted < down_limit:
            _record(
                clamps,
                "ScaleDownLimit",
                role,
                wanted,
                down_limit,
                f"scaleDown allows -{now_value - down_limit} per decision",
            )
            out = out.replace(role, down_limit)
    return out


def apply_tolerance(
    layout: Layout, current: Layout, spec: DisaggregatedModelSpec, clamps: list[Clamp] | None
) -> Layout:
    """Skip releases smaller than `tolerance` x current replicas (a dead band against flapping).

    Scale-ups are not skipped: what the capacity model wants is the fewest replicas that hold the SLO, so
    a pool held below it runs short of the SLO, and the scale-down window already keeps a rise that then
    reverts from flapping back. (Applied both ways, as the HPA applies it to its metric ratio, the band
    held a 20-replica prefill pool one short of the 21 it needed for 20 minutes of a heavy chat, at
    97-98% TTFT attainment; docs/benchmarks/sim-history.md.)"""
    out = layout
    for role in ROLES:
        now_value, wanted = current.get(role), layout.get(role)
        if 0 < now_value - wanted <= spec.scaling.tolerance * now_value:
            _record(
                clamps,
                "WithinTolerance",
                role,
                wanted,
                now_value,
                f"change is within tolerance {spec.scaling.tolerance:g}",
            )
            out = out.replace(role, now_value)
    return out
