"""The operator's own observability: its Prometheus metrics and its structured JSON logs.

Metrics (served by `serve_metrics` on the operator's metrics port, never on the engines' Prometheus):
- `dopd_operator_ticks_total{outcome}`: ticks by outcome (planned, metrics_unknown, invalid_spec, error);
- `dopd_operator_tick_duration_seconds`: wall time of one tick (gather, forecast, plan, act, status);
- `dopd_operator_decisions_total{changed}`: planner decisions, and whether they changed replicas;
- `dopd_operator_scale_actions_total{role,direction}`: scale-subresource patches;
- `dopd_operator_forecast_fit_seconds`: the forecast and plan part of a tick (an update of the fitted
  model with the new points; refits run beside the ticks, below);
- `dopd_operator_forecast_refit_seconds`: one background refit (backtest and fit), in the refit worker;
- `dopd_operator_forecast_refits_waiting`: refits requested and not finished (queued or running);
- `dopd_operator_tick_stage_seconds{stage}`: the other parts: `metrics` (waiting for Prometheus: the
  model's share of its batch's queries, and the queue for the query pool), `act` (victims, status,
  scale patches);
- `dopd_operator_errors_total{kind}`: errors by class of the dopd error hierarchy (`errors.py`);
- `dopd_operator_api_requests_total{verb,resource}`: what dopd itself asks of the API server;
- `dopd_operator_prometheus_queries_total{purpose}`: queries sent: observe (2 instant queries per
  batch of models and half scrape interval), history (1 range query per batch and forecast step),
  pod_load (1 instant query per model, on scale-down);
- `dopd_operator_models{condition,status}`: models by condition (SpecValid, MetricsHealthy, ...).
Logs: one JSON object per line with `time`, `level`, `logger`, `message` and, when the record carries
them, `model` (namespace/name) and `tick` (the tick's sequence number for that model).
Callers: `controller.loop`, `cli_run`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter as CountOf
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dopd_operator.api import Condition

_TICK_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
)


class Telemetry:
    """One registry per operator process (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ticks = Counter("dopd_operator_ticks", "Control ticks by outcome.", ["outcome"], registry=r)
        self.tick_seconds = Histogram(
            "dopd_operator_tick_duration_seconds",
            "Wall time of one control tick.",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "dopd_operator_decisions",
            "Planner decisions; changed=true when replicas moved.",
            ["changed"],
            registry=r,
        )
        self.scale_actions = Counter(
            "dopd_operator_scale_actions",
            "Scale-subresource patches by role and direction.",
            ["role", "direction"],
            registry=r,
        )
        self.forecast_seconds = Histogram(
            "dopd_operator_forecast_fit_seconds",
            "Wall time of the forecast and plan part of a tick.",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.refit_seconds = Histogram(
            "dopd_operator_forecast_refit_seconds",
            "Wall time of one background forecast refit.",
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.refits_waiting = Gauge(
            "dopd_operator_forecast_refits_waiting",
            "Forecast refits requested and not finished (queued or running).",
            registry=r,
        )
        self.tick_stage_seconds = Histogram(
            "dopd_operator_tick_stage_seconds",
            "Wall time of the parts of a tick: metrics (Prometheus reads), act (status and scale writes).",
            ["stage"],
            buckets=_TICK_BUCKETS,
            registry=r,
        )
        self.errors = Counter("dopd_operator_errors", "Errors by kind.", ["kind"], registry=r)
        self.api_requests = Counter(
            "dopd_operator_api_requests",
            "Requests dopd itself sends to the API server (Kopf's watches and Event posts not included).",
            ["verb", "resource"],
            registry=r,
        )
        self.prometheus_queries = Counter(
            "dopd_operator_prometheus_queries",
            "Queries sent to Prometheus, by purpose.",
            ["purpose"],
            registry=r,
        )
        self.models = Gauge(
            "dopd_operator_models",
            "DisaggregatedModels by condition and status.",
            ["condition", "status"],
            registry=r,
        )
        self._conditions: dict[str, dict[str, str]] = {}

    def record_conditions(self, model: str, conditions: Iterable[Condition]) -> None:
        self._conditions[model] = {c.type: c.status for c in conditions}
        self._refresh_models()

    def forget(self, model: str) -> None:
        self._conditions.pop(model, None)
        self._refresh_models()

    def _refresh_models(self) -> None:
        counts: CountOf[tuple[str, str]] = CountOf()
        for by_type in self._conditions.values():
            counts.update(by_type.items())
        self.models.clear()
        for (type_, status), count in counts.items():
            self.models.labels(condition=type_, status=status).set(count)


def serve_metrics(telemetry: Telemetry, address: str, port: int) -> int:
    """Serve /metrics in a background thread; returns the bound port (0 picks a free one)."""
    server, _thread = start_http_server(port, addr=address, registry=telemetry.registry)
    bound: int = server.server_port
    return bound


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields `model` and `tick` are kept when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("model", "tick"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(json_format: bool, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs each retried Prometheus request with its whole URL (the query, kilobytes); the
    # failure itself reaches the log, the condition and the Event once, from dopd, in a sentence
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
