#!/usr/bin/env python3
"""Generate the dopd chart's values.schema.json and README.md from its annotated values.yaml.

values.yaml is the one source: each value's description is the comment block right above it, and the
schema comes from its default, refined by tags in that block:

    +docs:section=Title   start a README section (a comment block of its own, before the keys)
    +schema:type=a|b      JSON types, when the default does not say (`integer|null`, `number`)
    +schema:enum=a|b      allowed values
    +schema:minimum=N  +schema:maximum=N  +schema:minLength=N  +schema:maxLength=N  +schema:pattern=RE
    +schema:uniqueItems   a list without repeats
    +schema:items=SHAPE   the shape of a list's items (SHAPES below)
    +schema:values=SHAPE  a map with free keys whose values have this shape (labels, annotations)
    +schema:shape=SHAPE   the whole value has a named shape (a Kubernetes type)

Every object the chart defines gets `additionalProperties: false`, so a misspelled value fails
`helm install` with a message naming it. A value without a description, or an empty map or a list
without a shape, is an error: the generator refuses to document what it cannot type.

Callers: `make crds`; tests/chart/test_chart_generated.py runs `--check`, which writes nothing and
exits 1 naming the stale files.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "dopd"
VALUES_MARKER = "<!-- values: generated below by scripts/chart_values.py -->"
QUANTITY_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkKMGTPE]i?)?$"

SHAPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "quantity": {"type": ["string", "number"], "pattern": QUANTITY_PATTERN},
    "namespace": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
    "LocalObjectReference": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}},
    },
    "EnvVar": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[-._a-zA-Z][-._a-zA-Z0-9]*$"},
            "value": {"type": "string"},
            "valueFrom": {
                "type": "object",
                "description": "A Kubernetes EnvVarSource, checked by the API server.",
            },
        },
    },
    "Toleration": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "key": {"type": "string"},
            "operator": {"enum": ["Exists", "Equal"]},
            "value": {"type": "string"},
            "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
            "tolerationSeconds": {"type": "integer"},
        },
    },
    "Affinity": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            name: {
                "type": "object",
                "description": f"A Kubernetes {name[0].upper()}{name[1:]}, checked by the API server.",
            }
            for name in ("nodeAffinity", "podAffinity", "podAntiAffinity")
        },
    },
}
_NUMERIC_TAGS = ("minimum", "maximum", "minLength", "maxLength")
_TAGS = {"section", "type", "enum", "pattern", "uniqueItems", "items", "values", "shape", *_NUMERIC_TAGS}
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?:\s|$)")


class ValuesError(ValueError):
    """values.yaml breaks a rule of this generator; the message names the line and the fix."""


@dataclass
class Entry:
    """One documented key of values.yaml."""

    path: tuple[str, ...]
    line: int
    description: list[str]
    tags: dict[str, str]
    section: str | None = None
    children: list[Entry] = field(default_factory=list)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def opaque(self) -> bool:
        """True when the value's inside is described by a shape, not by keys of its own."""
        return any(tag in self.tags for tag in ("values", "shape", "items"))


def _split_block(block: list[str]) -> tuple[list[str], dict[str, str]]:
    text: list[str] = []
    tags: dict[str, str] = {}
    for raw in block:
        body = raw[1:]
        body = body.removeprefix(" ")
        if body.startswith("+"):
            name, _, value = body[1:].partition("=")
            tags[name.removeprefix("schema:").removeprefix("docs:")] = value
        else:
            text.append(body.rstrip())
    while text and not text[0]:
        text.pop(0)
    while text and not text[-1]:
        text.pop()
    return text, tags


def parse_entries(text: str) -> list[Entry]:
    """The documented keys of values.yaml in file order, nested as in the file."""
    roots: list[Entry] = []
    stack: list[tuple[int, Entry]] = []
    block: list[str] = []
    section: str | None = None
    skip_deeper_than: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))
        if skip_deeper_than is not None and (not stripped or indent > skip_deeper_than):
            continue
        skip_deeper_than = None
        if not stripped:  # a block ended by a blank line documents no key; keep only its section
            section = _split_block(block)[1].get("section", section)
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        match = _KEY.match(raw)
        if match is None:
            raise ValuesError(
                f"values.yaml:{number}: not a `key: value` line ({stripped!r}); indent list items under their key"
            )
        description, tags = _split_block(block)
        unknown = set(tags) - _TAGS
        if unknown:
            raise ValuesError(
                f"values.yaml:{number}: unknown tag(s) {sorted(unknown)} above `{match['key']}`"
            )
        section = tags.pop("section", section)
        block = []
        if not description:
            raise ValuesError(
                f"values.yaml:{number}: `{match['key']}` has no description: write one in the comment above it"
            )
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else None
        path = (*parent.path, match["key"]) if parent else (match["key"],)
        entry = Entry(path=path, line=number, description=description, tags=tags)
        if parent is None:
            entry.section, section = section, None
            roots.append(entry)
        else:
            parent.children.append(entry)
        stack.append((indent, entry))
        if entry.opaque:
            skip_deeper_than = indent
    return roots


