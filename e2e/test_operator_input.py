"""Bad input loses nothing: the API server rejects what the schema can catch, naming the field; what it
cannot catch is flagged in status and Events; nothing crash-loops the operator or stalls other models.
A property test throws random specs at a running operator.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dopd_e2e.cluster import Cluster
from dopd_e2e.operator import condition, wait_until
from dopd_e2e.scenario import Scenario, model, scenario

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def s(
    k8s_cluster: Cluster, prometheus_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    with scenario(
        k8s_cluster, prometheus_factory, tmp_path_factory.mktemp("input"), emulators=1, prefix="input"
    ) as found:
        found.start_operator()
        yield found


def _apply(s: Scenario, doc: dict[str, Any]) -> tuple[bool, str]:
    proc = s.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    return proc.returncode == 0, proc.stderr


def _no_crashes(s: Scenario) -> None:
    assert s.operator.alive() and s.operator.healthy(), s.operator.logs()[-3000:]
    failed = [
        r
        for r in s.operator.log_records()
        if "Traceback" in str(r) or (r.get("logger") == "kopf.objects" and r.get("level") == "error")
    ]
    assert not failed, failed[:3]


def test_the_api_server_rejects_what_the_schema_catches_naming_the_field(s: Scenario) -> None:
    ok, stderr = _apply(s, model("minmax", s.namespace, decode={"minReplicas": 5, "maxReplicas": 2}))
    assert not ok and "minReplicas (5) must be <= maxReplicas (2)" in stderr, stderr
    ok, stderr = _apply(s, model("typo", s.namespace, slo={"ttftSecond": 1.0}))
    assert not ok and "ttftSecond" in stderr, stderr


def test_a_spec_that_cannot_work_is_flagged_and_other_models_carry_on(s: Scenario) -> None:
    s.apply(model("healthy", s.namespace, mode="Advisory"))
    s.wait_children("healthy")
    s.apply(model("broken", s.namespace, profile={"preset": "llama9-h900"}))
    invalid = s.wait_condition("broken", "SpecValid", "False", 30, "SpecValid=False for an unknown preset")
    assert invalid["reason"] == "InvalidSpec"
    assert "spec.profile.preset: unknown profile preset 'llama9-h900'" in invalid["message"]
    s.wait_event("broken", "InvalidSpec")
    # the broken model's pools are left alone, and the healthy one keeps ticking
    assert not s.has_children("broken")
    first = wait_until(
        lambda: ((s.dm("healthy").get("status") or {}).get("lastDecision") or {}).get("time"),
        30,
        "a first decision",
    )
    wait_until(
        lambda: s.dm("healthy")["status"]["lastDecision"]["time"] != first,
        30,
        "another tick of the healthy model",
    )
    # fixing the spec heals it
    s.apply(model("broken", s.namespace))
    wait_until(
        lambda: s.condition("broken", "SpecValid").get("status") == "True" and s.has_children("broken"),
        60,
        "the fixed model to be reconciled",
    )
    _no_crashes(s)


# Values drawn for each field: valid ones, out-of-range ones, and the wrong type.
_INT = st.one_of(st.integers(-3, 40), st.just("two"))
_POSITIVE = st.one_of(st.floats(-1, 200, allow_nan=False), st.just(0), st.just("fast"))
_ROLE = st.fixed_dictionaries(
    {},
    optional={
        "minReplicas": _INT,
        "maxReplicas": _INT,
        "gpusPerReplica": st.one_of(st.integers(0, 9), st.just("x")),
        "startupSeconds": _POSITIVE,
        "template": st.one_of(
            st.just({"spec": {"containers": []}}),
            st.just(
                {
                    "spec": {
                        "containers": [
                            {"name": "e", "image": "i", "resources": {"limits": {"nvidia.com/gpu": 3}}}
                        ]
                    }
                }
            ),
            st.just({"spec": {"containers": [{"name": "e"}]}}),
        ),
    },
)
_SPEC = st.fixed_dictionaries(
    {"model": st.one_of(st.just("org/m"), st.just(""))},
    optional={
        "engine": st.sampled_from(["dopd", "vllm", "sglang", "tgi"]),
        "prefill": _ROLE,
        "decode": _ROLE,
        "slo": st.fixed_dictionaries(
            {},
            optional={
                "ttftSeconds": _POSITIVE,
                "tpotSeconds": st.one_of(_POSITIVE, st.just(0.0001)),
                "percentile": _POSITIVE,
            },
        ),
        "scaling": st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["Active", "Advisory", "Paused", "Aggressive"]),
                "gpuBudget": _INT,
                "intervalSeconds": _POSITIVE,
                "onMetricsUnknown": st.sampled_from(["Hold", "Fallback"]),
            },
        ),
        "profile": st.sampled_from(
            [{"preset": "llama3-8b-h100"}, {"preset": "nope"}, {}, {"preset": "x", "inline": {}}]
        ),
        "metrics": st.fixed_dictionaries(
            {}, optional={"selector": st.sampled_from([{}, {"__name__": "x"}, {"model_name": 'a"b\\c\n{d}'}])}
        ),
    },
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(spec=_SPEC)
def test_random_specs_never_crash_the_operator_and_every_invalid_one_is_explained(
    s: Scenario, spec: dict[str, Any]
) -> None:
    name = f"rand-{uuid.uuid4().hex[:6]}"
    doc = {
        "apiVersion": "dopd.io/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": name, "namespace": s.namespace},
        "spec": spec,
    }
    ok, stderr = _apply(s, doc)
    try:
        if not ok:
            # rejected by the API server: the message names a field of the spec
            assert "spec." in stderr or "spec" in stderr.split(":")[0], stderr
            return
        # accepted: the operator explains it either way within a few ticks
        cond = wait_until(lambda: condition(s.dm(name), "SpecValid"), 45, f"SpecValid on {name}")
        if cond["status"] == "False":
            assert cond["reason"] == "InvalidSpec" and cond["message"].split(":")[0].startswith(
                ("spec.", "metadata.")
            ), cond
        else:
            assert s.dm(name)["status"].get("lastDecision") is not None
        _no_crashes(s)
    finally:
        s.cluster.kubectl("-n", s.namespace, "delete", "dm", name, "--wait=false", check=False)
        time.sleep(0.2)


def test_the_operator_survived_everything_above(s: Scenario, tmp_path: Path) -> None:
    _no_crashes(s)
    errors = s.operator_errors()
    assert not errors, errors[:3]
