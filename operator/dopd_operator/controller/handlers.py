"""The Kopf handlers: thin. Gather, tick, apply, write status; every decision lives in `tick.py`.

- startup: Kopf settings in one place (progress in `dopd.io/` annotations so `status` stays ours, a
  `dopd.io/finalizer`, peering for HA, Events posted only when dopd calls for them) and the shared
  clients in the Kopf memo (`Runtime`), built by `dopd run` (`cli_run.py`).
- indexes: pods and Deployments that carry `dopd.io/model`, and HorizontalPodAutoscalers, kept in
  memory from the watch streams, so a tick reads the cluster without one GET.
- create / update(spec) / resume: server-side apply of the children (`children.py`). A spec that can
  never work is reported (SpecValid=False, an Event) and left alone; it is not raised into Kopf's
  retry loop, so it cannot crash-loop the operator or delay the other models.
- a daemon per model: the control loop (`loop.py`) at the model's own `scaling.intervalSeconds`. A
  daemon rather than a timer because each model has its own interval (a timer's is fixed per handler)
  and a daemon keeps a steady cadence whatever a tick's latency; like timers, Kopf pauses daemons while
  another operator replica holds the peering, which is what makes two replicas safe. Daemons need Kopf's
  finalizer, so a model deleted while no operator runs waits for one (docs/operations.md).
`kopf run -m dopd_operator.controller.handlers` works too: then the startup handler builds the runtime
from the environment.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import kopf

from dopd_operator.api import GROUP, PLURAL, VERSION, DisaggregatedModelSpec, ScalingSpec
from dopd_operator.controller.children import MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL
from dopd_operator.controller.cluster_state import (
    DeploymentSummary,
    PodSummary,
    deployment_summary,
    index_key,
    pod_summary,
)
from dopd_operator.controller.conflicts import AutoscalerRef, ConflictCheck, autoscaler_ref
from dopd_operator.controller.loop import (
    ModelRef,
    Runtime,
    TickReport,
    apply_children,
    first_wait_seconds,
    next_wait_seconds,
    parse_status,
    tick_once,
    utcnow,
)
from dopd_operator.controller.status import Event, invalid_status
from dopd_operator.controller.validation import check
from dopd_operator.errors import ActuationError, DopdError, SpecError

log = logging.getLogger("dopd.controller")

PEERING_LIFETIME_SECONDS = 20  # a standby replica takes over this long after the active one vanishes


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    if "runtime" not in memo:
        from dopd_operator.cli_run import runtime_from_environment

        memo["runtime"] = runtime_from_environment()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dopd.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="dopd.io", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "dopd.io/finalizer"
    settings.posting.loggers = False  # Events only where dopd posts them (status.EventReason)
    settings.posting.reporting_component = "dopd"  # the "From" column of `kubectl describe dm`
    settings.posting.reporting_instance = socket.gethostname()
    settings.peering.lifetime = PEERING_LIFETIME_SECONDS
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # retries log whole query URLs
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30


@kopf.on.cleanup()
async def stop_refits(memo: kopf.Memo, **_: Any) -> None:
    """Drop queued forecast refits at shutdown (their fits are a cache: a successor refits), so a
    terminating operator exits within its grace period instead of working through the queue."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        runtime.refit_pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------ indexes


@kopf.index("pods", labels={MODEL_LABEL: kopf.PRESENT})
def dopd_pods(
    namespace: str | None, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], PodSummary]:
    key = index_key(namespace, meta.labels)
    return {} if key is None else {key: pod_summary(meta, status)}


@kopf.index("apps", "v1", "deployments", labels={MODEL_LABEL: kopf.PRESENT, MANAGED_BY_LABEL: MANAGED_BY})
def dopd_deployments(
    namespace: str | None, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], DeploymentSummary]:
    key = index_key(namespace, meta.labels)
    return {} if key is None else {key: deployment_summary(meta, spec, status)}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers")
