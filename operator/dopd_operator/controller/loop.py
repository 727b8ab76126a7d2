"""One model's control loop: every `scaling.intervalSeconds`, gather -> tick -> act -> status.

- gather: the pools from the watch-fed indexes (no API call), the Observation and the arrival-rate
  history from Prometheus (`MetricsReader`, off the event loop). Prometheus down is not an error of the
  tick: the Observation is all-unknown with the cause, the planner holds (or falls back), and
  MetricsHealthy=False says why; the next attempt comes sooner, with backoff, until it recovers.
- tick: `dopd_operator.tick.run_tick` in a worker thread, with the planner state taken from the
  object's status, so a restarted operator continues its windows and corrections. The tick updates the
  model's fitted forecaster with the new points; a refit it finds due (every ten minutes give or take
  10% per model, `refit_spread`) runs in the one refit worker beside the ticks, never inside one.
- act: Active mode patches the scale subresource of the roles whose replicas change. Advisory and
  Paused never do. A Deployment whose replicas another controller owns is never fought.
- status: one merge patch of the status subresource, plus the Events that explain the tick.
The cadence survives restarts: the first tick after a restart waits until one interval after the last
decision recorded in status, so a restart never adds a scale action.
Callers: the Kopf daemon in `handlers.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from dopd_forecaster.forecaster import SeriesForecaster
from dopd_operator.api import DisaggregatedModelSpec, DisaggregatedModelStatus, Role, ScalingMode
from dopd_operator.controller.children import child_name, children
from dopd_operator.controller.cluster_state import DeploymentSummary, PodSummary, role_observation
from dopd_operator.controller.conflicts import ConflictCheck, find_conflict
from dopd_operator.controller.kube import KubeWriter
from dopd_operator.controller.observability import Telemetry
from dopd_operator.controller.status import (
    Event,
    EventReason,
    Health,
    TickOutcome,
    build_status,
    invalid_status,
)
from dopd_operator.controller.validation import check
from dopd_operator.controller.victims import choose_victims
from dopd_operator.errors import ActuationError, MetricsUnavailable, SpecError
from dopd_operator.planner_types import Observation, PlannerState, PodLoad, RoleObservation
from dopd_operator.tick import (
    FORECAST_STEP_SECONDS,
    REFIT_EVERY_SECONDS,
    LoadHistory,
    TickResult,
    make_forecaster,
    run_tick,
)

log = logging.getLogger("dopd.controller")

MIN_RETRY_SECONDS = 2.0  # first retry after a failed Prometheus read; doubles up to the interval


class MetricsReader(Protocol):
    """What the loop needs from the Prometheus presets (`dopd_operator.metrics.source.MetricsSource`)."""

    async def observe(
        self,
        spec: DisaggregatedModelSpec,
        namespace: str,
        prefill: RoleObservation,
        decode: RoleObservation,
    ) -> Observation: ...

    async def pod_loads(
        self, spec: DisaggregatedModelSpec, namespace: str, role: Role
    ) -> dict[str, PodLoad]: ...

    async def arrival_history(
        self,
        spec: DisaggregatedModelSpec,
        namespace: str,
        now: datetime,
        history_seconds: float,
        step_seconds: float,
    ) -> LoadHistory: ...


EventPoster = Callable[[Event], None]


@dataclass(frozen=True)
class ModelRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def refit_spread(uid: str) -> float:
    """A factor in [0.9, 1.1), fixed per model: models started together (an operator start, a batch
    applied at once) fall due for refits together; spreading their refit periods by up to 10% each
    way spreads their refits apart, a little more every cycle (jitter, as client-go's backoff does)."""
    digest = hashlib.sha256(uid.encode()).digest()
    return 0.9 + 0.2 * int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class _ForecasterSlot:
    key: str
    forecaster: SeriesForecaster | None


@dataclass
class Runtime:
    """The operator's shared clients and per-model memory (kept in the Kopf memo)."""

    writer: KubeWriter
    metrics: MetricsReader
    telemetry: Telemetry
    forecasters: dict[str, _ForecasterSlot] = field(default_factory=dict)
    ticks: dict[str, int] = field(default_factory=dict)
    # Refits run one at a time (statsmodels holds the GIL; one worker leaves the event loop and the
    # status writes their share of two cores), oldest request first.
    refit_pool: Executor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="dopd-refit")
    )
    _refits: dict[int, Future[bool]] = field(default_factory=dict)

    def forecaster_for(self, uid: str, spec: DisaggregatedModelSpec) -> SeriesForecaster | None:
        """One forecaster per model, rebuilt when its forecast settings change (the fitted state is a
        cache: a new one refits from the Prometheus history, nothing is lost)."""
        key = spec.forecast.model_dump_json()
        slot = self.forecasters.get(uid)
        if slot is None or slot.key != key:
            refit_every_s = REFIT_EVERY_SECONDS * refit_spread(uid)
            slot = _ForecasterSlot(
                key, make_forecaster(spec, background_refits=True, refit_every_s=refit_every_s)
            )
            self.forecasters[uid] = slot
        return slot.forecaster

    def refit_later(self, ref: ModelRef, forecaster: SeriesForecaster) -> None:
        """Queue the refit the forecaster asked for, unless one of its own is queued or running."""
        key = id(forecaster)
        if key in self._refits or not forecaster.refit_requested:
            return
        telemetry = self.telemetry

        def refit() -> bool:
            started = time.perf_counter()
            try:
                return forecaster.run_requested_refit()
            finally:
                telemetry.refit_seconds.observe(time.perf_counter() - started)

        future = self.refit_pool.submit(refit)
        self._refits[key] = future
        telemetry.refits_waiting.set(len(self._refits))

        def done(finished: Future[bool]) -> None:
            self._refits.pop(key, None)
            telemetry.refits_waiting.set(len(self._refits))
            error = None if finished.cancelled() else finished.exception()
            if error is not None:  # the tick goes on with the current fit and asks again when due
                telemetry.errors.labels(kind=type(error).__name__).inc()
                log.warning("forecast refit failed: %s", error, extra={"model": str(ref)})

        future.add_done_callback(done)

    def forget(self, ref: ModelRef) -> None:
        self.forecasters.pop(ref.uid, None)
        self.ticks.pop(str(ref), None)
        self.telemetry.forget(str(ref))


