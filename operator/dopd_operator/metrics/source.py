"""`MetricsSource`: the operator's one door to Prometheus, and the only I/O of `dopd_operator.metrics`.

The Kopf controller awaits two methods per model and tick; each runs prometheus-api-client (blocking
`requests`) in a bounded thread pool, off the event loop:

    await source.observe(spec, namespace, prefill, decode) -> Observation
        two instant queries (the preset's tagged aggregate and its raw range vector), read by
        `readings.build_observation`: a series that is missing, NaN or stale makes its field None and
        adds a line to `Observation.problems` (the planner then holds: unknown is never zero).
    await source.arrival_history(spec, namespace, now, history_seconds, step_seconds) -> LoadHistory
        the arrival rate per `step_seconds` bucket over the last `history_seconds`, from a range query;
        buckets already fetched are kept and only the recent end is asked again, so a tick costs one
        short range query after the first.

Prometheus unreachable, an HTTP error, a PromQL error or an answer of an unexpected shape raises
`MetricsUnavailable` with the cause (the controller holds replicas and reports it). Where Prometheus is
and how to authenticate comes from the operator's configuration (`PrometheusEndpoint`, satisfied by
`controller.settings.PrometheusSettings`), never from a custom resource; the bearer token file is read
at each request, so a rotated Secret is picked up.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from urllib3.util.retry import Retry

from dopd_operator.api import DisaggregatedModelSpec, Role
from dopd_operator.errors import MetricsUnavailable
from dopd_operator.metrics.presets import TAG_LABEL, QuerySet, query_set
from dopd_operator.metrics.promql import InstantSample, RangeSeries
from dopd_operator.metrics.readings import build_observation
from dopd_operator.planner_types import Observation, PodLoad, RoleObservation
from dopd_operator.tick import LoadHistory

T = TypeVar("T")
_VECTOR = TypeAdapter(list[InstantSample])
_MATRIX = TypeAdapter(list[RangeSeries])
MAX_POINTS_PER_RANGE_QUERY = 10_000  # Prometheus refuses more than 11,000 points per series


class PrometheusEndpoint(Protocol):
    """Where Prometheus is and how to reach it (the operator's `PrometheusSettings`)."""

    @property
    def url(self) -> object: ...

    @property
    def ca_file(self) -> Path | None: ...

    @property
    def timeout_seconds(self) -> float: ...

    def bearer_token(self) -> str | None: ...


class MetricsOptions(BaseModel):
    """How the engines are scraped, which sets how dopd reads them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scrape_interval_seconds: float = Field(
        15.0,
        gt=0,
        le=600,
        description="Scrape interval of the engines' pods; rate() ranges are at least four of them.",
    )
    stale_after_seconds: float | None = Field(
        None,
        gt=0,
        description="A gauge or arrival counter whose newest sample is older is stale (unknown); "
        "default three scrape intervals.",
    )
    max_concurrent_queries: int = Field(8, ge=1, le=256, description="Queries in flight at once.")
    history_cache_entries: int = Field(
        1024, ge=1, description="Models whose query sets and fetched history are kept between ticks."
    )

    @property
    def stale_after(self) -> float:
        return self.stale_after_seconds or 3.0 * self.scrape_interval_seconds


_URL_IN_ERROR = re.compile(r" with url: \S+")
_ROOT_CAUSE = re.compile(r"\[Errno \d+\] [^'\")]+")


def _without_url(text: str) -> str:
    """A requests error without the request URL (which carries the whole query, kilobytes of it): the
    root cause when one is named ("[Errno 111] Connection refused"), else the text, cut short."""
    cause = _ROOT_CAUSE.search(text)
    if cause is not None:
        return cause.group(0).strip()
    return _URL_IN_ERROR.sub("", text)[:300]


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, endpoint: PrometheusEndpoint) -> None:
        self.endpoint = endpoint

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.endpoint.bearer_token()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        return request


class MetricsSource:
    """Observations and arrival-rate histories of DisaggregatedModels, read from one Prometheus."""

    def __init__(self, prometheus: PrometheusEndpoint, options: MetricsOptions | None = None) -> None:
        self.options = options or MetricsOptions()
        self.url = str(prometheus.url).rstrip("/")
        session = requests.Session()
        if prometheus.ca_file is not None:
            session.verify = str(prometheus.ca_file)
        self._client = PrometheusConnect(
            url=self.url,
            auth=_BearerAuth(prometheus),
            session=session,
            timeout=prometheus.timeout_seconds,
            method="POST",  # the aggregate query is a few kilobytes
            retry=Retry(
                total=1,
                backoff_factor=0.2,
                status_forcelist=(502, 503, 504),
                allowed_methods=frozenset({"GET", "POST"}),
            ),
        )
        self._pool = ThreadPoolExecutor(
            self.options.max_concurrent_queries, thread_name_prefix="dopd-prometheus"
        )
        self._queries: OrderedDict[str, QuerySet] = OrderedDict()
        self._history: OrderedDict[str, dict[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------------------------------ public

    async def observe(
        self, spec: DisaggregatedModelSpec, namespace: str, prefill: RoleObservation, decode: RoleObservation
    ) -> Observation:
        """The load over spec.metrics.windowSeconds; fields Prometheus cannot support are None."""
        queries = self.queries(spec, namespace)
        now_s = time.time()
        aggregate, raw = await asyncio.gather(
            self._off_loop(self._instant, queries.aggregate, now_s, _VECTOR, "aggregate"),
            self._off_loop(self._instant, queries.raw, now_s, _MATRIX, "raw"),
        )
        return build_observation(queries, aggregate, raw, now_s, self.options.stale_after, prefill, decode)

    async def pod_loads(self, spec: DisaggregatedModelSpec, namespace: str, role: Role) -> dict[str, PodLoad]:
        """Requests in flight and KV usage per pod of `role`, now; pods without series are absent."""
        queries = self.queries(spec, namespace)
        answer = await self._off_loop(self._instant, queries.pod_load(role), time.time(), _VECTOR, "pod load")
        loads: dict[str, dict[str, float]] = {}
        for sample in answer:
            pod, tag = sample.metric.get("pod"), sample.metric.get(TAG_LABEL)
            if pod and tag and math.isfinite(sample.number):
                loads.setdefault(pod, {})[tag] = sample.number
        return {
            pod: PodLoad(inflight=values["inflight"], kv_usage=values.get("kv"))
            for pod, values in loads.items()
            if "inflight" in values
        }

    async def arrival_history(
        self,
        spec: DisaggregatedModelSpec,
        namespace: str,
        now: datetime,
        history_seconds: float,
        step_seconds: float,
    ) -> LoadHistory:
        """Arrival rate (rps) per `step_seconds` bucket, bucket start times, NaN where Prometheus has none.

        Each value is the rate over max(step, 4 scrape intervals) before the bucket's end; buckets are
        aligned to multiples of the step, as the simulator's are."""
        queries = self.queries(spec, namespace)
        rate_range = max(step_seconds, 4.0 * self.options.scrape_interval_seconds)
        expression = queries.history(rate_range)
        end_s = math.floor(now.timestamp() / step_seconds) * step_seconds
        points = max(int(history_seconds // step_seconds), 1)
        wanted = end_s - (points - 1) * step_seconds + np.arange(points, dtype=np.float64) * step_seconds
        key = f"{expression}|{step_seconds:g}"
        with self._lock:
            known = dict(self._history.get(key, {}))
        refetch_from = max((t for t in known if t <= end_s), default=-math.inf) - rate_range - step_seconds
        start_s = max(float(wanted[0]), refetch_from)
        fresh = await self._off_loop(self._range, expression, start_s, end_s, step_seconds)
        known.update(fresh)
        values = np.asarray([known.get(round(float(t), 3), math.nan) for t in wanted], dtype=np.float64)
        with self._lock:
            self._history[key] = {
                round(float(t), 3): float(v) for t, v in zip(wanted, values, strict=True) if math.isfinite(v)
            }
            self._history.move_to_end(key)
            while len(self._history) > self.options.history_cache_entries:
                self._history.popitem(last=False)
        return LoadHistory(wanted - step_seconds, values)

    def queries(self, spec: DisaggregatedModelSpec, namespace: str) -> QuerySet:
        """The model's query set, built once per (namespace, engine, metrics and SLO settings)."""
        key = "|".join(
            (namespace, spec.engine.value, spec.metrics.model_dump_json(), spec.slo.model_dump_json())
        )
        with self._lock:
            cached = self._queries.get(key)
        if cached is None:
            cached = query_set(spec, namespace)  # SpecError for unusable label names
            with self._lock:
                self._queries[key] = cached
                while len(self._queries) > self.options.history_cache_entries:
                    self._queries.popitem(last=False)
        return cached

    # ----------------------------------------------------------------------------------- helpers

    async def _off_loop(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    def _call(self, what: str, request: Any) -> Any:
        try:
            return request()
        except PrometheusApiClientException as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url} refused the {what} query: {exc}") from exc
        except requests.exceptions.JSONDecodeError as exc:  # a RequestException too: the body is not JSON
            raise MetricsUnavailable(
                f"Prometheus at {self.url} sent an unreadable {what} answer: {exc}"
            ) from exc
        except requests.RequestException as exc:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} did not answer the {what} query: {type(exc).__name__}: "
                f"{_without_url(str(exc))}"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} sent an unreadable {what} answer: {exc}"
            ) from exc

    def _instant(self, promql: str, at_s: float, shape: TypeAdapter[list[T]], what: str) -> list[T]:
        answer = self._call(what, lambda: self._client.custom_query(promql, params={"time": f"{at_s:.3f}"}))
        try:
            return shape.validate_python(answer)
        except ValidationError as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url}: unexpected {what} answer: {exc}") from exc

    def _range(self, promql: str, start_s: float, end_s: float, step_s: float) -> dict[float, float]:
        """Evaluation time -> value of a one-series range query, in chunks Prometheus accepts."""
        found: dict[float, float] = {}
        chunk_s = (MAX_POINTS_PER_RANGE_QUERY - 1) * step_s
        begin = start_s
        while begin <= end_s:
            stop = min(begin + chunk_s, end_s)
            answer = self._call(
                "arrival history",
                lambda b=begin, s=stop: self._client.custom_query_range(
                    promql,
                    start_time=datetime.fromtimestamp(b, UTC),
                    end_time=datetime.fromtimestamp(s, UTC),
                    step=f"{step_s:g}s",
                ),
            )
            try:
                series = _MATRIX.validate_python(answer)
            except ValidationError as exc:
                raise MetricsUnavailable(
                    f"Prometheus at {self.url}: unexpected history answer: {exc}"
                ) from exc
            if len(series) > 1:
                raise MetricsUnavailable(
                    f"the arrival history query returned {len(series)} series where one sum was expected"
                )
            for entry in series:
                for t, value in entry.values:
                    # a conservation estimate (vllm, sglang) can dip below zero by noise; no rate does
                    found[round(t, 3)] = max(value, 0.0) if math.isfinite(value) else math.nan
            begin = stop + step_s
        return found
