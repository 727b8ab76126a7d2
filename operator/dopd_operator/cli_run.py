"""`dopd run`: the operator process. The CLI edge: flags and environment are read here, nowhere else.

Builds the validated `OperatorSettings`, the shared clients (Kubernetes writer, Prometheus metrics
source, telemetry) into the Kopf memo, serves the operator's own /metrics, and runs Kopf with the
handlers of `dopd_operator.controller.handlers` (liveness endpoint on, peering for HA unless
`--standalone`). `kopf run -m dopd_operator.controller.handlers` works too and reads the same
environment variables through `runtime_from_environment`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping
from typing import Any

import click
from pydantic import ValidationError

from dopd_operator.controller.settings import LogFormat, OperatorSettings, PrometheusSettings

log = logging.getLogger("dopd.run")

ENV = {
    "prometheus_url": "DOPD_PROMETHEUS_URL",
    "prometheus_bearer_token_file": "DOPD_PROMETHEUS_BEARER_TOKEN_FILE",
    "prometheus_ca_file": "DOPD_PROMETHEUS_CA_FILE",
    "prometheus_timeout_seconds": "DOPD_PROMETHEUS_TIMEOUT_SECONDS",
    "scrape_interval_seconds": "DOPD_SCRAPE_INTERVAL_SECONDS",
    "namespaces": "DOPD_NAMESPACES",
    "metrics_port": "DOPD_METRICS_PORT",
    "health_port": "DOPD_HEALTH_PORT",
    "bind_address": "DOPD_BIND_ADDRESS",
    "peering": "DOPD_PEERING",
    "log_format": "DOPD_LOG_FORMAT",
}


def settings_from(values: Mapping[str, Any]) -> OperatorSettings:
    """Validated settings; a bad value raises click.UsageError naming the flag and the variable."""
    namespaces = values.get("namespaces") or ()
    if isinstance(namespaces, str):
        namespaces = tuple(n.strip() for n in namespaces.split(",") if n.strip())
    try:
        return OperatorSettings(
            prometheus=PrometheusSettings(
                url=values.get("prometheus_url"),
                bearer_token_file=values.get("prometheus_bearer_token_file"),
                ca_file=values.get("prometheus_ca_file"),
                timeout_seconds=values.get("prometheus_timeout_seconds") or 10.0,
                scrape_interval_seconds=values.get("scrape_interval_seconds") or 15.0,
            ),
            namespaces=tuple(namespaces),
            metrics_port=values.get("metrics_port", 8080),
            health_port=values.get("health_port", 8081),
            bind_address=values.get("bind_address") or "127.0.0.1",
            peering=None if values.get("standalone") else (values.get("peering") or "dopd"),
            log_format=values.get("log_format") or LogFormat.JSON,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        flag = {
            "prometheus.url": "prometheus_url",
            "prometheus.scrape_interval_seconds": "scrape_interval_seconds",
        }.get(where, where.replace("prometheus.", "prometheus_"))
        hint = f"--{flag.replace('_', '-')} / {ENV.get(flag, '?')}"
        raise click.UsageError(f"{hint}: {first['msg']}") from None


def settings_from_environment(environ: Mapping[str, str] | None = None) -> OperatorSettings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {key: env[var] for key, var in ENV.items() if env.get(var)}
    if env.get("DOPD_STANDALONE", "").lower() in ("1", "true", "yes"):
        values["standalone"] = True
    return settings_from(values)


def build_runtime(settings: OperatorSettings) -> Any:
    """The shared clients: Kubernetes writer (in-cluster ServiceAccount or kubeconfig), metrics source,
    telemetry served on the metrics port."""
    from kubernetes import client, config

    from dopd_operator.controller.kube import KubeWriter
    from dopd_operator.controller.loop import Runtime
    from dopd_operator.controller.observability import Telemetry, serve_metrics
    from dopd_operator.metrics.source import MetricsOptions, MetricsSource

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    telemetry = Telemetry()
    port = serve_metrics(telemetry, settings.bind_address, settings.metrics_port)
    log.info("operator metrics on http://%s:%d/metrics", settings.bind_address, port)
    return Runtime(
        writer=KubeWriter(
            client.ApiClient(),
            lambda verb, resource: telemetry.api_requests.labels(verb=verb, resource=resource).inc(),
        ),
        metrics=MetricsSource(
            settings.prometheus,
            MetricsOptions(scrape_interval_seconds=settings.prometheus.scrape_interval_seconds),
            on_query=lambda purpose: telemetry.prometheus_queries.labels(purpose=purpose).inc(),
        ),
        telemetry=telemetry,
    )


def runtime_from_environment() -> Any:
    return build_runtime(settings_from_environment())


# Kopf peering: the replica with the highest priority acts, the others pause; equal priorities freeze
# both. Older processes rank higher, so a newcomer (a rolling update's new pod, a restarted standby)
# waits for the active replica to leave instead of taking over from whichever drew a lower number.
# The tiebreak separates two started in the same 10 ms. Priorities stay positive and below 2**53
# (exact in every JSON client) until 2286.
PRIORITY_TICK_SECONDS = 0.01
PRIORITY_EPOCH_END_TICKS = 10**12  # 10**10 s: 2286-11-20
PRIORITY_TIEBREAKS = 1000


def peering_priority(started_at_s: float, tiebreak: int) -> int:
    """Kopf peering priority of a process started at `started_at_s` (Unix seconds): the earlier, the
    higher; `tiebreak` in [0, PRIORITY_TIEBREAKS) orders processes started in the same 10 ms."""
    if not 0 <= tiebreak < PRIORITY_TIEBREAKS:
        raise ValueError(f"tiebreak must be in [0, {PRIORITY_TIEBREAKS}), got {tiebreak}")
    ticks = min(max(int(started_at_s / PRIORITY_TICK_SECONDS), 0), PRIORITY_EPOCH_END_TICKS - 1)
    return (PRIORITY_EPOCH_END_TICKS - ticks) * PRIORITY_TIEBREAKS + tiebreak


@click.command()
@click.option("--prometheus-url", envvar=ENV["prometheus_url"], help="Prometheus HTTP API base URL.")
@click.option(
    "--prometheus-bearer-token-file",
    envvar=ENV["prometheus_bearer_token_file"],
    type=click.Path(dir_okay=False),
    help="File holding a bearer token for Prometheus.",
)
@click.option(
    "--prometheus-ca-file",
    envvar=ENV["prometheus_ca_file"],
    type=click.Path(dir_okay=False),
    help="CA bundle for an https Prometheus.",
)
@click.option(
    "--prometheus-timeout-seconds",
    envvar=ENV["prometheus_timeout_seconds"],
    type=float,
    default=10.0,
    show_default=True,
)
@click.option(
    "--scrape-interval-seconds",
    envvar=ENV["scrape_interval_seconds"],
    type=float,
    default=15.0,
    show_default=True,
    help="How often Prometheus scrapes the engine pods (sets rate windows and staleness).",
)
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Namespace to watch (repeatable); default all. Env DOPD_NAMESPACES, comma-separated.",
)
@click.option("--metrics-port", envvar=ENV["metrics_port"], type=int, default=8080, show_default=True)
@click.option("--health-port", envvar=ENV["health_port"], type=int, default=8081, show_default=True)
@click.option("--bind-address", envvar=ENV["bind_address"], default="127.0.0.1", show_default=True)
@click.option(
    "--peering", envvar=ENV["peering"], default="dopd", show_default=True, help="Kopf peering name."
)
@click.option("--standalone", is_flag=True, envvar="DOPD_STANDALONE", help="No peering (a single replica).")
@click.option(
    "--log-format",
    envvar=ENV["log_format"],
    type=click.Choice([f.value for f in LogFormat]),
    default=LogFormat.JSON.value,
    show_default=True,
)
def run(**values: Any) -> None:
    """Run the operator (Kopf) against the current kubeconfig or the in-cluster ServiceAccount."""
    import asyncio

    import kopf

    from dopd_operator.controller import handlers  # noqa: F401  (registers the handlers)
    from dopd_operator.controller.observability import configure_logging

    if not values.get("namespaces") and os.environ.get(ENV["namespaces"]):
        values["namespaces"] = os.environ[ENV["namespaces"]]
    settings = settings_from(values)
    configure_logging(settings.log_format is LogFormat.JSON)
    memo = kopf.Memo(runtime=build_runtime(settings))
    liveness = f"http://{settings.bind_address}:{settings.health_port}/healthz"
    priority = peering_priority(time.time(), random.randrange(PRIORITY_TIEBREAKS))
    log.info(
        "dopd operator starting: prometheus %s, namespaces %s, peering %s",
        settings.prometheus.url,
        ",".join(settings.namespaces) or "(all)",
        f"{settings.peering} (priority {priority})" if settings.peering else "(standalone)",
    )
    asyncio.run(
        kopf.operator(
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            standalone=settings.peering is None,
            peering_name=settings.peering,
            priority=priority,
            liveness_endpoint=liveness,
            memo=memo,
        )
    )