@dataclass(frozen=True)
class TickReport:
    """What one tick did; the loop uses it to pick the next wake-up."""

    outcome: str  # planned | metrics_unknown | invalid_spec | children_applied | error
    metrics_healthy: bool


def parse_status(raw: Any) -> DisaggregatedModelStatus | None:
    """The status dopd wrote last time; None when absent or unreadable (then it starts afresh)."""
    if not raw:
        return None
    try:
        return DisaggregatedModelStatus.model_validate(raw)
    except ValidationError:
        log.warning("ignoring an unreadable status (written by another version?)")
        return None


def _roles(
    ref: ModelRef, deployments: Iterable[DeploymentSummary], pods: Iterable[PodSummary]
) -> tuple[dict[Role, DeploymentSummary | None], RoleObservation, RoleObservation]:
    by_role: dict[Role, DeploymentSummary | None] = {"prefill": None, "decode": None}
    for summary in deployments:
        if summary.role in by_role and summary.name == child_name(ref.name, summary.role):  # type: ignore[arg-type]
            by_role[summary.role] = summary  # type: ignore[index]
    pods = list(pods)
    return (
        by_role,
        role_observation("prefill", by_role["prefill"], pods),
        role_observation("decode", by_role["decode"], pods),
    )


async def apply_children(ref: ModelRef, spec: DisaggregatedModelSpec, writer: KubeWriter) -> None:
    """Server-side apply every child; an object of a child's name that another owner (or nobody)
    controls is never taken over: SpecError naming it."""
    manifests = children(spec, ref.name, ref.namespace, ref.uid)
    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        owner = await asyncio.to_thread(writer.controller_uid, kind, ref.namespace, name)
        if owner is not None and owner != ref.uid:
            raise SpecError(
                "metadata.name",
                f"a {kind} named {name} already exists in {ref.namespace} and is not this model's "
                "(dopd never takes over objects it does not own): rename the model or remove that object",
            )
    for manifest in manifests:
        await asyncio.to_thread(writer.apply, manifest)


