"""The operator's loop on a real cluster: `dopd run` (a real process) reconciles DisaggregatedModels,
reads the engines' metrics through a real Prometheus that scrapes the engine emulator, and sizes both
pools. Nothing is mocked: the emulator's engines follow the Ready pods of the very Deployments the
operator scales (KWOK runs the pods), so scaling up really lowers the queues Prometheus sees.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dopd_e2e.cluster import Cluster
from dopd_e2e.operator import condition, get_json, patch_dm, wait_until
from dopd_e2e.scenario import Scenario, model, scenario, write_trace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def s(
    k8s_cluster: Cluster, prometheus_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    with scenario(
        k8s_cluster, prometheus_factory, tmp_path_factory.mktemp("loop"), emulators=5, prefix="loop"
    ) as found:
        found.start_operator()
        yield found
        assert not found.operator_errors(), f"the operator logged errors: {found.operator_errors()[:3]}"


def _messages(s: Scenario, name: str) -> str:
    return "\n".join(f"{e.get('reason')}: {e.get('message')}" for e in s.events(name))


def test_a_load_ramp_grows_each_pool_in_the_ratio_its_mix_needs_and_a_drop_shrinks_them(
    s: Scenario, tmp_path: Path
) -> None:
    load = {
        # long prompts, a few output tokens: prefill is the producer that limits
        "summarize": ([(2, 15), (30, 75)], 3000, 8, "Active"),
        # short prompts, long answers: decode holds the sequences
        "chat": ([(2, 15), (60, 75)], 100, 700, "Active"),
        # the summarize load again, in the modes that must not touch the Deployments
        "advised": ([(2, 15), (30, 75)], 3000, 8, "Advisory"),
        "paused": ([(2, 15), (30, 75)], 3000, 8, "Paused"),
    }
    for seed, (name, (phases, isl, osl, mode)) in enumerate(load.items()):
        doc = model(name, s.namespace, mode)
        s.apply(doc)
        s.wait_children(name)
        s.emulate(doc, write_trace(tmp_path / f"{name}.csv", phases, isl=isl, osl=osl, seed=seed))

    seen: dict[str, set[tuple[int, int]]] = {name: set() for name in load}
    peak: dict[str, tuple[int, int]] = {}

    def grown() -> bool:
        for name in load:
            layout = s.replicas(name)
            seen[name].add(layout)
            if sum(layout) > sum(peak.get(name, (0, 0))):
                peak[name] = layout
        return peak.get("summarize", (0, 0))[0] >= 3 and peak.get("chat", (0, 0))[1] >= 3

    wait_until(grown, 150, "both active pools to grow under load", interval_s=2.0)
    prefill, decode = peak["summarize"]
    assert prefill > decode, f"long prompts, short outputs: more prefill than decode, got {peak['summarize']}"
    prefill, decode = peak["chat"]
    assert decode > prefill, f"short prompts, long outputs: more decode than prefill, got {peak['chat']}"

    # status agrees with the Deployments and says why
    summarize = s.dm("summarize")
    assert summarize["status"]["lastDecision"]["reasons"], summarize["status"]
    assert condition(summarize, "MetricsHealthy")["status"] == "True"
    # the load it reports reaches the 30 rps phase (the pools may have grown on the first ticks of the
    # rise, read from its trend, before the 15 s window holds the new level)
    wait_until(
        lambda: s.dm("summarize")["status"]["load"]["arrivalRateRps"] > 20,
        45,
        "status to report the summarize model's 30 rps load",
        interval_s=2.0,
    )
    header = s.cluster.kubectl("-n", s.namespace, "get", "dm").stdout.splitlines()[0].split()
    assert header[:4] == ["NAME", "PREFILL", "DECODE", "RATIO"] and "SLO" in header and "MODE" in header

    # Advisory: the same advice in status, the Deployments untouched; Paused: nothing changes
    advised = s.dm("advised")
    assert advised["status"]["lastDecision"]["prefill"] >= 3, advised["status"]["lastDecision"]
    assert condition(advised, "ScalingActive")["reason"] == "AdvisoryMode"
    assert "Recommended: would scale prefill 1 ->" in _messages(s, "advised")
    assert s.condition("paused", "ScalingActive")["reason"] == "ScalingPaused"

    # the load stops: after the 20 s scale-down window both active models shrink to their minimum
    wait_until(
        lambda: s.replicas("summarize") == (1, 1) and s.replicas("chat") == (1, 1),
        180,
        "the pools to shrink after the load drops",
        interval_s=2.0,
    )
    for name in ("advised", "paused"):
        seen[name].add(s.replicas(name))
        assert seen[name] == {(1, 1)}, f"{name} must never be scaled, saw {seen[name]}"
    chat = _messages(s, "chat")
    assert "ScaledUp: decode 1 -> " in chat and "ScaledDown: decode " in chat and "within TPOT 50 ms" in chat
    # scale-down chose its victims by their load, read per pod from Prometheus
    assert "in flight)" in chat, chat


def test_children_are_owned_rolled_on_template_change_and_garbage_collected(s: Scenario) -> None:
    name = "lifecycle"
    s.apply(model(name, s.namespace, "Advisory"))
    uid = wait_until(lambda: s.dm(name)["metadata"].get("uid"), 30, "the model's uid")
    s.wait_children(name)
    for kind in ("deployment", "service", "poddisruptionbudget"):
        for role in ("prefill", "decode"):
            obj = get_json(s.cluster, "-n", s.namespace, "get", kind, f"{name}-{role}")
            (owner,) = obj["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
                "DisaggregatedModel",
                name,
                uid,
                True,
            )

    def generation(role: str) -> int:
        return int(
            get_json(s.cluster, "-n", s.namespace, "get", "deployment", f"{name}-{role}")["metadata"][
                "generation"
            ]
        )

    decode_before, prefill_before = generation("decode"), generation("prefill")
    # a template change rolls the pods (a new ReplicaSet); the same spec again changes nothing
    template = {
        "metadata": {"annotations": {"rollout": "2"}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.1"}]},
    }
    patch_dm(s.cluster, s.namespace, name, {"spec": {"decode": {"template": template}}})
    wait_until(
        lambda: generation("decode") > decode_before, 60, "the decode Deployment to take the new template"
    )
    s.cluster.kubectl("-n", s.namespace, "rollout", "status", f"deployment/{name}-decode", "--timeout=90s")
    sets = get_json(
        s.cluster, "-n", s.namespace, "get", "replicasets", "-l", f"dopd.io/model={name},dopd.io/role=decode"
    )
    assert len(sets["items"]) == 2, "a rollout leaves the old ReplicaSet scaled to zero beside the new one"
    time.sleep(2)  # a spurious re-apply would bump the generation within a tick or two
    assert generation("prefill") == prefill_before, "the unchanged prefill pool must not roll"

    s.cluster.kubectl("-n", s.namespace, "delete", "dm", name, "--timeout=60s")
    wait_until(
        lambda: (
            not s.cluster.kubectl(
                "-n",
                s.namespace,
                "get",
                "deployments,services,poddisruptionbudgets",
                "-l",
                f"dopd.io/model={name}",
                "-o",
                "name",
            ).stdout.strip()
        ),
        90,
        "the children to be garbage-collected",
    )


def test_the_loop_forecasts_from_prometheus_history_and_refits_beside_the_ticks(
    s: Scenario, tmp_path: Path
) -> None:
    """Forecasting in the real loop: the arrival-rate history comes from a Prometheus range query; the
    first fit runs in the refit worker (the tick meanwhile sizes for the observed load), and from then
    on status carries the forecast the decision used."""
    name = "forecast"
    doc = model(name, s.namespace, "Advisory", forecast={"model": "ewma"})
    s.apply(doc)
    s.wait_children(name)
    s.emulate(doc, write_trace(tmp_path / "steady.csv", [(6, 420)], isl=400, osl=40, seed=11))

    def with_forecast() -> dict[str, Any] | None:
        status: dict[str, Any] = s.dm(name).get("status") or {}
        return status if status.get("forecast") else None

    # 17 points at 10 s steps: the shortest history a 15 s horizon can be backtested on
    status = wait_until(with_forecast, 330, "a forecast in status", interval_s=5.0)
    forecast = status["forecast"]
    assert forecast["model"] == "ewma", forecast
    # the lead time: the slower role's startup (learned from its pods, 10 s prior) plus the 5 s interval
    assert 5.0 <= forecast["horizonSeconds"] <= 15.0, forecast
    assert 3.0 < forecast["arrivalRateRpsMean"] < 10.0, forecast  # the emulator sends 6 rps
    assert forecast["arrivalRateRpsUpper"] >= forecast["arrivalRateRpsMean"], forecast
    # the decision recorded with it was made with it
    assert not any("no forecast" in r for r in status["lastDecision"]["reasons"]), status["lastDecision"]
    refits = [
        float(line.split()[-1])
        for line in s.operator.metrics_text().splitlines()
        if line.startswith("dopd_operator_forecast_refit_seconds_count")
    ]
    assert refits and refits[0] >= 1, "the first fit ran in the refit worker"
