"""Regenerate the command samples in README.md from real runs, or check that they are current.

README.md marks each generated block with `<!-- sample: NAME -->` ... `<!-- /sample -->`; between the
markers goes a console block with the command (`$ dopd ...`) and its output, exactly as a user running
it from the repository root sees it. Nothing outside the markers is touched.

Two kinds of block. The `dopd` samples (SAMPLES) run here, in seconds, without a cluster. The
`journey-*` blocks of "Your first hour" (JOURNEY_BLOCKS) are the Helm journey on the local cluster:
e2e/test_helm_journey.py records their commands and raw output in a capture file, and `--journey`
trims them as README shows them (JOURNEY_CUTS: `[...]` marks each cut; ages, ports and timestamps stay
as they came) and rewrites those blocks.

    python scripts/readme_samples.py           # run every `dopd` sample, rewrite README.md's blocks
    python scripts/readme_samples.py --check   # exit 1, with a diff, if a `dopd` block differs from a
                                               # fresh run or a journey block is empty
    DOPD_README_CAPTURE=/tmp/journey.json python -m pytest e2e/test_helm_journey.py
    python scripts/readme_samples.py --journey /tmp/journey.json   # rewrite the journey blocks

Callers: a developer after changing what a sampled command prints, and tests/test_readme_samples.py
(which fails, naming this script, when a block is stale; a journey block it can only check for content).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
REGENERATE = "python scripts/readme_samples.py"
REGENERATE_JOURNEY = (
    "DOPD_README_CAPTURE=/tmp/journey.json python -m pytest e2e/test_helm_journey.py, "
    "then python scripts/readme_samples.py --journey /tmp/journey.json"
)
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


# ----------------------------------------------------------------------------- the Helm journey's blocks

# The capture's block names, in README order; README marks each as `<!-- sample: journey-NAME -->`.
JOURNEY_BLOCKS = ("install", "explain", "apply", "get-dm", "describe", "upgrade", "uninstall")
COMMAND_WIDTH_CHARS = 100  # a longer command line is wrapped before an option, with ` \`
# What README shows of `kubectl describe dm`'s conditions (the others are cut)
SHOWN_CONDITIONS = ("MetricsHealthy", "ScalingActive", "ScalingLimited", "BudgetLimited", "Ready")


class CapturedStep(BaseModel):
    """One command of the journey: as typed from the repository root, and its raw output."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: list[str] = Field(min_length=1)
    stdout: str
    stderr: str


