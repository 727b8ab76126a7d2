"""The children a DisaggregatedModel owns: what users find in the cluster after `kubectl apply`."""

from __future__ import annotations

from typing import Any

import pytest

from dopd_builders import make_spec
from dopd_operator.controller.children import MAX_MODEL_NAME_LENGTH, children, pod_template
from dopd_operator.errors import SpecError

UID = "0b6c2c8e-1111-2222-3333-444455556666"


def _by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_each_role_gets_a_deployment_service_and_pdb_owned_by_the_model() -> None:
    objs = children(make_spec(), "llama", "llm", UID)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objs) == [
        ("Deployment", "llama-decode"),
        ("Deployment", "llama-prefill"),
        ("PodDisruptionBudget", "llama-decode"),
        ("PodDisruptionBudget", "llama-prefill"),
        ("Service", "llama-decode"),
        ("Service", "llama-prefill"),
    ]
    for obj in objs:
        assert obj["metadata"]["namespace"] == "llm"
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "dopd.io/v1alpha1",
            "kind": "DisaggregatedModel",
            "name": "llama",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dopd"


def test_deployments_leave_replicas_to_the_scale_subresource_and_roll_without_losing_capacity() -> None:
    deployments = _by_kind(children(make_spec(), "llama", "llm", UID), "Deployment")
    for role in ("prefill", "decode"):
        spec = deployments[f"llama-{role}"]["spec"]
        # Naming replicas here would make server-side apply reset them on every template change.
        assert "replicas" not in spec
        assert spec["selector"] == {"matchLabels": {"dopd.io/model": "llama", "dopd.io/role": role}}
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
        labels = spec["template"]["metadata"]["labels"]
        assert labels["dopd.io/role"] == role and labels["dopd.io/model"] == "llama"


def test_pods_request_gpus_per_replica_on_the_first_container_when_the_template_does_not() -> None:
    spec = make_spec(
        prefill={
            "gpusPerReplica": 4,
            "template": {
                "spec": {"containers": [{"name": "e", "image": "img"}, {"name": "side", "image": "s"}]}
            },
        }
    )
    template = pod_template(spec, "m", "prefill")
    first, side = template["spec"]["containers"]
    assert first["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "resources" not in side


def test_a_template_asking_for_other_gpus_than_gpus_per_replica_is_an_error_naming_both() -> None:
    spec = make_spec(
        decode={
            "gpusPerReplica": 2,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "e", "image": "i", "resources": {"limits": {"nvidia.com/gpu": 1}}}
                    ]
                }
            },
        }
    )
    with pytest.raises(SpecError) as err:
        pod_template(spec, "m", "decode")
    assert err.value.field == "spec.decode.gpusPerReplica"
    assert "request 1 nvidia.com/gpu (e: 1)" in err.value.message


def test_a_template_without_containers_is_an_error() -> None:
    spec = make_spec(prefill={"template": {"spec": {"containers": []}}})
    with pytest.raises(SpecError) as err:
        pod_template(spec, "m", "prefill")
    assert err.value.field == "spec.prefill.template.spec.containers"


@pytest.mark.parametrize(
    ("engine", "image", "port"),
    [
        ("vllm", "vllm/vllm-openai:v0.11.0", 8000),
        ("sglang", "lmsysorg/sglang:v0.5.3", 30000),
        ("dopd", "ghcr.io/dopd/worker:0.1.0", 8000),
    ],
)
def test_without_a_template_the_engine_default_container_serves_the_model(
    engine: str, image: str, port: int
) -> None:
    objs = children(make_spec(engine=engine, model="org/model-x"), "m", "ns", UID)
    deployment = _by_kind(objs, "Deployment")["m-decode"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image
    assert "org/model-x" in container["args"]
    assert _by_kind(objs, "Service")["m-decode"]["spec"]["ports"][0]["port"] == port


def test_the_template_container_port_becomes_the_service_port() -> None:
    spec = make_spec(
        prefill={
            "template": {
                "spec": {"containers": [{"name": "e", "image": "i", "ports": [{"containerPort": 9123}]}]}
            }
        }
    )
    service = _by_kind(children(spec, "m", "ns", UID), "Service")["m-prefill"]
    assert service["spec"]["ports"][0]["port"] == 9123
    assert service["spec"]["selector"] == {"dopd.io/model": "m", "dopd.io/role": "prefill"}


def test_a_name_too_long_for_the_role_services_is_an_error_naming_the_limit() -> None:
    with pytest.raises(SpecError) as err:
        children(make_spec(), "x" * (MAX_MODEL_NAME_LENGTH + 1), "ns", UID)
    assert err.value.field == "metadata.name"
    assert f"at most {MAX_MODEL_NAME_LENGTH}" in err.value.message
    assert len(children(make_spec(), "x" * MAX_MODEL_NAME_LENGTH, "ns", UID)) == 6


def test_the_users_template_is_not_mutated() -> None:
    spec = make_spec(prefill={"template": {"spec": {"containers": [{"name": "e", "image": "i"}]}}})
    before = spec.prefill.model_dump()
    children(spec, "m", "ns", UID)
    assert spec.prefill.model_dump() == before


def test_removed_pods_get_the_drain_time_of_their_role() -> None:
    spec = make_spec(decode={"drainSeconds": 300}, prefill={"drainSeconds": 30})
    deployments = _by_kind(children(spec, "m", "ns", UID), "Deployment")
    decode = deployments["m-decode"]["spec"]["template"]["spec"]
    # 300 s to finish its sequences after SIGTERM, plus the 5 s preStop sleep before it
    assert decode["terminationGracePeriodSeconds"] == 305
    assert decode["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert deployments["m-prefill"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35


def test_a_templates_own_grace_period_and_pre_stop_hook_are_kept() -> None:
    hook = {"exec": {"command": ["/bin/drain"]}}
    spec = make_spec(
        prefill={
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 999,
                    "containers": [{"name": "e", "image": "i", "lifecycle": {"preStop": hook}}],
                }
            }
        }
    )
    pod = pod_template(spec, "m", "prefill")["spec"]
    assert pod["terminationGracePeriodSeconds"] == 999
    assert pod["containers"][0]["lifecycle"]["preStop"] == hook


def test_engine_default_containers_are_ready_only_when_the_engine_answers() -> None:
    deployments = _by_kind(
        children(make_spec(engine="dopd", decode={"drainSeconds": 90}), "m", "ns", UID), "Deployment"
    )
    (worker,) = deployments["m-decode"]["spec"]["template"]["spec"]["containers"]
    assert worker["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in worker["env"]
    assert worker["args"][-4:] == ["--drain-timeout-seconds", "90", "--tpot-slo-seconds", "0.05"]
    # the decode worker orders the sequences waiting for a slot by the model's TPOT SLO; prefill has none
    (prefill,) = deployments["m-prefill"]["spec"]["template"]["spec"]["containers"]
    assert "--tpot-slo-seconds" not in prefill["args"]
