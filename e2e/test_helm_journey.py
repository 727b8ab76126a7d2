"""A platform engineer's first hour with dopd, on the local cluster with the real Helm (README, "Your first
hour"; docs/operations.md): `helm install dopd charts/dopd`, `kubectl apply` every example,
`kubectl get dm`, `kubectl describe dm`, `kubectl explain dm.spec.slo`, a `helm upgrade` that changes a
setting of the running operator, `helm uninstall` that keeps the CRD and the models, and a reinstall that
picks them up.

KWOK pods run no processes, so the operator the chart deploys runs on the host (dopd_e2e.release): with a
token of the chart's ServiceAccount, so the chart's RBAC is exactly what it gets, and with the environment
of the Deployment the chart rendered in the cluster, so a `helm upgrade` really changes the process. The
journey has a cluster of its own: a first install meets a cluster that has never seen dopd (the session's
cluster gets the CRD from other tests' `kubectl apply`, which Helm would refuse to adopt). The tests run in
file order, one journey; each waits, bounded, for the state it needs.

With DOPD_README_CAPTURE=FILE the journey also records, in FILE (JSON), the command lines and output of
the steps README's "Your first hour" shows, raw, as named blocks; `python scripts/readme_samples.py
--journey FILE` trims them as README does and rewrites its blocks. Capturing only observes: it records
what the journey ran, and runs the two listings README adds (`kubectl get pods`, `kubectl get
deployments`); the file is written only when every test of the journey passed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dopd_e2e.cluster import Cluster, ClusterUnavailable, start_cluster
from dopd_e2e.operator import REPO, get_json, wait_until
from dopd_e2e.prometheus import Prometheus, free_port
from dopd_e2e.release import HostedRelease
from dopd_emulator.config import ClusterReplicas, EmulatorConfig, TraceLoad
from dopd_emulator.emulator import Emulator
from dopd_operator.api import DisaggregatedModel

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# (namespace, name) of every example: the rows `kubectl get dm -A` must show
EXAMPLE_MODELS = {
    (doc["metadata"].get("namespace", "default"), doc["metadata"]["name"])
    for doc in (yaml.safe_load(path.read_text()) for path in EXAMPLES)
}
VLLM = "llama3-8b"  # examples/vllm-llama3-8b.yaml, namespace llm: the one the emulator serves
SGLANG = "llama2-70b"  # examples/sglang-llama2-70b.yaml, namespace llm, Advisory mode
# The example decides every 30 s; a decision after a change is at most one interval and a restart away.
DECISION_BOUND_SECONDS = 120.0
CAPTURE_ENV = "DOPD_README_CAPTURE"  # names the file the README's transcripts go to (module docstring)


@dataclass
class Transcripts:
    """The console transcripts README's "Your first hour" shows, block name -> steps, each the command
    line as typed from the repository root (tool name, paths relative to it) and its raw stdout/stderr.
    Inactive (records nothing, runs nothing) unless `path` is set."""

    path: Path | None
    blocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def record(
        self, block: str, done: subprocess.CompletedProcess[str], shown: Sequence[str] | None = None
    ) -> None:
        """Record a command the journey ran (`done.args`), or what README shows for it (`shown`)."""
        if self.path is None:
            return
        argv = list(shown) if shown is not None else [Path(done.args[0]).name, *done.args[1:]]
        command = [arg.replace(f"{REPO}/", "") for arg in argv]
        step = {"command": command, "stdout": done.stdout, "stderr": done.stderr}
        self.blocks.setdefault(block, []).append(step)

    def save(self) -> None:
        assert self.path is not None
        captured = {"captured_at": datetime.now(UTC).isoformat(), "blocks": self.blocks}
        self.path.write_text(json.dumps(captured, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def transcripts(request: pytest.FixtureRequest) -> Iterator[Transcripts]:
    named = os.environ.get(CAPTURE_ENV)
    path = Path(named).resolve() if named else None
    if path is not None:
        path.unlink(missing_ok=True)  # a failed journey must not leave an older capture looking fresh
    recorder = Transcripts(path)
    yield recorder
    if path is not None and request.session.testsfailed == 0:
        recorder.save()


@dataclass
class Journey:
    cluster: Cluster
    prometheus: Prometheus
    release: HostedRelease
    emulator_port: int
    values: tuple[str, ...]  # the `--set` flags of the install
    emulators: list[Emulator]
    transcripts: Transcripts


@pytest.fixture(scope="module")
def journey(
    prometheus_factory: Any, tmp_path_factory: pytest.TempPathFactory, transcripts: Transcripts
) -> Iterator[Journey]:
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("journey-cluster"))
    except ClusterUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    release = HostedRelease(cluster, work=tmp_path_factory.mktemp("journey-release"))
    emulators: list[Emulator] = []
    try:
        port = free_port()
        prometheus = prometheus_factory({"engines": [f"127.0.0.1:{port}"]}, scrape_interval="1s")
        values = (
            *("--set", f"prometheus.url={prometheus.url}"),
            # Prometheus scrapes every second here: the operator's rate windows follow (an extraEnv a
            # user sets the same way for a fast scrape)
            *("--set-json", 'extraEnv=[{"name":"DOPD_SCRAPE_INTERVAL_SECONDS","value":"1"}]'),
        )
        yield Journey(cluster, prometheus, release, port, values, emulators, transcripts)
    finally:
        for emulator in emulators:
            emulator.stop()
        release.stop()
        cluster.stop()


def _dm(j: Journey, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_json(j.cluster, "-n", namespace, "get", "dm", name))


def _replicas(j: Journey, deployment: str) -> int | None:
    """The Deployment's spec.replicas, None while the operator has not created it yet (it creates the
    children a moment after `kubectl apply`)."""
    done = j.cluster.kubectl("-n", "llm", "get", "deployment", deployment, "-o", "json", check=False)
    if done.returncode != 0:
        assert "NotFound" in done.stderr, done.stderr
        return None
    return int(json.loads(done.stdout)["spec"]["replicas"])


def _decided_at(j: Journey) -> datetime | None:
    decided = (_dm(j, "llm", VLLM).get("status") or {}).get("lastDecision", {}).get("time")
    return None if decided is None else datetime.fromisoformat(decided.replace("Z", "+00:00"))


def _decides_after(j: Journey, moment: datetime, what: str) -> None:
    wait_until(
        lambda: (decided := _decided_at(j)) is not None and decided > moment,
        DECISION_BOUND_SECONDS,
        what,
        interval_s=2.0,
    )


def described(text: str, section: str) -> list[dict[str, str]]:
    """The entries of a `kubectl describe` section at indent 2 (`Conditions:` under `Status:`): each
    condition's `Key:  value` lines, a new entry at each `Last Transition Time`."""
    entries: list[dict[str, str]] = []
    inside = False
    for line in text.splitlines():
        if line == f"  {section}:":
            inside = True
            continue
        if inside:
            if not line.startswith("    "):
                break
            key, _, value = line.strip().partition(":")
            if key == "Last Transition Time":
                entries.append({})
            entries[-1][key] = value.strip()
    return entries