class JourneyCapture(BaseModel):
    """The file e2e/test_helm_journey.py writes when DOPD_README_CAPTURE names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    captured_at: datetime
    blocks: dict[str, list[CapturedStep]]


def journey_marker(name: str) -> str:
    return f"journey-{name}"


def _cut(lines: list[str], kept: Sequence[int], indent: str = "") -> list[str]:
    """`lines[i]` for each kept index, in order, with `{indent}[...]` wherever lines are left out."""
    out: list[str] = []
    last = -1
    for index in kept:
        if index != last + 1:
            out.append(f"{indent}[...]")
        out.append(lines[index])
        last = index
    if last != len(lines) - 1:
        out.append(f"{indent}[...]")
    return out


def _index(lines: Sequence[str], predicate: Callable[[str], bool], what: str, start: int = 0) -> int:
    for index in range(start, len(lines)):
        if predicate(lines[index]):
            return index
    raise SampleError(f"journey capture: {what} not found in the output")


def helm_notes_excerpt(lines: list[str]) -> list[str]:
    """`helm install`: the release and what NOTES says was installed; the next steps are cut (README
    goes through them)."""
    notes = _index(lines, lambda line: line == "NOTES:", "`NOTES:`")
    steps = _index(lines, lambda line: re.match(r"^1\. ", line) is not None, "NOTES' step `1.`", notes)
    kept = lines[:steps]
    while kept and not kept[-1].strip():
        kept.pop()
    return [*kept, "[... the next steps, the commands below ...]"]


def helm_revision_excerpt(lines: list[str]) -> list[str]:
    """`helm upgrade`: the release up to its new revision (the notes are the install's)."""
    revision = _index(lines, lambda line: line.startswith("REVISION: "), "`REVISION:`")
    return _cut(lines, range(revision + 1))


def starting_line_excerpt(lines: list[str]) -> list[str]:
    """The operator's log: its start-up line, which shows the log format."""
    return _cut(lines, [_index(lines, lambda line: "dopd operator starting" in line, "the start-up line")])


def _sections(lines: Sequence[str], start: int, end: int, is_head: Callable[[str], bool]) -> list[range]:
    """Lines [start, end) split into spans, each opening at a line `is_head` accepts (lines before the
    first head belong to none)."""
    heads = [i for i in range(start, end) if is_head(lines[i])]
    return [range(first, stop) for first, stop in zip(heads, [*heads[1:], end], strict=True)]


def _condition_type(lines: Sequence[str]) -> str:
    typed = [line.split(":", 1)[1].strip() for line in lines if line.startswith("    Type:")]
    if len(typed) != 1:
        raise SampleError(f"journey capture: a condition without one `Type:` line: {list(lines)}")
    return typed[0]


def _conditions_excerpt(lines: Sequence[str]) -> list[str]:
    """The SHOWN_CONDITIONS of describe's `Conditions:` entries (`lines`, without the heading)."""
    entries = {
        _condition_type(lines[entry.start : entry.stop]): entry
        for entry in _sections(
            lines, 0, len(lines), lambda line: line.startswith("    Last Transition Time:")
        )
    }
    missing = [name for name in SHOWN_CONDITIONS if name not in entries]
    if missing:
        raise SampleError(f"journey capture: `kubectl describe dm` lacks the conditions {missing}")
    kept = sorted(i for name in SHOWN_CONDITIONS for i in entries[name])
    return _cut(list(lines), kept, "    ")


def describe_excerpt(lines: list[str]) -> list[str]:
    """`kubectl describe dm`: name and namespace; under Status, the SHOWN_CONDITIONS and the whole last
    decision; all the Events. The metadata, the spec and the rest of the status are cut."""
    namespace = _index(lines, lambda line: line.startswith("Namespace:"), "`Namespace:`")
    status = _index(lines, lambda line: line == "Status:", "`Status:`")
    events = _index(lines, lambda line: line == "Events:", "`Events:`", status)
    out = [*lines[: namespace + 1], "[... the spec ...]", "Status:"]
    found = set()
    for section in _sections(lines, status + 1, events, lambda line: re.match(r"^  \S", line) is not None):
        head = lines[section.start]
        found.add(head)
        if head == "  Conditions:":
            out += [head, *_conditions_excerpt(lines[section.start + 1 : section.stop])]
        elif head == "  Last Decision:":
            out += lines[section.start : section.stop]
        elif out[-1] != "  [...]":
            out.append("  [...]")
    if not {"  Conditions:", "  Last Decision:"} <= found:
        raise SampleError("journey capture: `kubectl describe dm` has no Conditions or no Last Decision")
    return [*out, *lines[events:]]


@dataclass(frozen=True)
class Cut:
    """How README shows the output of a journey command whose argv starts with `tool` and holds `verb`."""

    tool: str
    verb: str
    excerpt: Callable[[list[str]], list[str]]
    comment: str = ""  # after the command line, as `# comment`

    def matches(self, command: Sequence[str]) -> bool:
        return command[0] == self.tool and self.verb in command[1:]


JOURNEY_CUTS = (
    Cut("helm", "install", helm_notes_excerpt),
    Cut("helm", "upgrade", helm_revision_excerpt),
    Cut("kubectl", "logs", starting_line_excerpt, comment="now text, was JSON"),
    Cut("kubectl", "describe", describe_excerpt),
)  # any other command is shown whole


def command_line(command: Sequence[str], comment: str = "") -> str:
    """`$ command`, wrapped before an option when longer than COMMAND_WIDTH_CHARS."""
    lines = [f"$ {shlex.quote(command[0])}"]
    for arg in command[1:]:
        word = shlex.quote(arg)
        if arg.startswith("-") and len(lines[-1]) + 1 + len(word) > COMMAND_WIDTH_CHARS - 2:
            lines[-1] += " \\"
            lines.append(f"    {word}")
        else:
            lines[-1] += f" {word}"
    if comment:
        lines[-1] += f"     # {comment}"
    return "\n".join(lines)


def journey_block(name: str, steps: Sequence[CapturedStep]) -> str:
    """The README block of captured block `name`: a console fence with each step, trimmed."""
    shown = []
    for step in steps:
        typed = shlex.join(step.command)
        if step.stderr:
            # README would show the reader an error or a warning: say so instead
            raise SampleError(f"journey block {name}: `{typed}` wrote to stderr:\n{step.stderr}")
        cut = next((c for c in JOURNEY_CUTS if c.matches(step.command)), None)
        lines = step.stdout.rstrip().splitlines()
        shown += [
            command_line(step.command, cut.comment if cut else ""),
            *(cut.excerpt(lines) if cut else lines),
        ]
    return "```console\n" + "\n".join(shown) + "\n```\n"


def load_capture(path: Path) -> JourneyCapture:
    """The capture at `path`, with exactly the JOURNEY_BLOCKS, none empty; SampleError otherwise."""
    try:
        capture = JourneyCapture.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise SampleError(f"journey capture {path}: {exc}") from exc
    missing = [name for name in JOURNEY_BLOCKS if not capture.blocks.get(name)]
    unknown = sorted(set(capture.blocks) - set(JOURNEY_BLOCKS))
    if missing or unknown:
        raise SampleError(
            f"journey capture {path}: blocks missing or empty {missing}, unknown {unknown}; "
            f"it is written by a passing run of: {REGENERATE_JOURNEY}"
        )
    return capture


def with_journey(text: str, capture: JourneyCapture) -> str:
    """README text with every journey block rewritten from `capture`."""
    for name in JOURNEY_BLOCKS:
        text = with_block(text, journey_marker(name), journey_block(name, capture.blocks[name]))
    return text


def empty_journey_blocks(text: str) -> list[str]:
    """The journey markers whose block is not a console fence opening with a command."""
    empty = []
    for name in JOURNEY_BLOCKS:
        block = block_in(text, journey_marker(name))
        if not (block.startswith("```console\n$ ") and block.endswith("\n```\n")):
            empty.append(journey_marker(name))
    return empty


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only compare; exit 1 if a block is stale")
    mode.add_argument(
        "--journey",
        type=Path,
        metavar="CAPTURE",
        help="rewrite the journey-* blocks from this capture of e2e/test_helm_journey.py",
    )
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    if args.check:
        diffs = stale(text)
        for diff in diffs.values():
            print(diff)
        if diffs:
            print(f"stale README samples: {', '.join(diffs)}; regenerate with `{REGENERATE}`")
        empty = empty_journey_blocks(text)
        if empty:
            print(f"empty README samples: {', '.join(empty)}; fill them with `{REGENERATE_JOURNEY}`")
        return 1 if diffs or empty else 0
    if args.journey is not None:
        capture = load_capture(args.journey)
        README.write_text(with_journey(text, capture), encoding="utf-8")
        print(
            f"rewrote {len(JOURNEY_BLOCKS)} journey block(s) in {README} from the run of {capture.captured_at}"
        )
        return 0
    for sample in SAMPLES:
        text = with_block(text, sample.name, run_sample(sample))
    README.write_text(text, encoding="utf-8")
    print(f"rewrote {len(SAMPLES)} sample(s) in {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