async def _gather(
    runtime: Runtime,
    spec: DisaggregatedModelSpec,
    ref: ModelRef,
    prefill: RoleObservation,
    decode: RoleObservation,
    now: datetime,
) -> tuple[Observation, LoadHistory, Health]:
    try:
        observation = await runtime.metrics.observe(spec, ref.namespace, prefill, decode)
    except MetricsUnavailable as exc:
        runtime.telemetry.errors.labels(kind="MetricsUnavailable").inc()
        message = f"Prometheus unavailable: {exc}"
        unknown = Observation(prefill=prefill, decode=decode, problems=(message,))
        return unknown, LoadHistory.empty(), Health(False, "PrometheusUnavailable", message)
    try:
        history = await runtime.metrics.arrival_history(
            spec, ref.namespace, now, spec.forecast.history_seconds, FORECAST_STEP_SECONDS
        )
    except MetricsUnavailable as exc:
        runtime.telemetry.errors.labels(kind="MetricsUnavailable").inc()
        log.warning("no arrival-rate history for %s: %s", ref, exc, extra={"model": str(ref)})
        history = LoadHistory.empty()
    if not observation.load_known:
        return observation, history, Health(False, "MetricsUnknown", observation.unknown_reason)
    return observation, history, Health(True, "MetricsAvailable", "every input the planner needs is known")


async def _mark_victims(
    runtime: Runtime,
    ref: ModelRef,
    spec: DisaggregatedModelSpec,
    role: Role,
    count: int,
    pods: list[PodSummary],
) -> str:
    """Mark the `count` cheapest pods of `role` for the ReplicaSet to remove; say which (or why not)."""
    try:
        loads: dict[str, PodLoad] | None = await runtime.metrics.pod_loads(spec, ref.namespace, role)
    except MetricsUnavailable as exc:
        log.warning("no per-pod load for %s: %s", ref, exc, extra={"model": str(ref)})
        loads = None
    plan = choose_victims(role, pods, loads or None, count, utcnow().isoformat(timespec="seconds"))
    for pod, changes in plan.annotations.items():
        await asyncio.to_thread(runtime.writer.annotate_pod, ref.namespace, pod, changes)
    return plan.why


def _changes(result: TickResult, observation: Observation) -> list[tuple[Role, int, int]]:
    """(role, have, want) for each role whose replicas the decision changes."""
    decision = result.decision
    wanted: tuple[tuple[Role, int], ...] = (("prefill", decision.prefill), ("decode", decision.decode))
    return [
        (role, observation.role(role).current, want)
        for role, want in wanted
        if want != observation.role(role).current
    ]


async def _scale(
    runtime: Runtime, ref: ModelRef, changes: list[tuple[Role, int, int]], post: EventPoster
) -> list[str]:
    """Patch the scale subresource of each changed role; the failures, as messages."""
    failures = []
    for role, have, want in changes:
        try:
            await asyncio.to_thread(runtime.writer.scale, ref.namespace, child_name(ref.name, role), want)
        except ActuationError as exc:
            runtime.telemetry.errors.labels(kind="ActuationError").inc()
            log.error("%s", exc, extra={"model": str(ref)})
            post(Event("Warning", EventReason.SCALE_FAILED, str(exc)))
            failures.append(str(exc))
            continue
        runtime.telemetry.scale_actions.labels(role=role, direction="up" if want > have else "down").inc()
    return failures


async def _report_invalid(
    runtime: Runtime,
    ref: ModelRef,
    previous: DisaggregatedModelStatus | None,
    message: str,
    generation: int | None,
    now: datetime,
    post: EventPoster,
    extra: Mapping[str, Any],
) -> TickReport:
    """SpecValid=False with the reason and one Event; the model's pools are left as they are."""
    status, events = invalid_status(previous, message, generation, now)
    if previous is None or status.conditions != previous.conditions:
        await asyncio.to_thread(runtime.writer.write_status, ref.namespace, ref.name, status)
    for event in events:
        post(event)
    runtime.telemetry.ticks.labels(outcome="invalid_spec").inc()
    runtime.telemetry.errors.labels(kind="SpecError").inc()
    runtime.telemetry.record_conditions(str(ref), status.conditions)
    log.warning("spec invalid: %s", message, extra=extra)
    return TickReport("invalid_spec", metrics_healthy=True)