def events_table(text: str) -> list[list[str]]:
    """The rows of `kubectl describe`'s Events table: Type, Reason, Age, From, Message."""
    lines = text.split("\nEvents:\n", 1)[1].splitlines()
    return [re.split(r"\s{2,}", line.strip(), maxsplit=4) for line in lines[2:] if line.strip()]


def test_install_apply_every_example_and_read_them_back(journey: Journey) -> None:
    j = journey
    installed = j.release.install(*j.values)
    j.transcripts.record("install", installed)
    if j.transcripts.path is not None:
        j.transcripts.record("install", j.cluster.kubectl("-n", j.release.namespace, "get", "pods"))
    assert "STATUS: deployed" in installed.stdout
    assert "kubectl apply -f examples/vllm-llama3-8b.yaml" in installed.stdout  # NOTES: what to do next
    operator = j.release.process
    assert operator is not None and j.release.container is not None
    assert j.release.container.service_account == "dopd"
    # the process got the chart's environment: logFormat's default, json
    starting = [r for r in operator.log_records() if "dopd operator starting" in str(r.get("message"))]
    assert starting and f"prometheus {j.prometheus.url}" in starting[0]["message"]

    def explained() -> subprocess.CompletedProcess[str] | None:
        done = j.cluster.kubectl("explain", "dm.spec.slo", check=False)
        return done if done.returncode == 0 else None

    # the API server publishes a new CRD's schema to `explain` a moment after the CRD is established
    explained_done = wait_until(explained, 60, "kubectl explain dm.spec.slo")
    j.transcripts.record("explain", explained_done)
    explain = explained_done.stdout
    for documented in (
        "ttftSeconds",
        "Time-to-first-token objective, in seconds.",
        "tpotSeconds",
        "percentile",
        "attainmentTarget",
    ):
        assert documented in explain, f"`kubectl explain dm.spec.slo` lacks {documented!r}:\n{explain}"

    for namespace in sorted({ns for ns, _ in EXAMPLE_MODELS} - {"default"}):
        j.transcripts.record("apply", j.cluster.kubectl("create", "namespace", namespace))
    for example in EXAMPLES:
        j.transcripts.record("apply", j.cluster.kubectl("apply", "-f", str(example)))
    doc = yaml.safe_load((REPO / "examples" / "vllm-llama3-8b.yaml").read_text())
    config = EmulatorConfig.for_model(
        DisaggregatedModel.model_validate(doc),
        load=TraceLoad(trace="synthetic:poisson,rate_rps=50,duration_s=600", at_end="loop"),
        replicas=ClusterReplicas(kubeconfig=str(j.cluster.kubeconfig), poll_seconds=1.0),
    ).model_copy(update={"port": j.emulator_port})
    emulator = Emulator(config)
    j.emulators.append(emulator)  # serves the rest of the journey; the fixture stops it
    emulator.start()
    # 50 rps need more than the example's one prefill replica (`dopd plan` says 2 at ~30 rps each)
    wait_until(
        lambda: (_replicas(j, f"{VLLM}-prefill") or 0) >= 2,
        180,
        "the operator to scale the vLLM example's prefill pool",
        interval_s=2.0,
    )

    # The first ticks read a window of a few seconds of a series that just started (the emulator's first
    # interval can hold a burst); the measured load settles as the metrics window fills.
    def settled() -> subprocess.CompletedProcess[str] | None:
        found = j.cluster.kubectl("get", "dm", "-A")
        row = next((r for r in found.stdout.splitlines()[1:] if r.split()[:2] == ["llm", VLLM]), "")
        fields = row.split()
        return found if len(fields) > 4 and 30 < float(fields[-4]) < 70 else None  # the emulator sends 50

    listing = wait_until(settled, 90, "the vLLM example's LOAD-RPS to show the 50 rps sent", interval_s=3.0)
    j.transcripts.record("get-dm", listing)
    table = listing.stdout.splitlines()
    assert table[0].split() == [
        "NAMESPACE", "NAME", "PREFILL", "DECODE", "RATIO", "GPUS", "LOAD-RPS", "SLO", "MODE", "AGE",
    ]  # fmt: skip
    rows = {(r.split()[0], r.split()[1]): r for r in table[1:]}
    assert set(rows) == EXAMPLE_MODELS
    assert rows[("llm", VLLM)].split()[-2] == "Active" and rows[("llm", SGLANG)].split()[-2] == "Advisory"
    listed = j.cluster.kubectl("get", "llm", "-A", "-o", "name").stdout.split()  # the `llm` category
    assert sorted(listed) == sorted(f"disaggregatedmodel.dopd.io/{name}" for _, name in EXAMPLE_MODELS)

    description = j.cluster.kubectl("describe", "dm", VLLM, "-n", "llm")
    j.transcripts.record("describe", description)
    text = description.stdout
    conditions = {c["Type"]: c for c in described(text, "Conditions")}
    for kind, status, reason in (
        ("SpecValid", "True", "SpecValid"),
        ("MetricsHealthy", "True", "MetricsAvailable"),
        ("ScalingActive", "True", "ScalingActive"),
        ("ScalingConflict", "False", "NoConflict"),
        ("CapacityBlocked", "False", "PodsSchedulable"),
    ):
        assert (conditions[kind]["Status"], conditions[kind]["Reason"]) == (status, reason), conditions[kind]
    assert {"ScalingLimited", "Ready"} <= set(conditions)
    scaled = [row for row in events_table(text) if row[1] == "ScaledUp"]
    assert scaled and all(row[0] == "Normal" and row[3] == "dopd" for row in scaled), events_table(text)
    assert any(row[4].startswith("prefill 1 -> ") and " rps" in row[4] for row in scaled), scaled

    advisory = described(j.cluster.kubectl("-n", "llm", "describe", "dm", SGLANG).stdout, "Conditions")
    active = next(c for c in advisory if c["Type"] == "ScalingActive")
    assert (active["Status"], active["Reason"]) == ("False", "AdvisoryMode"), active


