"""Regenerate the command samples in README.md from real runs, or check that they are current.

README.md marks each generated block with `<!-- sample: NAME -->` ... `<!-- /sample -->`; between the
markers goes a console block with the command (`$ dopd ...`) and its output, exactly as a user running
it from the repository root sees it. Nothing outside the markers is touched.

    python scripts/readme_samples.py           # run every sample's command, rewrite README.md's blocks
    python scripts/readme_samples.py --check   # exit 1, with a diff, if a block differs from a fresh run

Callers: a developer after changing what a sampled command prints, and tests/test_readme_samples.py
(which fails, naming this script, when a block is stale).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
REGENERATE = "python scripts/readme_samples.py"
END_MARKER = "<!-- /sample -->"
COMMAND_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Sample:
    name: str  # the marker's name: <!-- sample: NAME -->
    argv: tuple[str, ...]  # the command as README shows it, starting with "dopd", run from the repo root


SAMPLES = (
    Sample(
        "dopd-plan",
        (
            "dopd", "plan", "-f", "examples/vllm-llama3-8b.yaml", "--rate", "20",
            "--isl", "1000", "--isl-p90", "2500", "--osl", "200", "--osl-p90", "500",
        ),
    ),
)  # fmt: skip


class SampleError(RuntimeError):
    """A sample's command failed, or README.md's markers for it are missing or malformed."""


def run_sample(sample: Sample) -> str:
    """The README block for `sample`: a console fence with the command and its fresh output."""
    if sample.argv[0] != "dopd":
        raise SampleError(f"sample {sample.name}: only `dopd` commands are sampled, not {sample.argv[0]}")
    # `python -m dopd_operator.cli` is what the `dopd` console script runs, in this interpreter's env.
    done = subprocess.run(
        [sys.executable, "-m", "dopd_operator.cli", *sample.argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    command = shlex.join(sample.argv)
    if done.returncode != 0 or done.stderr:
        # A sample that fails or writes to stderr would show the reader an error or noise: say so.
        raise SampleError(
            f"sample {sample.name}: `{command}` exited {done.returncode}\n"
            f"stdout:\n{done.stdout}stderr:\n{done.stderr}"
        )
    return f"```console\n$ {command}\n{done.stdout.rstrip()}\n```\n"


def _span(text: str, name: str) -> tuple[int, int]:
    """Start and end offsets of the body between sample `name`'s markers (after the start marker's line)."""
    starts = [m for m in re.finditer(rf"^<!-- sample: {re.escape(name)} -->\n", text, re.MULTILINE)]
    if len(starts) != 1:
        raise SampleError(f"README.md has {len(starts)} `<!-- sample: {name} -->` markers; it needs one")
    body_start = starts[0].end()
    body_end = text.find(f"\n{END_MARKER}", body_start - 1)
    if body_end < 0 or "<!-- sample:" in text[body_start:body_end]:
        raise SampleError(f"README.md's sample {name} has no `{END_MARKER}` before the next sample")
    return body_start, body_end + 1


def block_in(text: str, name: str) -> str:
    """The current body of sample `name` in README text."""
    start, end = _span(text, name)
    return text[start:end]


def with_block(text: str, name: str, block: str) -> str:
    """README text with the body of sample `name` replaced by `block`; everything else unchanged."""
    start, end = _span(text, name)
    return text[:start] + block + text[end:]


def stale(text: str, samples: Sequence[Sample] = SAMPLES) -> dict[str, str]:
    """Sample name -> unified diff (README's block against a fresh run), for every block that differs."""
    diffs = {}
    for sample in samples:
        current, fresh = block_in(text, sample.name), run_sample(sample)
        if current != fresh:
            lines = difflib.unified_diff(
                current.splitlines(keepends=True),
                fresh.splitlines(keepends=True),
                f"README.md ({sample.name})",
                "fresh run",
            )
            diffs[sample.name] = "".join(lines)
    return diffs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    if args.check:
        diffs = stale(text)
        for diff in diffs.values():
            print(diff)
        if diffs:
            print(f"stale README samples: {', '.join(diffs)}; regenerate with `{REGENERATE}`")
        return 1 if diffs else 0
    for sample in SAMPLES:
        text = with_block(text, sample.name, run_sample(sample))
    README.write_text(text, encoding="utf-8")
    print(f"rewrote {len(SAMPLES)} sample(s) in {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