def _json_type(entry: Entry, default: Any) -> list[str] | str:
    if "type" in entry.tags:
        types = entry.tags["type"].split("|")
        return types[0] if len(types) == 1 else types
    for python_type, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(default, python_type):
            return name
    raise ValuesError(f"values.yaml:{entry.line}: `{entry.dotted}` is null: give its type with +schema:type=")


def schema_of(entry: Entry, default: Any) -> dict[str, Any]:
    """The JSON schema of one value (and of its children)."""
    node: dict[str, Any] = {"description": "\n".join(entry.description)}
    if "shape" in entry.tags:
        node.update(_shape(entry, entry.tags["shape"]))
    elif isinstance(default, dict):
        node["type"] = "object"
        if "values" in entry.tags:
            node["additionalProperties"] = _shape(entry, entry.tags["values"])
        elif not entry.children:
            raise ValuesError(
                f"values.yaml:{entry.line}: `{entry.dotted}` is an empty map: tag it +schema:values= or +schema:shape="
            )
        else:
            documented = {child.path[-1] for child in entry.children}
            if documented != set(default):
                raise ValuesError(
                    f"values.yaml:{entry.line}: `{entry.dotted}` keys {sorted(set(default) ^ documented)} are not all documented"
                )
            node["additionalProperties"] = False
            node["properties"] = {c.path[-1]: schema_of(c, default[c.path[-1]]) for c in entry.children}
    elif isinstance(default, list):
        if "items" not in entry.tags:
            raise ValuesError(
                f"values.yaml:{entry.line}: `{entry.dotted}` is a list: give its items' shape with +schema:items="
            )
        node["type"] = "array"
        node["items"] = _shape(entry, entry.tags["items"])
        if "uniqueItems" in entry.tags:
            node["uniqueItems"] = True
    else:
        node["type"] = _json_type(entry, default)
    if "enum" in entry.tags:
        node["enum"] = entry.tags["enum"].split("|")
    for tag in _NUMERIC_TAGS:
        if tag in entry.tags:
            node[tag] = int(entry.tags[tag])
    if "pattern" in entry.tags:
        node["pattern"] = entry.tags["pattern"]
    node["default"] = default
    return node


def _shape(entry: Entry, name: str) -> dict[str, Any]:
    if name not in SHAPES:
        raise ValuesError(
            f"values.yaml:{entry.line}: `{entry.dotted}`: unknown shape {name!r}; known: {sorted(SHAPES)}"
        )
    return copy.deepcopy(SHAPES[name])


def build_schema(entries: list[Entry], values: dict[str, Any]) -> dict[str, Any]:
    documented = {entry.path[0] for entry in entries}
    if documented != set(values):
        raise ValuesError(
            f"values.yaml: top-level keys {sorted(set(values) ^ documented)} are not all documented"
        )
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the dopd chart (generated from values.yaml by scripts/chart_values.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": {entry.path[0]: schema_of(entry, values[entry.path[0]]) for entry in entries},
    }


def _markdown(description: list[str]) -> list[str]:
    """Comment text to Markdown: indented lines (the examples) become YAML code blocks."""
    out: list[str] = []
    code: list[str] = []
    for line in [*description, ""]:
        if line.startswith("  "):
            code.append(line[2:])
            continue
        if code:
            out += ["```yaml", *code, "```"]
            code = []
        out.append(line)
    return out[:-1]


def _type_name(node: dict[str, Any]) -> str:
    kind = node.get("type", "object")
    return "|".join(kind) if isinstance(kind, list) else str(kind)


def _readme_entries(entry: Entry, node: dict[str, Any]) -> list[str]:
    if entry.children and "properties" in node:
        out = [f"#### {entry.dotted}", "", *_markdown(entry.description), ""]
        for child in entry.children:
            out += _readme_entries(child, node["properties"][child.path[-1]])
        return out
    value = node["default"]
    if isinstance(value, (dict, list)) and value:
        default = yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip()
    else:
        default = json.dumps(value)
    return [
        f"#### **{entry.dotted}** ~ `{_type_name(node)}`",
        "",
        "Default:",
        "",
        "```yaml",
        default,
        "```",
        "",
        *_markdown(entry.description),
        "",
    ]


def build_readme(template: str, entries: list[Entry], schema: dict[str, Any]) -> str:
    if VALUES_MARKER not in template:
        raise ValuesError(f"README.template.md has no line {VALUES_MARKER!r}")
    head = template[: template.index(VALUES_MARKER) + len(VALUES_MARKER)]
    lines = [head, ""]
    for entry in entries:
        if entry.section:
            lines += [f"### {entry.section}", ""]
        lines += _readme_entries(entry, schema["properties"][entry.path[0]])
    return "\n".join(lines).rstrip() + "\n"


def generate(chart: Path) -> dict[Path, str]:
    """The generated files of a chart and their text."""
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    entries = parse_entries(text)
    schema = build_schema(entries, values)
    readme = build_readme((chart / "README.template.md").read_text(), entries, schema)
    return {
        chart / "values.schema.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n",
        chart / "README.md": readme,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory (default: charts/dopd)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file is stale"
    )
    args = parser.parse_args(argv)
    try:
        files = generate(args.chart)
    except ValuesError as exc:
        print(f"chart_values: {exc}", file=sys.stderr)
        return 2
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"chart_values: {path} is stale: run `make crds`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"chart_values: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