def dopd_autoscalers(
    namespace: str | None, name: str | None, spec: kopf.Spec, **_: Any
) -> dict[str, AutoscalerRef]:
    ref = autoscaler_ref("HorizontalPodAutoscaler", str(name), spec)
    return {} if ref is None or namespace is None else {namespace: ref}


# ------------------------------------------------------------------------------------------ children


def _post(body: kopf.Body) -> Any:
    def post(event: Event) -> None:
        kopf.event(body, type=event.type, reason=str(event.reason), message=event.message[:1024])

    return post


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile_children(
    *,
    name: str,
    namespace: str | None,
    uid: str,
    body: kopf.Body,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    assert namespace is not None, "DisaggregatedModel is namespaced"
    runtime: Runtime = memo["runtime"]
    spec, problems = check(body.get("spec"), name)
    message = "; ".join(str(p) for p in problems)
    if spec is not None and not problems:
        try:
            await apply_children(ModelRef(namespace, name, uid), spec, runtime.writer)
            return
        except SpecError as exc:  # a child's name is taken by an object this model does not own
            message = str(exc)
        except ActuationError as exc:
            runtime.telemetry.errors.labels(kind="ActuationError").inc()
            raise kopf.TemporaryError(str(exc), delay=15) from exc
    # A spec that can never work: reported, not retried (the daemon reports it again each round).
    status, events = invalid_status(
        parse_status(body.get("status")), message, body.meta.get("generation"), utcnow()
    )
    await asyncio.to_thread(runtime.writer.write_status, namespace, name, status)
    for event in events:
        _post(body)(event)


# ------------------------------------------------------------------------------------------ the loop


def _interval_seconds(body: kopf.Body) -> float:
    """The model's interval, read afresh each round (the spec may change under a running daemon)."""
    try:
        return DisaggregatedModelSpec.model_validate(body.get("spec")).scaling.interval_seconds
    except ValueError:  # an invalid spec is reported by the tick; keep the default cadence meanwhile
        return ScalingSpec().interval_seconds


# Kopf passes the indexes as keyword arguments named after them, which its DaemonFn protocol cannot
# express; hence the ignore.
@kopf.daemon(GROUP, VERSION, PLURAL, id="control-loop", cancellation_timeout=10.0)  # type: ignore[arg-type]
async def control_loop(
    *,
    name: str,
    namespace: str | None,
    uid: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    dopd_pods: kopf.Index[tuple[str, str], PodSummary],
    dopd_deployments: kopf.Index[tuple[str, str], DeploymentSummary],
    dopd_autoscalers: kopf.Index[str, AutoscalerRef],
    **_: Any,
) -> None:
    assert namespace is not None, "DisaggregatedModel is namespaced"
    runtime: Runtime = memo["runtime"]
    ref = ModelRef(namespace, name, uid)
    key = (namespace, name)
    post = _post(body)
    failures = 0
    try:
        await stopped.wait(first_wait_seconds(body, _interval_seconds(body), utcnow()))
        while not stopped:
            started = time.perf_counter()
            now = utcnow()
            conflicts = ConflictCheck(tuple(dopd_autoscalers.get(namespace, ())), now)
            try:
                report = await tick_once(
                    runtime,
                    ref,
                    body,
                    list(dopd_deployments.get(key, ())),
                    list(dopd_pods.get(key, ())),
                    conflicts,
                    now,
                    post,
                )
            except DopdError as exc:  # a failed API write: counted, logged, retried next round
                runtime.telemetry.errors.labels(kind=type(exc).__name__).inc()
                runtime.telemetry.ticks.labels(outcome="error").inc()
                log.error("tick failed: %s", exc, extra={"model": str(ref)})
                report = TickReport("error", metrics_healthy=True)
            except Exception:
                runtime.telemetry.errors.labels(kind="Unexpected").inc()
                raise  # Kopf logs the traceback and restarts the daemon after its backoff
            finally:
                runtime.telemetry.tick_seconds.observe(time.perf_counter() - started)
            failures = 0 if report.metrics_healthy else failures + 1
            await stopped.wait(next_wait_seconds(report, _interval_seconds(body), failures))
    finally:
        runtime.forget(ref)