def test_helm_upgrade_changes_a_setting_of_the_running_operator(journey: Journey) -> None:
    j = journey
    before = j.release.process
    assert before is not None and any(
        "dopd operator starting" in str(r.get("message")) for r in before.log_records()
    )
    upgraded_at = datetime.now(UTC)
    upgraded = j.release.upgrade("--set", "logFormat=text")
    j.transcripts.record("upgrade", upgraded)
    assert j.release.container is not None and j.release.container.env["DOPD_LOG_FORMAT"] == "text"
    after = j.release.process
    assert after is not None and after is not before and not before.alive()  # rolled, as a rollout would
    starting = wait_until(
        lambda: [ln for ln in after.logs().splitlines() if "dopd operator starting" in ln],
        60,
        "the restarted operator's start-up line",
    )
    # README shows the log as `kubectl logs` would; KWOK's pod runs nothing, the host process logs it
    logged = subprocess.CompletedProcess(after.log_path, 0, after.logs(), "")
    shown = ("kubectl", "-n", j.release.namespace, "logs", f"deployment/{j.release.name}")
    j.transcripts.record("upgrade", logged, shown=shown)
    # `logFormat: text` is "%(asctime)s %(levelname)s %(name)s: %(message)s"; json would be an object
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO dopd\.run: dopd operator starting", starting[0]
    )
    with pytest.raises(ValueError):
        json.loads(starting[0])
    _decides_after(j, upgraded_at, "a decision by the upgraded operator")


