"""Each engine preset reads the engine emulator speaking that engine's names, through a real Prometheus:
the fields the planner needs are known and agree with the emulator's ground truth; a NaN series, a
missing family and a stale target each make exactly what they carry unknown, never zero.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dopd_builders import make_spec
from dopd_e2e.operator import wait_until
from dopd_emulator.config import EmulatorConfig, FamilyFault, Faults, StaticReplicas, TraceLoad
from dopd_emulator.emulator import Emulator
from dopd_operator.api import DisaggregatedModelSpec
from dopd_operator.controller.settings import PrometheusSettings
from dopd_operator.metrics.source import MetricsOptions, MetricsSource
from dopd_operator.planner_types import Observation, RoleObservation
from dopd_worker.ports import free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ENGINES = ("dopd", "vllm", "sglang")
# what each engine's KV-usage family is called (the family the NaN fault hits)
KV_FAMILY = {
    "dopd": "dopd_kv_cache_usage_ratio",
    "vllm": "vllm:kv_cache_usage_perc",
    "sglang": "sglang:token_usage",
}
ARRIVAL_FAMILY = {
    "dopd": "dopd_requests_arrived_total",
    "vllm": "vllm:request_success_total",
    "sglang": "sglang:num_requests_total",
}
MODEL_LABEL = {"dopd": "model", "vllm": "model_name", "sglang": "model_name"}


def _spec(engine: str) -> DisaggregatedModelSpec:
    return make_spec(
        engine=engine,
        model=f"org/{engine}",
        slo={"ttftSeconds": 1.5, "tpotSeconds": 0.05, "percentile": 90},
        metrics={"windowSeconds": 15, "selector": {MODEL_LABEL[engine]: f"org/{engine}"}},
    )


@pytest.fixture(scope="module")
def engines(prometheus_factory: Any) -> Iterator[tuple[Any, dict[str, Emulator]]]:
    ports = dict(zip(ENGINES, free_ports(len(ENGINES)), strict=True))
    started: dict[str, Emulator] = {}
    try:
        for engine in ENGINES:
            config = EmulatorConfig(
                namespace="presets",
                name=engine,
                spec=_spec(engine),
                load=TraceLoad(trace="synthetic:poisson,rate_rps=20,duration_s=3600", seed=3),
                replicas=StaticReplicas(prefill=2, decode=2),
                port=ports[engine],
            )
            started[engine] = Emulator(config)
            started[engine].start()
        prometheus = prometheus_factory(
            {"engines": [f"127.0.0.1:{p}" for p in ports.values()]}, scrape_interval="1s"
        )
        prometheus.wait_targets_up()
        time.sleep(20)  # a 15 s window of samples
        yield prometheus, started
    finally:
        for emulator in started.values():
            emulator.stop()


def _observe(prometheus: Any, engine: str) -> Observation:
    source = MetricsSource(
        PrometheusSettings(url=prometheus.url), MetricsOptions(scrape_interval_seconds=1.0)
    )
    try:
        two = RoleObservation(current=2, ready=2)
        return asyncio.run(source.observe(_spec(engine), "presets", two, two))
    finally:
        source.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_preset_reads_what_the_engine_does(engines: tuple[Any, dict[str, Emulator]], engine: str) -> None:
    prometheus, emulators = engines
    obs = _observe(prometheus, engine)
    truth = emulators[engine].truth()
    assert obs.load_known, obs.problems
    # the arrival rate over the 15 s window agrees with the emulator's (vLLM and SGLang estimate it by
    # conservation at the prefill pool, which lags a little)
    assert obs.arrival_rate_rps == pytest.approx(truth.arrival_rate_rps, rel=0.35), (obs, truth)
    assert obs.arrival_rate_rps == pytest.approx(20.0, rel=0.35)
    # the synthetic lengths: prompts mean 1155 tokens, outputs mean 211 (the Azure 2023 conversation mix)
    assert obs.input_tokens_mean == pytest.approx(1155, rel=0.3)
    assert obs.output_tokens_mean == pytest.approx(211, rel=0.5)
    assert obs.decode_kv_usage is not None and 0 <= obs.decode_kv_usage <= 1
    assert obs.decode_running is not None and obs.decode_running > 0
    assert obs.ttft_seconds is not None and obs.tpot_seconds is not None
    assert obs.tpot_mean_seconds is not None and 0 < obs.tpot_mean_seconds <= obs.tpot_seconds * 1.5
    # the decode pods' slot waits are read too: the engine's step is known, never above the gap users see
    step_s = obs.decode_step_mean_seconds
    assert step_s is not None and 0 < step_s <= obs.tpot_mean_seconds, obs.problems
    assert obs.latency_percentile == 90.0
    # nothing is turned away at 20 rps: for dopd the router's shed counters are there at zero (a missing
    # series would be unknown); vLLM and SGLang count arrivals at the engines, which see only admissions
    assert obs.shed_rate_rps == 0.0, obs.problems
    # the emulated engines look every prompt up in a prefix cache and never hit: a measured 0, not unknown
    assert obs.prefix_cache_hit_rate == 0.0, obs.problems


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_missing_and_stale_series_are_unknown_not_zero(
    engines: tuple[Any, dict[str, Emulator]], engine: str
) -> None:
    prometheus, emulators = engines
    emulator = emulators[engine]
    try:
        emulator.set_faults(Faults(nan=(FamilyFault(family=KV_FAMILY[engine]),)))
        nan = wait_until(
            lambda: (o := _observe(prometheus, engine)).decode_kv_usage is None and o, 20, "a NaN KV usage"
        )
        assert any("KV usage" in p for p in nan.problems), nan.problems
        assert nan.load_known  # only what the NaN family carries is unknown

        emulator.set_faults(Faults(omit=(FamilyFault(family=ARRIVAL_FAMILY[engine]),)))
        gone = wait_until(
            lambda: (o := _observe(prometheus, engine)).arrival_rate_rps is None and o, 30, "no arrivals"
        )
        assert not gone.load_known and any("arrival rate" in p for p in gone.problems), gone.problems

        emulator.set_faults(Faults(stale=True))  # /metrics stops answering: the series go stale
        # the arrival counter is still unknown from the fault before: wait for the gauges to go stale
        stale = wait_until(
            lambda: (o := _observe(prometheus, engine)).decode_running is None and o, 30, "stale gauges"
        )
        assert stale.arrival_rate_rps is None and stale.decode_kv_usage is None, stale
        assert not stale.load_known
    finally:
        emulator.set_faults(Faults())
    wait_until(lambda: _observe(prometheus, engine).load_known, 40, "recovery once the faults are lifted")
