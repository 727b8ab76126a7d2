"""What an SRE checks before trusting an autoscaler with GPUs, part 1: faults of its inputs and of itself.

- The real Prometheus is killed mid-run and restarted: replicas hold, MetricsHealthy=False names the
  cause, one Warning Event, retries continue, and it recovers by itself.
- A series the planner needs goes missing (the emulator stops exposing it): unknown is never zero.
- The operator is SIGKILLed in the middle of a scale-up and restarted: the scale-up continues without
  flapping, the decisions keep their cadence, and the planner's memory (recommendation history for the
  stabilization windows) continues from the status it left.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dopd_e2e.cluster import Cluster
from dopd_e2e.operator import wait_until
from dopd_e2e.prometheus import start_prometheus
from dopd_e2e.scenario import Scenario, model, scenario, write_trace
from dopd_emulator.config import FamilyFault, Faults

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def s(k8s_cluster: Cluster, prometheus_factory: Any, tmp_path: Path) -> Iterator[Scenario]:
    with scenario(k8s_cluster, prometheus_factory, tmp_path, emulators=1, prefix="faults") as found:
        yield found
        assert not found.operator_errors(), f"the operator logged errors: {found.operator_errors()[:3]}"


def _reasons(s: Scenario, name: str) -> list[str]:
    return [str(e.get("reason")) for e in s.events(name)]


def _ticks(s: Scenario, outcome: str) -> float:
    for line in s.operator.metrics_text().splitlines():
        if line.startswith(f'dopd_operator_ticks_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_prometheus_outage_holds_replicas_says_why_and_recovers_by_itself(
    s: Scenario, tmp_path: Path
) -> None:
    s.start_operator()
    doc = model("steady", s.namespace)
    s.apply(doc)
    s.wait_children("steady")
    emulator = s.emulate(
        doc, write_trace(tmp_path / "steady.csv", [(40, 600)], isl=100, osl=700, seed=5), at_end="loop"
    )
    wait_until(lambda: s.replicas("steady")[1] >= 2, 90, "decode to grow under 40 rps")
    s.wait_condition("steady", "MetricsHealthy", "True", 30, "healthy")
    time.sleep(6)  # one more tick at this load
    layout = s.replicas("steady")

    port = s.prometheus.port
    s.prometheus.kill()
    down = s.wait_condition(
        "steady", "MetricsHealthy", "False", 30, "MetricsHealthy=False after the Prometheus outage"
    )
    assert down["reason"] == "PrometheusUnavailable"
    assert f"127.0.0.1:{port}" in down["message"], down["message"]
    before = _ticks(s, "metrics_unknown")
    held = {s.replicas("steady")}
    for _ in range(8):  # a quarter of a minute of outage, sampled
        time.sleep(2)
        held.add(s.replicas("steady"))
    assert held == {layout}, f"replicas must hold while the load is unknown, saw {held}"
    assert _ticks(s, "metrics_unknown") > before, "the operator keeps retrying"
    active = s.condition("steady", "ScalingActive")
    assert active is not None and active["reason"] == "MetricsUnknown"
    assert _reasons(s, "steady").count("MetricsUnavailable") == 1, "one Warning per outage, not one per tick"

    # the same Prometheus comes back (empty: it lost its data); the operator recovers without help
    s.prometheus = start_prometheus(
        {"engines": [f"127.0.0.1:{emulator.port}"]}, scrape_interval="1s", port=port
    )
    try:
        s.wait_condition(
            "steady", "MetricsHealthy", "True", 90, "MetricsHealthy=True once Prometheus is back"
        )
        s.wait_event("steady", "MetricsRecovered")
    finally:
        s.prometheus.stop()


def test_a_missing_series_is_unknown_not_zero(s: Scenario, tmp_path: Path) -> None:
    s.start_operator()
    doc = model("gappy", s.namespace)
    s.apply(doc)
    s.wait_children("gappy")
    emulator = s.emulate(
        doc, write_trace(tmp_path / "gappy.csv", [(40, 600)], isl=100, osl=700, seed=6), at_end="loop"
    )
    wait_until(lambda: s.replicas("gappy")[1] >= 2, 90, "decode to grow under 40 rps")
    time.sleep(6)
    layout = s.replicas("gappy")
    # the prefill completions counter (vLLM's arrival estimate) disappears from /metrics
    emulator.set_faults(Faults(omit=(FamilyFault(family="vllm:request_success_total"),)))
    down = s.wait_condition(
        "gappy", "MetricsHealthy", "False", 60, "MetricsHealthy=False when the arrival series is gone"
    )
    assert down["reason"] == "MetricsUnknown"
    assert "arrival" in down["message"], down["message"]
    held = {s.replicas("gappy")}
    for _ in range(5):
        time.sleep(2)
        held.add(s.replicas("gappy"))
    assert held == {layout}, (
        f"a missing arrival series must not read as zero load (no scale-down), saw {held}"
    )
    emulator.set_faults(Faults())
    s.wait_condition("gappy", "MetricsHealthy", "True", 60, "recovery once the series is back")


def test_an_operator_killed_mid_scale_up_continues_without_flapping(s: Scenario, tmp_path: Path) -> None:
    s.start_operator()
    doc = model(
        "grow",
        s.namespace,
        scaling={
            "scaleUp": {"maxStepReplicas": 1, "maxStepPercent": 1},
            "scaleDown": {"stabilizationSeconds": 60},
        },
    )
    s.apply(doc)
    s.wait_children("grow")
    # 10 rps first, so the first decision (sized at once, not step-limited) finds one decode replica
    # enough; then 80 rps of 1000-token outputs: about 1300 sequences decoding, six decode replicas of
    # 256 slots at the engine's own speed (the scale-up must outlast the restart by more than one step)
    s.emulate(doc, write_trace(tmp_path / "grow.csv", [(10, 30), (80, 100)], isl=100, osl=1000, seed=7))
    # one replica a tick at most: the scale-up takes several ticks; kill the operator in the middle
    wait_until(lambda: s.replicas("grow")[1] >= 3, 90, "the scale-up to be under way")
    s.operator.kill()
    killed_time = datetime.now(UTC)
    killed_at = s.replicas("grow")
    s.start_operator()
    seen = [killed_at]

    def grown() -> bool:
        seen.append(s.replicas("grow"))
        return seen[-1][1] >= 5

    wait_until(grown, 90, "the scale-up to continue after the restart", interval_s=1.0)
    decodes = [decode for _, decode in seen]
    assert decodes == sorted(decodes), f"no flapping during the scale-up: {decodes}"
    # decisions keep the model's cadence across the restart: never two scale actions within an interval
    times = sorted(
        datetime.fromisoformat(str(e.get("lastTimestamp") or e.get("eventTime")).replace("Z", "+00:00"))
        for e in s.events("grow")
        if e.get("reason") == "ScaledUp" and str(e.get("message")).startswith("decode ")
    )
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    described = [(e.get("lastTimestamp"), e.get("source"), e.get("message")) for e in s.events("grow")]
    assert gaps and min(gaps) >= 4.0, f"decode scale-ups closer than the 5 s interval: {gaps}: {described}"
    # the restarted operator continued the planner state it found in status: its recommendation history
    # (the scale-down window's memory) reaches back before the kill
    recommendations = s.dm("grow")["status"]["planner"]["recommendations"]
    earliest = min(datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in recommendations)
    assert earliest < killed_time, (earliest, killed_time)
