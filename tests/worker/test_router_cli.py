"""The router's command line refuses settings that contradict each other, naming the flags and the fix,
before it binds a port or contacts a worker."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dopd_worker.cli import router

WORKERS = ["--model", "small", "--prefill", "http://127.0.0.1:9", "--decode", "http://127.0.0.1:9"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--ttft-slo-seconds", "1.5", "--dispatch-deadline-seconds", "1.0"],
            "--dispatch-deadline-seconds is for a router without admission",
        ),
        (["--dispatch-deadline-seconds", "0"], "--dispatch-deadline-seconds must be positive"),
        (["--aging-seconds", "0"], "--aging-seconds"),
    ],
)
def test_contradicting_or_invalid_scheduling_flags_are_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(router, [*WORKERS, *args])
    assert result.exit_code == 2
    assert message in result.output