async def tick_once(
    runtime: Runtime,
    ref: ModelRef,
    body: Mapping[str, Any],
    deployments: Iterable[DeploymentSummary],
    pods: Iterable[PodSummary],
    conflicts: ConflictCheck,
    now: datetime,
    post: EventPoster,
) -> TickReport:
    """One control tick for one model."""
    runtime.ticks[str(ref)] = runtime.ticks.get(str(ref), 0) + 1
    extra = {"model": str(ref), "tick": runtime.ticks[str(ref)]}
    generation = (body.get("metadata") or {}).get("generation")
    previous = parse_status(body.get("status"))
    spec, problems = check(body.get("spec"), ref.name)
    if spec is None or problems:
        message = "; ".join(str(p) for p in problems)
        return await _report_invalid(runtime, ref, previous, message, generation, now, post, extra)

    pods = list(pods)
    by_role, prefill, decode = _roles(ref, deployments, pods)
    if by_role["prefill"] is None or by_role["decode"] is None:
        # Just created (the watch has not brought them yet) or deleted by someone: apply them and decide
        # next round, rather than read "no Deployment" as zero replicas.
        log.info("a child Deployment is missing: applying the children", extra=extra)
        try:
            await apply_children(ref, spec, runtime.writer)
        except SpecError as exc:
            return await _report_invalid(runtime, ref, previous, str(exc), generation, now, post, extra)
        return TickReport("children_applied", metrics_healthy=False)
    started = time.perf_counter()
    observation, history, health = await _gather(runtime, spec, ref, prefill, decode, now)
    runtime.telemetry.tick_stage_seconds.labels(stage="metrics").observe(time.perf_counter() - started)
    forecaster = runtime.forecaster_for(ref.uid, spec)
    state = previous.planner if previous is not None else PlannerState()
    started = time.perf_counter()
    result = await asyncio.to_thread(run_tick, spec, observation, history, forecaster, state, now)
    if forecaster is not None:
        runtime.refit_later(ref, forecaster)
    runtime.telemetry.forecast_seconds.observe(time.perf_counter() - started)
    started = time.perf_counter()

    active = spec.scaling.mode is ScalingMode.ACTIVE
    conflict = find_conflict(conflicts, spec, by_role, previous) if active else None
    changes = _changes(result, observation) if active and conflict is None else []
    notes: dict[str, str] = {}
    for role, have, want in changes:
        if want < have:  # tell the ReplicaSet which pods to remove before it removes any
            notes[role] = await _mark_victims(runtime, ref, spec, role, have - want, pods)
    outcome = TickOutcome(
        spec=spec,
        generation=generation,
        observation=observation,
        result=result,
        health=health,
        acted=bool(changes),
        conflict=conflict,
        notes=notes,
        created=_created(body),
    )
    # Write-ahead: the decision (and the planner state with its recommendation) is in status before it
    # is carried out, so an operator killed between the two never acts twice for one tick: its
    # successor waits one interval after this decision, and its windows include this recommendation.
    status, events = build_status(previous, outcome, now)
    await asyncio.to_thread(runtime.writer.write_status, ref.namespace, ref.name, status)
    failures = await _scale(runtime, ref, changes, post) if changes else []
    if failures:  # say what did not happen (and do not mistake it for someone else's scale next tick)
        outcome = replace(outcome, acted=False, scale_failure="; ".join(failures))
        status, events = build_status(previous, outcome, now)
        await asyncio.to_thread(runtime.writer.write_status, ref.namespace, ref.name, status)
    for event in events:
        post(event)
    runtime.telemetry.tick_stage_seconds.labels(stage="act").observe(time.perf_counter() - started)
    decision = result.decision
    changed = (decision.prefill, decision.decode) != (prefill.current, decode.current)
    runtime.telemetry.decisions.labels(changed=str(changed).lower()).inc()
    runtime.telemetry.ticks.labels(outcome="planned" if health.healthy else "metrics_unknown").inc()
    runtime.telemetry.record_conditions(str(ref), status.conditions)
    log.info("%s", decision.reasons[-1] if decision.reasons else "decided", extra=extra)
    return TickReport("planned" if health.healthy else "metrics_unknown", health.healthy)


def _created(body: Mapping[str, Any]) -> datetime | None:
    stamp = (body.get("metadata") or {}).get("creationTimestamp")
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None


def first_wait_seconds(body: Mapping[str, Any], interval_seconds: float, now: datetime) -> float:
    """How long to wait before the first tick: until one interval after the last recorded decision."""
    previous = parse_status(body.get("status"))
    if previous is None or previous.last_decision is None:
        return 0.0
    due = previous.last_decision.time + timedelta(seconds=interval_seconds)
    return max(float((due - now).total_seconds()), 0.0)


def next_wait_seconds(report: TickReport, interval_seconds: float, failures: int) -> float:
    """The interval, or a shorter doubling retry while Prometheus is failing."""
    if report.metrics_healthy:
        return interval_seconds
    backoff_seconds: float = MIN_RETRY_SECONDS * 2.0 ** max(failures - 1, 0)
    return min(interval_seconds, backoff_seconds)


def utcnow() -> datetime:
    return datetime.now(UTC)