def test_uninstall_keeps_the_crd_and_the_models_and_a_reinstall_picks_them_up(journey: Journey) -> None:
    j = journey
    owner = _dm(j, "llm", VLLM)["metadata"]["uid"]
    layout = {
        role: int(get_json(j.cluster, "-n", "llm", "get", "deployment", f"{VLLM}-{role}")["spec"]["replicas"])
        for role in ("prefill", "decode")
    }
    uninstalled = j.release.uninstall()
    j.transcripts.record("uninstall", uninstalled)
    if j.transcripts.path is not None:  # the engines after it, as README shows them
        j.transcripts.record("uninstall", j.cluster.kubectl("-n", "llm", "get", "deployments"))
    assert j.release.process is None  # its Deployment is gone, and with it the operator
    for kind, name, namespace in (
        ("deployment", "dopd", "dopd-system"),
        ("serviceaccount", "dopd", "dopd-system"),
        ("clusterrole", "dopd", None),
        ("clusterkopfpeering", "dopd", None),
    ):
        scope = ("-n", namespace) if namespace else ()
        gone = j.cluster.kubectl(*scope, "get", kind, name, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, f"{kind}/{name} survived helm uninstall"
    crd = get_json(j.cluster, "get", "crd", "disaggregatedmodels.dopd.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    kept = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in get_json(j.cluster, "get", "dm", "-A")["items"]
    }
    assert kept == EXAMPLE_MODELS
    for role, replicas in layout.items():  # the engines keep serving at their last size
        deployment = get_json(j.cluster, "-n", "llm", "get", "deployment", f"{VLLM}-{role}")
        assert int(deployment["spec"]["replicas"]) == replicas
        assert [ref["uid"] for ref in deployment["metadata"]["ownerReferences"]] == [owner]

    reinstalled_at = datetime.now(UTC)
    j.release.install(*j.values)  # Helm adopts the CRD it kept: same release, same namespace
    assert j.release.process is not None and len(j.release.started) == 3
    _decides_after(j, reinstalled_at, "a decision by the reinstalled operator")
    model = _dm(j, "llm", VLLM)
    assert model["metadata"]["uid"] == owner
    healthy = next(c for c in model["status"]["conditions"] if c["type"] == "MetricsHealthy")
    assert healthy["status"] == "True", healthy
    names = j.cluster.kubectl("-n", "llm", "get", "deployments", "-l", f"dopd.io/model={VLLM}", "-o", "name")
    assert sorted(names.stdout.split()) == [
        f"deployment.apps/{VLLM}-decode",
        f"deployment.apps/{VLLM}-prefill",
    ]
