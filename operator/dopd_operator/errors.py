"""dopd's error hierarchy. Every error dopd raises on purpose is one of these:

    DopdError
    ├── SpecError            a DisaggregatedModel (or file) that will never work as written: fix the spec
    ├── MetricsUnavailable   Prometheus is down, or a series is missing/NaN: hold replicas, retry
    ├── ForecastError        a forecast could not be made: plan on current load, say so
    └── ActuationError       a Deployment could not be patched: retry

The Kopf handlers map them in one place (SpecError -> kopf.PermanentError, the others ->
kopf.TemporaryError with a delay) and count them by class in the operator's metrics; the CLI maps them
to a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations


class DopdError(Exception):
    """Base of every error dopd raises on purpose."""


class SpecError(DopdError):
    """A spec or input file that is wrong as written. `field` names where, the message says the fix."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class MetricsUnavailable(DopdError):
    """Load metrics could not be read (Prometheus down, series missing, NaN)."""


class ForecastError(DopdError):
    """No forecast could be made for this tick."""


class ActuationError(DopdError):
    """Scaling a Deployment failed."""
