"""`MetricsSource`: the operator's one door to Prometheus, and the only I/O of `dopd_operator.metrics`.

The Kopf controller awaits two methods per model and tick; each runs prometheus-api-client (blocking
`requests`) in a bounded thread pool, off the event loop. Models whose queries differ only in label
values (a `presets.Batch`) share their queries (`sharing.SharedReads`): one query answers every model
of the batch that ticks within the same slice of time, and is split per model.

    await source.observe(spec, namespace, prefill, decode) -> Observation
        two instant queries per batch and half scrape interval (the preset's tagged aggregate and its
        raw range vector), read by `readings.build_observation`: a series that is missing, NaN or stale
        makes its field None and adds a line to `Observation.problems` (the planner then holds:
        unknown is never zero).
    await source.arrival_history(spec, namespace, now, history_seconds, step_seconds) -> LoadHistory
        the arrival rate per `step_seconds` bucket over the last `history_seconds`, from one range query
        per batch and step; buckets already fetched are kept and only the recent end is asked again.
    await source.pod_loads(spec, namespace, role) -> {pod: PodLoad}
        one instant query for one model, on scale-down.

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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from dopd_operator.metrics.presets import TAG_LABEL, QuerySet, batch_of, query_set
from dopd_operator.metrics.promql import InstantSample, Member, RangeSeries
from dopd_operator.metrics.readings import build_observation
from dopd_operator.metrics.sharing import SharedReads
from dopd_operator.planner_types import Observation, PodLoad, RoleObservation
from dopd_operator.tick import LoadHistory

S = TypeVar("S", InstantSample, RangeSeries)
_VECTOR = TypeAdapter(list[InstantSample])
_MATRIX = TypeAdapter(list[RangeSeries])
MAX_POINTS_PER_RANGE_QUERY = 10_000  # Prometheus refuses more than 11,000 points per series
# what each query is for, as `on_query` reports it (the operator's dopd_operator_prometheus_queries_total)
_PURPOSES = {"aggregate": "observe", "raw": "observe", "arrival history": "history", "pod load": "pod_load"}


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
    shared_answer_seconds: float | None = Field(
        None,
        gt=0,
        description="Ticks of models of one batch within this slice of time share one answer; default "
        "half a scrape interval (an answer is then at most one scrape behind a fresh one).",
    )
    member_idle_seconds: float = Field(
        900.0,
        gt=0,
        description="A model that has not read its batch for this long leaves it (its series are no "
        "longer queried); longer than any model's tick interval.",
    )

    @property
    def stale_after(self) -> float:
        return self.stale_after_seconds or 3.0 * self.scrape_interval_seconds

    @property
    def shared_answer(self) -> float:
        return self.shared_answer_seconds or self.scrape_interval_seconds / 2.0


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


@dataclass(frozen=True)
class _Instant:
    """One model's part of a batch's two instant answers."""

    evaluated_at_s: float
    aggregate: tuple[InstantSample, ...] = ()
    raw: tuple[RangeSeries, ...] = ()


@dataclass
class _Known:
    """The arrival-rate buckets fetched for one model: values by bucket end, and from when they were
    asked (a bucket before `from_s` was never asked; one after it without a value had no data)."""

    from_s: float
    values: dict[float, float] = field(default_factory=dict)


def _split(
    items: list[S], queries: QuerySet, metric: Callable[[S], Mapping[str, str]]
) -> dict[Member, list[S]]:
    """Each member's items (by its labels); items of no member (the product of the matchers selects
    series of models outside the batch) are dropped."""
    parts: dict[Member, list[S]] = {member: [] for member in queries.members}
    for item in items:
        part = parts.get(queries.member_of(metric(item)))
        if part is not None:
            part.append(item)
    return parts


class MetricsSource:
    """Observations and arrival-rate histories of DisaggregatedModels, read from one Prometheus; the
    models of one batch (`presets.Batch`) share each query (`sharing.SharedReads`)."""

    def __init__(
        self,
        prometheus: PrometheusEndpoint,
        options: MetricsOptions | None = None,
        on_query: Callable[[str], None] | None = None,
    ) -> None:
        """`on_query(purpose)` is called for each HTTP query sent (observe, history, pod_load)."""
        self.options = options or MetricsOptions()
        self.url = str(prometheus.url).rstrip("/")
        self._on_query = on_query or (lambda purpose: None)
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
        entries = self.options.history_cache_entries
        self._queries: OrderedDict[tuple[str, tuple[Member, ...]], QuerySet] = OrderedDict()
        self._known: OrderedDict[tuple[str, Member], _Known] = OrderedDict()
        self._wanted_from: dict[tuple[str, Member], float] = {}
        self._observations: SharedReads[_Instant] = SharedReads(self.options.member_idle_seconds, entries)
        self._histories: SharedReads[dict[float, float]] = SharedReads(
            self.options.member_idle_seconds, entries
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    @property
    def fetches(self) -> int:
        """Shared fetches started (observations and histories): what the batching saves is visible here."""
        return self._observations.fetches + self._histories.fetches

    # ------------------------------------------------------------------------------------ public

    async def observe(
        self, spec: DisaggregatedModelSpec, namespace: str, prefill: RoleObservation, decode: RoleObservation
    ) -> Observation:
        """The load over spec.metrics.windowSeconds; fields Prometheus cannot support are None."""
        queries = self.queries(spec, namespace)
        batch = batch_of(spec, namespace)
        now_s = time.time()
        token = math.floor(now_s / self.options.shared_answer)

        async def fetch(members: tuple[Member, ...]) -> dict[Member, _Instant]:
            shared = self.queries(spec, namespace, members)
            at_s = time.time()
            aggregate, raw = await asyncio.gather(
                self._off_loop(self._shared_instant, shared, shared.aggregate, at_s, _VECTOR, "aggregate"),
                self._off_loop(self._shared_instant, shared, shared.raw, at_s, _MATRIX, "raw"),
            )
            return {m: _Instant(at_s, tuple(aggregate[m]), tuple(raw[m])) for m in members}

        part = await self._observations.read(batch.key, batch.member, token, fetch, now_s)
        return build_observation(
            queries, part.aggregate, part.raw, part.evaluated_at_s, self.options.stale_after, prefill, decode
        )

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
        aligned to multiples of the step, as the simulator's are. Buckets already fetched are kept and
        only the recent end is asked again; the models of a batch share one range query per step."""
        batch = batch_of(spec, namespace)
        rate_range = max(step_seconds, 4.0 * self.options.scrape_interval_seconds)
        end_s = math.floor(now.timestamp() / step_seconds) * step_seconds
        points = max(int(history_seconds // step_seconds), 1)
        wanted = end_s - (points - 1) * step_seconds + np.arange(points, dtype=np.float64) * step_seconds
        key = f"{batch.key}|{step_seconds:g}|{rate_range:g}"
        self._wanted_from[(key, batch.member)] = float(wanted[0])

        async def fetch(members: tuple[Member, ...]) -> dict[Member, dict[float, float]]:
            return await self._fetch_history(spec, namespace, key, members, rate_range, end_s, step_seconds)

        known = await self._histories.read(key, batch.member, end_s, fetch, time.time())
        values = np.asarray([known.get(round(float(t), 3), math.nan) for t in wanted], dtype=np.float64)
        return LoadHistory(wanted - step_seconds, values)

    def queries(
        self, spec: DisaggregatedModelSpec, namespace: str, members: tuple[Member, ...] | None = None
    ) -> QuerySet:
        """The query set of `members` of the model's batch (default: the model alone), built once per
        batch shape and members; SpecError for unusable label names."""
        batch = batch_of(spec, namespace)  # SpecError for unusable label names
        chosen = members if members is not None else (batch.member,)
        # the SLOs are read per model, not queried: a model's own query set carries its own
        key = (batch.key if members is not None else f"{batch.key}|{spec.slo.model_dump_json()}", chosen)
        with self._lock:
            cached = self._queries.get(key)
            if cached is not None:
                self._queries.move_to_end(key)
        if cached is None:
            cached = query_set(spec, namespace, chosen)
            with self._lock:
                self._queries[key] = cached
                while len(self._queries) > self.options.history_cache_entries:
                    self._queries.popitem(last=False)
        return cached

    # ----------------------------------------------------------------------------------- helpers

    async def _fetch_history(
        self,
        spec: DisaggregatedModelSpec,
        namespace: str,
        key: str,
        members: tuple[Member, ...],
        rate_range: float,
        end_s: float,
        step_s: float,
    ) -> dict[Member, dict[float, float]]:
        """One range query for `members`, from the earliest bucket one of them lacks; their buckets."""
        starts = []
        for member in members:
            wanted_from = self._wanted_from.get((key, member), end_s)
            known = self._known.get((key, member))
            if known is None or not known.values or wanted_from < known.from_s:
                starts.append(wanted_from)
            else:  # the recent end again: its last buckets were computed before all their scrapes were in
                newest = max(t for t in known.values if t <= end_s) if known.values else end_s
                starts.append(max(wanted_from, newest - rate_range - step_s))
        start_s = min(starts)
        shared = self.queries(spec, namespace, members)
        fresh = await self._off_loop(self._range, shared, shared.history(rate_range), start_s, end_s, step_s)
        parts: dict[Member, dict[float, float]] = {}
        for member in members:
            wanted_from = self._wanted_from.get((key, member), start_s)
            known = self._known.pop((key, member), None) or _Known(start_s)
            known.values.update(fresh[member])
            known.from_s = max(min(known.from_s, start_s), wanted_from)
            known.values = {t: v for t, v in known.values.items() if t >= known.from_s and math.isfinite(v)}
            self._known[(key, member)] = known
            parts[member] = dict(known.values)
        while len(self._known) > self.options.history_cache_entries:
            dropped, _ = self._known.popitem(last=False)
            self._wanted_from.pop(dropped, None)
        return parts

    async def _off_loop(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    def _call(self, what: str, request: Any) -> Any:
        self._on_query(_PURPOSES[what])
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

    def _instant(self, promql: str, at_s: float, shape: TypeAdapter[list[S]], what: str) -> list[S]:
        answer = self._call(what, lambda: self._client.custom_query(promql, params={"time": f"{at_s:.3f}"}))
        try:
            return shape.validate_python(answer)
        except ValidationError as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url}: unexpected {what} answer: {exc}") from exc

    def _shared_instant(
        self, queries: QuerySet, promql: str, at_s: float, shape: TypeAdapter[list[S]], what: str
    ) -> dict[Member, list[S]]:
        """A batch's instant query, its answer split by member (in the worker thread: answers for 200
        models are tens of thousands of samples)."""
        return _split(self._instant(promql, at_s, shape, what), queries, lambda item: item.metric)

    def _range(
        self, queries: QuerySet, promql: str, start_s: float, end_s: float, step_s: float
    ) -> dict[Member, dict[float, float]]:
        """Each member's evaluation time -> value of a range query with one series per member, in chunks
        Prometheus accepts."""
        found: dict[Member, dict[float, float]] = {member: {} for member in queries.members}
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
            for member, entries in _split(list(series), queries, lambda entry: entry.metric).items():
                if len(entries) > 1:
                    raise MetricsUnavailable(
                        f"the arrival history query returned {len(entries)} series for {member} where one "
                        "sum was expected"
                    )
                for entry in entries:
                    for t, value in entry.values:
                        # a conservation estimate (vllm, sglang) can dip below zero by noise; no rate does
                        found[member][round(t, 3)] = max(value, 0.0) if math.isfinite(value) else math.nan
            begin = stop + step_s
        return found
