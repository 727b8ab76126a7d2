"""The operator process's own configuration: where Prometheus is, what to watch, where to serve.

It comes from flags and the environment (read in `cli_run.py`, the CLI edge, and nowhere else), never
from a custom resource: a DisaggregatedModel cannot point the operator at another URL. Validated once at
start-up; a bad value stops the operator with a message naming the flag and its variable.
Callers: `cli_run.run` (builds it), `handlers` (reads it from the Kopf memo).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class PrometheusSettings(BaseModel):
    """How the operator reaches Prometheus."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: HttpUrl = Field(..., description="Prometheus HTTP API base URL (flag --prometheus-url).")
    bearer_token_file: Path | None = Field(
        None, description="File holding a bearer token sent with every query (a mounted Secret)."
    )
    ca_file: Path | None = Field(None, description="CA bundle for an https Prometheus.")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Per-query timeout.")
    scrape_interval_seconds: float = Field(
        15.0,
        gt=0,
        le=600,
        description="How often Prometheus scrapes the engines: rate() windows span at least four scrapes "
        "and a series older than three is stale.",
    )

    @field_validator("bearer_token_file", "ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    def bearer_token(self) -> str | None:
        """The token, read at each call so a rotated Secret is picked up."""
        if self.bearer_token_file is None:
            return None
        return self.bearer_token_file.read_text(encoding="utf-8").strip()


class OperatorSettings(BaseModel):
    """Everything `dopd run` is configured with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prometheus: PrometheusSettings
    namespaces: tuple[str, ...] = Field(
        (), description="Namespaces to watch; empty watches all (cluster-wide)."
    )
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of the operator's own /metrics.")
    health_port: int = Field(8081, ge=0, le=65535, description="Port of the liveness endpoint /healthz.")
    bind_address: str = Field("127.0.0.1", description="Address both servers bind.")
    peering: str | None = Field(
        "dopd", description="Kopf peering object name (one active replica); None runs standalone."
    )
    log_format: LogFormat = Field(LogFormat.JSON, description="json or text.")

    @field_validator("namespaces")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name or len(name) > 63 or not all(c.isalnum() or c == "-" for c in name):
                raise ValueError(f"{name!r} is not a namespace name (lowercase letters, digits, '-')")
        return tuple(dict.fromkeys(value))

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
