"""The chart's generated files are current, and the generator refuses what it cannot document.

values.schema.json and README.md come from values.yaml (scripts/chart_values.py); the CRD template comes
from crds/ (scripts/chart_crd.py). Both scripts run in `make crds`. No Helm needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helm_chart import CHART, ROOT


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_values_schema_and_readme_are_current() -> None:
    proc = script("chart_values.py", "--check")
    assert proc.returncode == 0, proc.stderr


def test_the_crd_template_is_current_with_crds_folder() -> None:
    proc = script("chart_crd.py", "--check")
    assert proc.returncode == 0, proc.stderr


def _objects(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "object":
        yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _objects(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _objects(node[key], f"{path}[{key}]")


def test_every_object_the_chart_defines_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = [
        path
        for path, node in _objects(schema)
        # A map of free keys types its values; an object of named keys refuses others. The Kubernetes
        # types the API server checks (an EnvVarSource, the three affinities) are the exceptions.
        if "additionalProperties" not in node
        and "checked by the API server" not in node.get("description", "")
    ]
    assert loose == []
    assert schema["additionalProperties"] is False


def test_every_value_has_a_description() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def undocumented(node: dict[str, Any], path: str) -> list[str]:
        out = [] if node.get("description") else [path]
        for name, child in node.get("properties", {}).items():
            out += undocumented(child, f"{path}.{name}".lstrip("."))
        return out

    assert [p for name, node in schema["properties"].items() for p in undocumented(node, name)] == []


@pytest.fixture
def scratch_chart(tmp_path: Path) -> Path:
    shutil.copy(CHART / "README.template.md", tmp_path / "README.template.md")
    return tmp_path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("# Replicas.\nreplicaCount: 2\nimage: x\n", "values.yaml:3: `image` has no description"),
        ("# Namespaces.\nwatchNamespaces: []\n", "`watchNamespaces` is a list: give its items' shape"),
        ("# Labels.\nlabels: {}\n", "`labels` is an empty map"),
        ("# A user.\n# +schema:items=nothing\nusers: []\n", "unknown shape 'nothing'"),
        ("# A port.\n# +schema:minimun=1\nport: 80\n", "unknown tag(s) ['minimun'] above `port`"),
    ],
    ids=["undocumented", "untyped-list", "untyped-map", "unknown-shape", "misspelled-tag"],
)
def test_the_generator_refuses_what_it_cannot_document(
    scratch_chart: Path, values: str, message: str
) -> None:
    (scratch_chart / "values.yaml").write_text(values)
    proc = script("chart_values.py", "--chart", str(scratch_chart))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (scratch_chart / "values.schema.json").exists()


def test_the_generator_types_values_from_defaults_and_tags(scratch_chart: Path) -> None:
    (scratch_chart / "values.yaml").write_text(
        "# +docs:section=Main\n\n"
        "# The port.\n# +schema:minimum=1\nport: 8080\n"
        "# The user; null leaves it to the platform.\n# +schema:type=integer|null\nuser: 10001\n"
        "# Ratio.\nratio: 0.5\n"
        "# Nested.\nnested:\n  # Enabled.\n  enabled: false\n"
    )
    assert script("chart_values.py", "--chart", str(scratch_chart)).returncode == 0
    schema = json.loads((scratch_chart / "values.schema.json").read_text())
    props = schema["properties"]
    assert props["port"] == {"description": "The port.", "type": "integer", "minimum": 1, "default": 8080}
    assert props["user"]["type"] == ["integer", "null"]
    assert props["ratio"]["type"] == "number"
    assert props["nested"]["additionalProperties"] is False
    assert props["nested"]["properties"]["enabled"] == {
        "description": "Enabled.",
        "type": "boolean",
        "default": False,
    }
    readme = (scratch_chart / "README.md").read_text()
    assert "### Main" in readme and "#### **nested.enabled** ~ `boolean`" in readme
    # A second run finds nothing to write, and --check agrees; until values.yaml changes.
    assert script("chart_values.py", "--chart", str(scratch_chart), "--check").returncode == 0
    values = scratch_chart / "values.yaml"
    values.write_text(values.read_text().replace("port: 8080", "port: 9090"))
    stale = script("chart_values.py", "--chart", str(scratch_chart), "--check")
    assert stale.returncode == 1
    assert "values.schema.json is stale: run `make crds`" in stale.stderr
    assert "README.md is stale" in stale.stderr
