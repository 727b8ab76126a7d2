"""Rendering the metric store as a /metrics body, the way each real engine serves it, with the faults on.

- dopd: the worker's own endpoint always answers the classic text format 0.0.4, whatever the scraper
  asks (dopd_worker/serving.py).
- vLLM, SGLang: prometheus_client negotiates with the scraper's Accept header, so a Prometheus that
  asks for OpenMetrics gets it, with ':' in names escaped to '_' by prometheus_client 0.26
  (`vllm:num_requests_waiting` is stored as `vllm_num_requests_waiting`). Presets match both spellings.
Samples carry no `_created` series. Callers: `core.Emulation.render`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from dopd_emulator.config import FamilyFault, Faults
from dopd_emulator.store import Histogram, MetricStore
from dopd_operator.api import Engine

TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"  # what dopd_worker/serving.py answers


def check_faults(faults: Faults, store: MetricStore) -> None:
    """Reject faults on families this engine does not have (a typo must not pass as a no-op)."""
    known = {family.name for family in store.families}
    unknown = sorted({f.family for f in (*faults.omit, *faults.nan)} - known)
    if unknown:
        raise ValueError(f"unknown families {unknown}; this engine exposes: {', '.join(sorted(known))}")


def _hit(entries: Iterable[FamilyFault], family: str, role: str) -> bool:
    return any(e.family == family and (e.role is None or e.role == role) for e in entries)


class _StoreCollector:
    """A prometheus_client collector over a store snapshot (read under the emulator's lock)."""

    def __init__(self, store: MetricStore, faults: Faults) -> None:
        self.store = store
        self.faults = faults

    def collect(self) -> Iterator[Metric]:
        for family in self.store.families:
            series = [
                s for s in self.store.series(family.name) if not _hit(self.faults.omit, family.name, s.role)
            ]
            if not series:
                continue
            base = family.name.removesuffix("_total") if family.kind == "counter" else family.name
            metric = Metric(base, family.help, family.kind)
            for one in series:
                nan = _hit(self.faults.nan, family.name, one.role)
                if isinstance(one.value, Histogram):
                    for bound, count in one.value.cumulative():
                        le = "+Inf" if math.isinf(bound) else floatToGoString(bound)  # type: ignore[no-untyped-call]
                        metric.add_sample(f"{base}_bucket", {**one.labels, "le": le}, count)
                    metric.add_sample(f"{base}_count", one.labels, one.value.count)
                    metric.add_sample(f"{base}_sum", one.labels, math.nan if nan else one.value.sum)
                else:
                    metric.add_sample(family.name, one.labels, math.nan if nan else one.value)
            yield metric


def render(store: MetricStore, faults: Faults, engine: Engine, accept: str | None) -> tuple[bytes, str]:
    """(body, content type) of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector(store, faults))  # type: ignore[arg-type]
    if engine == Engine.DOPD:
        return generate_latest(registry), TEXT_0_0_4
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
