"""The emulator's metric state: declared families, and per pod the counters, gauges and histograms the
engine recorders (`engines/`) accumulate from the simulator's events.

Histograms take weighted observations: one decode step advances B sequences, so its duration is
observed with weight B (one inter-token gap per sequence), the way SGLang's own tokenizer records a
chunk of n tokens (`count += n`, `sum += n * gap`). Buckets follow Prometheus' `le` rule (a value equal
to a bound falls in that bound's bucket); NaN lands in +Inf and makes the sum NaN, as in
prometheus_client. Rendering (faults, text formats) is `exposition`'s job. Callers: engines, exposition.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Kind = Literal["counter", "gauge", "histogram"]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Family:
    """One metric family, named as its samples appear in the classic text format: counters with their
    `_total` suffix (`vllm:prompt_tokens_total`), so a counter and a histogram that share a base name,
    as `dopd_prompt_tokens_total` and `dopd_prompt_tokens` do, stay two families."""

    name: str
    kind: Kind
    help: str
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if (self.kind == "histogram") != bool(self.buckets):
            raise ValueError(f"{self.name}: histograms need buckets, and only histograms have them")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{self.name}: bucket bounds must be strictly increasing")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counter family names end in _total")


class Histogram:
    """Bucket counts (the last one is +Inf, not cumulative here), sum and count of weighted observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.float64)
        self.sum = 0.0

    def observe(self, values: FloatArray | float, weight: float = 1.0) -> None:
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if array.size == 0:
            return
        index = np.searchsorted(self.bounds, array, side="left")  # le: bounds[i-1] < v <= bounds[i]
        index[np.isnan(array)] = len(self.bounds)
        self.counts += np.bincount(index, minlength=len(self.counts)) * weight
        self.sum += float(array.sum()) * weight

    @property
    def count(self) -> float:
        return float(self.counts.sum())

    def cumulative(self) -> list[tuple[float, float]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        running = np.cumsum(self.counts)
        return [
            *zip(self.bounds.tolist(), running[:-1].tolist(), strict=True),
            (math.inf, float(running[-1])),
        ]


@dataclass
class Series:
    """One labelled series of a family; `role` is prefill, decode or router, whatever the label says."""

    labels: dict[str, str]
    role: str
    pod: str
    value: float | Histogram


@dataclass
class MetricStore:
    """Series by family and by (pod, extra label values) for the families declared at construction."""

    families: tuple[Family, ...]
    _series: dict[str, dict[tuple[str, ...], Series]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.families]
        if len(set(names)) != len(names):
            raise ValueError("duplicate family names")
        self._by_name = {f.name: f for f in self.families}
        self._series = {f.name: {} for f in self.families}

    def family(self, name: str) -> Family:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown family {name!r}") from None

    def _get(self, name: str, labels: Mapping[str, str], role: str, pod: str) -> Series:
        family = self.family(name)
        key = (pod, *labels.values())
        series = self._series[name].get(key)
        if series is None:
            value: float | Histogram = Histogram(family.buckets) if family.kind == "histogram" else 0.0
            series = Series(dict(labels), role, pod, value)
            self._series[name][key] = series
        return series

    def ensure(self, name: str, labels: Mapping[str, str], role: str, pod: str) -> None:
        """Create the series at zero (engines that register their series up front)."""
        self._get(name, labels, role, pod)

    def inc(self, name: str, labels: Mapping[str, str], role: str, pod: str, amount: float = 1.0) -> None:
        if self._by_name[name].kind != "counter":
            raise TypeError(f"{name} is not a counter")
        series = self._get(name, labels, role, pod)
        assert isinstance(series.value, float)
        series.value += amount

    def set(self, name: str, labels: Mapping[str, str], role: str, pod: str, value: float) -> None:
        if self._by_name[name].kind != "gauge":
            raise TypeError(f"{name} is not a gauge")
        self._get(name, labels, role, pod).value = float(value)

    def observe(
        self,
        name: str,
        labels: Mapping[str, str],
        role: str,
        pod: str,
        values: FloatArray | float,
        weight: float = 1.0,
    ) -> None:
        series = self._get(name, labels, role, pod)
        if not isinstance(series.value, Histogram):
            raise TypeError(f"{name} is not a histogram")
        series.value.observe(values, weight)

    def drop_pod(self, pod: str) -> None:
        """Forget every series of a pod (it is gone; Prometheus marks them stale)."""
        for by_key in self._series.values():
            for key in [k for k, s in by_key.items() if s.pod == pod]:
                del by_key[key]

    def series(self, name: str) -> Iterator[Series]:
        yield from self._series[name].values()

    def value(self, name: str, pod: str, **labels: str) -> float | Histogram:
        """The value of the one series of `name` for `pod` whose labels include `labels` (tests, truth)."""
        matches = [
            s
            for s in self._series[name].values()
            if s.pod == pod and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} series of {name} for pod {pod!r} match {labels}")
        return matches[0].value
