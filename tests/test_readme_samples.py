"""README.md's command samples are real runs (scripts/readme_samples.py).

Why these tests: a newcomer copies the README's commands and compares what they get; a sample that
predates a change to the planner (as the `dopd plan` one predated the P99 sizing) misleads them. The
first test fails whenever a marked block differs from a fresh run, and says how to regenerate it; the
others pin the rewriting to the marked blocks only and make a failing sample command an error rather
than README text.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _samples_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_samples", REPO / "scripts" / "readme_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


samples = _samples_module()


def test_readme_samples_match_a_fresh_run() -> None:
    diffs = samples.stale((REPO / "README.md").read_text(encoding="utf-8"))
    assert not diffs, (
        f"README.md samples {', '.join(diffs)} differ from a fresh run; "
        f"regenerate them with `{samples.REGENERATE}`\n" + "\n".join(diffs.values())
    )


def test_the_plan_sample_is_marked_in_the_readme() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = samples.block_in(text, "dopd-plan")
    assert block.startswith("```console\n$ dopd plan -f examples/vllm-llama3-8b.yaml --rate 20 ")
    assert block.endswith("```\n")


def test_rewriting_touches_only_the_named_block() -> None:
    text = (
        "intro\n<!-- sample: a -->\nold a\n<!-- /sample -->\nmiddle\n"
        "<!-- sample: b -->\nold b\n<!-- /sample -->\nend\n"
    )
    assert samples.with_block(text, "a", "new a\n") == (
        "intro\n<!-- sample: a -->\nnew a\n<!-- /sample -->\nmiddle\n"
        "<!-- sample: b -->\nold b\n<!-- /sample -->\nend\n"
    )
    # An empty block can be filled (a newly added marker pair).
    assert samples.with_block("<!-- sample: c -->\n<!-- /sample -->\n", "c", "x\n") == (
        "<!-- sample: c -->\nx\n<!-- /sample -->\n"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("no markers\n", "0 `<!-- sample: a -->` markers", id="missing"),
        pytest.param(
            "<!-- sample: a -->\n<!-- /sample -->\n<!-- sample: a -->\n<!-- /sample -->\n",
            "2 `<!-- sample: a -->` markers",
            id="duplicated",
        ),
        pytest.param("<!-- sample: a -->\nbody\n", "no `<!-- /sample -->`", id="unclosed"),
        pytest.param(
            "<!-- sample: a -->\nbody\n<!-- sample: b -->\nx\n<!-- /sample -->\n",
            "no `<!-- /sample -->` before the next sample",
            id="closed-only-after-the-next-sample",
        ),
    ],
)
def test_malformed_markers_fail_loudly(text: str, words: str) -> None:
    with pytest.raises(samples.SampleError, match=re.escape(words)):
        samples.with_block(text, "a", "new\n")


def test_a_failing_command_is_an_error_not_a_sample(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    bad = samples.Sample("bad", ("dopd", "plan", "-f", str(missing), "--rate", "1"))
    with pytest.raises(
        samples.SampleError, match=r"sample bad: `dopd plan -f .*absent.yaml --rate 1` exited 2"
    ):
        samples.run_sample(bad)
