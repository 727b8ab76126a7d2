"""Engine presets: which series carry each `Observation` field for dopd, vLLM and SGLang (as data), and
the query set built once from a spec, the shape of a KEDA scaler (typed metadata, one query set).

Where each field comes from (docs/metrics.md has the PromQL and the reasons):

| field | dopd (`role`) | vllm (`role`, relabeled) | sglang (`engine_type`) |
|---|---|---|---|
| arrival rate, burstiness, trend | `dopd_requests_arrived_total` router (counted at admission) | prefill completions `vllm:request_success_total` + growth of `vllm:num_requests_waiting` + `vllm:num_requests_running` (estimate) | prefill `sglang:num_requests_total` + growth of `sglang:num_queue_reqs` + `sglang:num_running_reqs` (estimate) |
| prompt tokens (mean, P90) | `dopd_prompt_tokens` router (at arrival: the demand) | `vllm:request_prompt_tokens` prefill | `sglang:prompt_tokens_histogram` prefill; mean from `sglang:prompt_tokens_total` / `sglang:num_requests_total` without it |
| output tokens (mean, P90) | `dopd_generation_tokens` decode | `vllm:request_generation_tokens` decode | `sglang:generation_tokens_histogram` decode; mean from the totals without it |
| prefill queue depth | `dopd_requests_waiting` router + prefill | `vllm:num_requests_waiting` prefill | `sglang:num_queue_reqs` prefill |
| decode KV usage (mean) | `dopd_kv_cache_usage_ratio` decode | `vllm:kv_cache_usage_perc` decode (`vllm:gpu_cache_usage_perc` fallback) | `sglang:token_usage` decode |
| decode running | `dopd_requests_running` decode | `vllm:num_requests_running` decode | `sglang:num_running_reqs` decode |
| decode residents' tokens generated so far (mean) | `dopd_decode_generated_tokens` decode / decode running | unknown (not read) | unknown (not read) |
| TTFT at the SLO percentile, attainment | `dopd_time_to_first_token_seconds` router (end to end) | `vllm:time_to_first_token_seconds` prefill (queue + prefill) | `sglang:time_to_first_token_seconds` prefill |
| TPOT at the SLO percentile, attainment | `dopd_request_time_per_output_token_seconds` router (per request) | `vllm:inter_token_latency_seconds` decode (`vllm:time_per_output_token_seconds` fallback), attainment scaled by the waits below | `sglang:inter_token_latency_seconds` decode, likewise |
| TPOT mean as users see it (`_sum`), decode step mean | `dopd_inter_token_latency_seconds` router; the step mean takes `dopd_decode_slot_wait_seconds` decode's `_sum` off | `vllm:inter_token_latency_seconds` decode is the step mean; the mean users see adds `vllm:request_queue_time_seconds` decode's `_sum` | `sglang:inter_token_latency_seconds` decode is the step mean; the mean users see adds `sglang:queue_time_seconds` decode's `_sum` |
| prefix-cache hit rate (prompt tokens served from the cache / looked up) | `dopd_prefix_cache_hits_total` / `dopd_prefix_cache_queries_total` prefill | `vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total` prefill | `sglang:cached_tokens_total` / `sglang:prompt_tokens_total` prefill |
| shed rate (requests the router turned away) | `dopd_requests_rejected_total` + `dopd_requests_expired_total` router | 0: arrivals are counted at the engines | 0: likewise |

Three queries per batch of models (`Batch`: models whose queries differ only in label values):
`aggregate` (one instant query: per-bucket increases of every histogram and counter increases, each
part tagged with the `dopd_q` label), `raw` (one instant query of a range vector: the raw samples of
the gauges and arrival counters, so that staleness, NaN, counter resets and per-interval arrivals are
seen) and `history(range)` (the arrival-rate range query for the forecaster). Every aggregate is
grouped `by` the batch's labels, so each answer says whose it is (`QuerySet.member_of`). Pure.
Callers: `source.MetricsSource`, `readings`, the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from dopd_operator.api import DisaggregatedModelSpec, Engine
from dopd_operator.metrics.estimators import TREND_WINDOW_SECONDS
from dopd_operator.metrics.promql import (
    Member,
    Selector,
    check_selector_labels,
    duration,
    group_selector,
    member_of,
    quote,
)

RoleName = Literal["router", "prefill", "decode"]
TAG_LABEL = "dopd_q"  # label the aggregate query tags its parts with (label_replace)


@dataclass(frozen=True)
class HistogramRead:
    family: str  # base name, without _bucket/_sum/_count
    role: RoleName
    fallback: str | None = None  # a deprecated name, read only when `family` has no series


@dataclass(frozen=True)
class GaugeRead:
    families: tuple[str, ...]  # preferred first; later ones are deprecated fallbacks
    roles: tuple[RoleName, ...]  # every role listed must report (their values add up)
    combine: Literal["sum", "mean"]


@dataclass(frozen=True)
class ArrivalRead:
    role: RoleName
    counters: tuple[str, ...]  # their increases are arrivals (dopd) or completions (vllm, sglang)
    in_system: tuple[str, ...] = ()  # gauges whose growth adds to the completions: conservation

    @property
    def estimated(self) -> bool:
        return bool(self.in_system)


@dataclass(frozen=True)
class LengthRead:
    histogram: HistogramRead
    totals: tuple[str, str] | None = None  # (tokens, requests) counters: the mean without the histogram


@dataclass(frozen=True)
class PrefixCacheRead:
    """The prefill pool's prefix-cache hit rate over the window: the increase of `hits` (prompt tokens
    served from the cache) over that of `queries` (prompt tokens looked up), summed over `role`'s pods.
    Optional: when unknown, prefill is sized as if nothing hits (the pool errs large)."""

    role: RoleName
    hits: str
    queries: str


@dataclass(frozen=True)
class PrefixReuseRead:
    """The router's reuse distances of prompt blocks over the window: the `histogram`'s buckets, and the
    increase of `expected` (the samples an unskewed stream would give, for SHARDS-adj's correction);
    where in their prompts the sampled blocks sit (`sampled_positions`) and those reused
    (`reused_positions`): how the hits fall on prompts."""

    role: RoleName
    histogram: str
    expected: str
    sampled_positions: str
    reused_positions: str


@dataclass(frozen=True)
class EnginePreset:
    engine: Engine
    default_role_label: str
    model_label: str  # where the engine puts the served model name (for spec.metrics.selector)
    arrival: ArrivalRead
    queue_depth: GaugeRead
    # sequences at the decode pods waiting to join a batch (their KV arriving, or no slot free)
    decode_queue_depth: GaugeRead
    kv_usage: GaugeRead
    running: GaugeRead
    input_tokens: LengthRead
    output_tokens: LengthRead
    ttft: HistogramRead
    # whether `ttft` includes the KV transfer to decode (dopd's router: the first token comes from the
    # decode worker once the KV has arrived) or ends with the prefill (vLLM's, SGLang's prefill pods)
    ttft_includes_kv_transfer: bool
    tpot: HistogramRead
    # the decode pods' wait before a sequence's first decode step (vLLM, SGLang: its KV, then a free
    # slot; dopd: a free slot, its first token having left with the KV). Its sum tells the gap users see
    # from the engine's step: the decode correction learns the engine from the step alone (a pool that
    # makes sequences wait is short of slots, which the decode backlog sizes, not slow), and the gap
    # users see, waits included, is what the resident output lengths' Little's law divides by. Its
    # buckets scale the TPOT attainment where no per-request TPOT is read
    # (`readings._Reader.tpot_attainment_with_waits`)
    decode_wait: HistogramRead
    # whether `tpot` times that wait inside a sequence's first gap (dopd's router streams the tokens as
    # its user sees them) or leaves it out (vLLM's and SGLang's inter-token histograms time a running
    # sequence's steps only)
    tpot_includes_decode_wait: bool
    prefix_cache: PrefixCacheRead
    # the router's counters of requests it turned away (shed at entry, expired in its queue): their
    # increase is the shed rate; none where arrivals are counted at the engines, which see only what
    # was admitted (the shed rate is then 0 by construction)
    shed: tuple[str, ...] = ()
    # each finished request's TPOT as its user saw it (its mean gap, first token to last, waits
    # included), where the engine exposes one: the TPOT percentile and attainment are read from it,
    # since the SLO is per request; the means stay the gaps' (`tpot`, with `decode_wait`: the gap users
    # see and the decode step the decode correction learns from)
    request_tpot: HistogramRead | None = None
    # the router's reuse distances of prompt blocks (`dopd_worker.prefix_reuse`): how the prefix-cache
    # hit rate moves with the prefill pool's size; none where no router of ours sees the prompts (the
    # hit rate is then taken as the same at every size)
    prefix_reuse: PrefixReuseRead | None = None
    # the tokens the decode pods' running sequences have generated so far, summed: over the running
    # count, how far the residents are into their answers, which reads longer answers seated before
    # they finish (`planner_lengths.seated_output_lengths`); none where the engine does not export it
    generated_tokens: GaugeRead | None = None

    def histograms(self) -> dict[str, tuple[HistogramRead, bool]]:
        """Key -> (read, whether its mean is needed)."""
        found = {
            "ttft": (self.ttft, False),
            "tpot": (self.tpot, True),  # its mean teaches the decode correction
            # the decode waits: their sum parts the gap users see from the engine's step, their buckets
            # scale the attainment where no per-request TPOT is read
            "decode_wait": (self.decode_wait, True),
            "input": (self.input_tokens.histogram, True),
            "output": (self.output_tokens.histogram, True),
        }
        if self.request_tpot is not None:
            # its sum: the gap over a sequence's life, for the residents' Little's law
            found["request_tpot"] = (self.request_tpot, True)
        return found

    def gauges(self) -> dict[str, GaugeRead]:
        found = {
            "queue_depth": self.queue_depth,
            "decode_queue_depth": self.decode_queue_depth,
            "kv_usage": self.kv_usage,
            "running": self.running,
        }
        if self.generated_tokens is not None:
            found["generated_tokens"] = self.generated_tokens
        return found

    def raw_families(self) -> tuple[str, ...]:
        names = [*self.arrival.counters, *self.arrival.in_system]
        for read in self.gauges().values():
            names.extend(read.families)
        return tuple(dict.fromkeys(names))

    def raw_roles(self) -> tuple[RoleName, ...]:
        roles: list[RoleName] = [self.arrival.role]
        for read in self.gauges().values():
            roles.extend(read.roles)
        return tuple(dict.fromkeys(roles))


DOPD = EnginePreset(
    engine=Engine.DOPD,
    default_role_label="role",
    model_label="model",
    arrival=ArrivalRead("router", ("dopd_requests_arrived_total",)),
    queue_depth=GaugeRead(("dopd_requests_waiting",), ("router", "prefill"), "sum"),
    decode_queue_depth=GaugeRead(("dopd_requests_waiting",), ("decode",), "sum"),
    kv_usage=GaugeRead(("dopd_kv_cache_usage_ratio",), ("decode",), "mean"),
    running=GaugeRead(("dopd_requests_running",), ("decode",), "sum"),
    # the router records prompt lengths at arrival: the demand's mix, shed requests included (the
    # prefill workers only see the admitted mix, which admission makes shorter than the demand)
    input_tokens=LengthRead(HistogramRead("dopd_prompt_tokens", "router")),
    output_tokens=LengthRead(HistogramRead("dopd_generation_tokens", "decode")),
    ttft=HistogramRead("dopd_time_to_first_token_seconds", "router"),
    ttft_includes_kv_transfer=True,
    tpot=HistogramRead("dopd_inter_token_latency_seconds", "router"),
    decode_wait=HistogramRead("dopd_decode_slot_wait_seconds", "decode"),
    tpot_includes_decode_wait=True,
    request_tpot=HistogramRead("dopd_request_time_per_output_token_seconds", "router"),
    prefix_cache=PrefixCacheRead(
        "prefill", "dopd_prefix_cache_hits_total", "dopd_prefix_cache_queries_total"
    ),
    shed=("dopd_requests_rejected_total", "dopd_requests_expired_total"),
    prefix_reuse=PrefixReuseRead(
        "router",
        "dopd_prompt_reuse_distance_tokens",
        "dopd_prompt_reuse_expected_samples_total",
        "dopd_prompt_reuse_sampled_position_ratio",
        "dopd_prompt_reuse_reused_position_ratio",
    ),
    generated_tokens=GaugeRead(("dopd_decode_generated_tokens",), ("decode",), "sum"),
)

VLLM = EnginePreset(
    engine=Engine.VLLM,
    default_role_label="role",
    model_label="model_name",
    arrival=ArrivalRead(
        "prefill", ("vllm:request_success_total",), ("vllm:num_requests_waiting", "vllm:num_requests_running")
    ),
    queue_depth=GaugeRead(("vllm:num_requests_waiting",), ("prefill",), "sum"),
    decode_queue_depth=GaugeRead(("vllm:num_requests_waiting",), ("decode",), "sum"),
    kv_usage=GaugeRead(("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), ("decode",), "mean"),
    running=GaugeRead(("vllm:num_requests_running",), ("decode",), "sum"),
    input_tokens=LengthRead(HistogramRead("vllm:request_prompt_tokens", "prefill")),
    output_tokens=LengthRead(HistogramRead("vllm:request_generation_tokens", "decode")),
    ttft=HistogramRead("vllm:time_to_first_token_seconds", "prefill"),
    ttft_includes_kv_transfer=False,
    tpot=HistogramRead(
        "vllm:inter_token_latency_seconds", "decode", fallback="vllm:time_per_output_token_seconds"
    ),
    decode_wait=HistogramRead("vllm:request_queue_time_seconds", "decode"),
    tpot_includes_decode_wait=False,
    prefix_cache=PrefixCacheRead(
        "prefill", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
    ),
)

SGLANG = EnginePreset(
    engine=Engine.SGLANG,
    default_role_label="engine_type",
    model_label="model_name",
    arrival=ArrivalRead(
        "prefill", ("sglang:num_requests_total",), ("sglang:num_queue_reqs", "sglang:num_running_reqs")
    ),
    queue_depth=GaugeRead(("sglang:num_queue_reqs",), ("prefill",), "sum"),
    decode_queue_depth=GaugeRead(("sglang:num_queue_reqs",), ("decode",), "sum"),
    kv_usage=GaugeRead(("sglang:token_usage",), ("decode",), "mean"),
    running=GaugeRead(("sglang:num_running_reqs",), ("decode",), "sum"),
    input_tokens=LengthRead(
        HistogramRead("sglang:prompt_tokens_histogram", "prefill"),
        totals=("sglang:prompt_tokens_total", "sglang:num_requests_total"),
    ),
    output_tokens=LengthRead(
        HistogramRead("sglang:generation_tokens_histogram", "decode"),
        totals=("sglang:generation_tokens_total", "sglang:num_requests_total"),
    ),
    ttft=HistogramRead("sglang:time_to_first_token_seconds", "prefill"),
    ttft_includes_kv_transfer=False,
    tpot=HistogramRead("sglang:inter_token_latency_seconds", "decode"),
    decode_wait=HistogramRead("sglang:queue_time_seconds", "decode"),
    tpot_includes_decode_wait=False,
    # cached_tokens_total carries cache_source (device/host/storage): the sum is every cached token
    prefix_cache=PrefixCacheRead("prefill", "sglang:cached_tokens_total", "sglang:prompt_tokens_total"),
)

PRESETS: dict[Engine, EnginePreset] = {p.engine: p for p in (DOPD, VLLM, SGLANG)}


@dataclass(frozen=True)
class Batch:
    """Models whose queries differ only in the values of their labels share one query set: the same
    engine, label names and windows (the SLOs and percentile are read per model, not queried)."""

    key: str  # everything that shapes the query text but the label values
    labels: tuple[str, ...]  # the namespace label, then the selector's label names, sorted
    member: Member  # this model's values of `labels`


def batch_of(spec: DisaggregatedModelSpec, namespace: str) -> Batch:
    """The batch `spec`'s model belongs to; SpecError when its label names cannot be used."""
    metrics = spec.metrics
    preset = PRESETS[spec.engine]
    role_label = metrics.role_label or preset.default_role_label
    labels = check_selector_labels(metrics.namespace_label, metrics.selector, role_label)
    key = "|".join((spec.engine.value, role_label, ",".join(labels), f"{metrics.window_seconds:g}"))
    return Batch(key, labels, (namespace, *(metrics.selector[name] for name in labels[1:])))


@dataclass(frozen=True)
class QuerySet:
    """The queries of one batch of models (`Batch`), built once for its members; every aggregate is
    grouped `by` the batch's labels, so each answer carries the member it belongs to (`member_of`).
    Read with one model's spec, it is that model's query set (a batch of one)."""

    preset: EnginePreset
    labels: tuple[str, ...]
    members: tuple[Member, ...]
    role_label: str
    window_seconds: float
    raw_range_seconds: float
    percentile: float  # spec.slo.percentile: latencies are read at it
    ttft_slo_seconds: float
    tpot_slo_seconds: float
    parts: tuple[tuple[str, str], ...]  # (tag, instant-vector expression) of the aggregate query
    raw: str  # instant query of a range vector
    arrival_counters: str  # selector of the arrival (or completion) counters
    # one selector per in-system gauge (conservation), empty for dopd: delta() drops the metric name,
    # so two families in one selector would collide on the same labels
    arrival_in_system: tuple[str, ...]
    role_selectors: dict[RoleName, Selector]

    @property
    def by(self) -> str:
        return ", ".join(self.labels)

    @property
    def aggregate(self) -> str:
        return " or ".join(
            f"label_replace({expr}, {quote(TAG_LABEL)}, {quote(tag)}, {quote('')}, {quote('')})"
            for tag, expr in self.parts
        )

    def member_of(self, metric: Mapping[str, str]) -> Member:
        return member_of(self.labels, metric)

    def pod_load(self, role: RoleName) -> str:
        """Per pod of `role`: requests in flight (running + waiting), tagged `inflight`, and KV-cache usage
        (decode), tagged `kv`: what the operator ranks scale-down victims by. Needs a `pod` label on the
        engine series (Prometheus' Kubernetes service discovery gives it)."""
        selector = self.role_selectors[role]
        inflight = f"sum by (pod) ({selector.render([*self.preset.running.families, *self.preset.queue_depth.families])})"
        parts = [("inflight", inflight)]
        if role == "decode":
            parts.append(("kv", f"max by (pod) ({selector.render(self.preset.kv_usage.families)})"))
        return " or ".join(
            f"label_replace({expr}, {quote(TAG_LABEL)}, {quote(tag)}, {quote('')}, {quote('')})"
            for tag, expr in parts
        )

    def history(self, range_seconds: float) -> str:
        """Arrival rate (requests per second) of each member over `range_seconds` before each evaluation
        time."""
        span = duration(range_seconds)
        terms = [f"sum by ({self.by}) (rate({self.arrival_counters}[{span}]))"]
        terms += [
            f"sum by ({self.by}) (delta({gauge}[{span}])) / {range_seconds:g}"
            for gauge in self.arrival_in_system
        ]
        return " + ".join(terms)


def query_set(
    spec: DisaggregatedModelSpec, namespace: str, members: Sequence[Member] | None = None
) -> QuerySet:
    """The preset's queries for `spec`'s batch with `members` (default: the model alone); SpecError when
    the spec's label names cannot be used."""
    preset = PRESETS[spec.engine]
    metrics = spec.metrics
    role_label = metrics.role_label or preset.default_role_label
    batch = batch_of(spec, namespace)
    chosen_members = tuple(members) if members is not None else (batch.member,)
    by = ", ".join(batch.labels)

    def selector(*roles: RoleName) -> Selector:
        return group_selector(batch.labels, chosen_members, role_label, roles)

    window = duration(metrics.window_seconds)

    def counter_increase(role: RoleName, family: str, suffix: str = "", before: bool = False) -> str:
        """One counter family's increase over the window (`before`: over the window before it, `offset`
        one window), per member. One family each: increase() drops the name, so two families in one
        selector collide on the same labels and Prometheus refuses the whole query (HTTP 422)."""
        shift = f" offset {window}" if before else ""
        return f"sum by ({by}) (increase({selector(role).render([family], suffix)}[{window}]{shift}))"

    parts: list[tuple[str, str]] = []
    for key, (read, with_sum) in preset.histograms().items():
        chosen = selector(read.role)
        for tag, family in ((key, read.family), (f"{key}.fallback", read.fallback)):
            if family is None:
                continue
            buckets = chosen.render([family], "_bucket")
            parts.append((f"{tag}/bucket", f"sum by (le, {by}) (increase({buckets}[{window}]))"))
            if with_sum:
                parts.append((f"{tag}/sum", counter_increase(read.role, family, "_sum")))
    for key, read_length in (("input", preset.input_tokens), ("output", preset.output_tokens)):
        role, histogram = read_length.histogram.role, read_length.histogram.family
        # the window before this one, for the lengths' trend (`estimators.length_trend`)
        for part, suffix in (("sum", "_sum"), ("count", "_count")):
            parts.append((f"{key}.previous/{part}", counter_increase(role, histogram, suffix, before=True)))
        if read_length.totals is not None:
            for part, family in zip(("tokens", "requests"), read_length.totals, strict=True):
                parts.append((f"{key}.totals/{part}", counter_increase(role, family)))
    if preset.prefix_reuse is not None:
        reuse = preset.prefix_reuse
        buckets = selector(reuse.role).render([reuse.histogram], "_bucket")
        parts.append(("reuse/bucket", f"sum by (le, {by}) (increase({buckets}[{window}]))"))
        parts.append(("reuse/expected", counter_increase(reuse.role, reuse.expected)))
        for key, family in (
            ("reuse_sampled", reuse.sampled_positions),
            ("reuse_reused", reuse.reused_positions),
        ):
            positions = selector(reuse.role).render([family], "_bucket")
            parts.append((f"{key}/bucket", f"sum by (le, {by}) (increase({positions}[{window}]))"))
        # how many routers sampled prompts: each measures distances in its own share of the stream only
        expected_series = selector(reuse.role).render([reuse.expected])
        parts.append(("reuse/routers", f"count by ({by}) (increase({expected_series}[{window}]) > 0)"))
    prefix = preset.prefix_cache
    parts.append(("prefix/hits", counter_increase(prefix.role, prefix.hits)))
    parts.append(("prefix/queries", counter_increase(prefix.role, prefix.queries)))
    parts += [(f"shed/{family}", counter_increase("router", family)) for family in preset.shed]
    raw_range = max(metrics.window_seconds, TREND_WINDOW_SECONDS)
    arrival = preset.arrival
    return QuerySet(
        preset=preset,
        labels=batch.labels,
        members=chosen_members,
        role_label=role_label,
        window_seconds=metrics.window_seconds,
        raw_range_seconds=raw_range,
        percentile=spec.slo.percentile,
        ttft_slo_seconds=spec.slo.ttft_seconds,
        tpot_slo_seconds=spec.slo.tpot_seconds,
        parts=tuple(parts),
        raw=f"{selector(*preset.raw_roles()).render(preset.raw_families())}[{duration(raw_range)}]",
        arrival_counters=selector(arrival.role).render(arrival.counters),
        arrival_in_system=tuple(
            selector(arrival.role).render([family]) for family in arrival.in_system or ()
        ),
        role_selectors={role: selector(role) for role in ("prefill", "decode")},
    )


def check_metrics_spec(spec: DisaggregatedModelSpec) -> None:
    """Raise SpecError when spec.metrics cannot make queries (bad or reserved label names)."""
    query_set(spec, "namespace")
