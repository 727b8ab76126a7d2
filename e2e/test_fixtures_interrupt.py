"""A test session ended by SIGTERM (a CI job's timeout, `kill`) tears its session fixtures down, so
the control plane and the Prometheus instances the fixtures started in their own sessions do not
outlive it (`dopd_e2e.fixtures` turns SIGTERM into pytest's KeyboardInterrupt). Without the plugin the
same session dies with its fixtures standing: the check below can fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dopd_e2e
from dopd_e2e.cluster import wait_until

_SESSION = """
import pathlib
import time

import pytest

MARK = pathlib.Path({mark!r})


@pytest.fixture(scope="session")
def held():
    MARK.write_text("up")
    yield
    MARK.write_text("torn down")


def test_waits(held):
    time.sleep(120)
"""


@pytest.mark.parametrize("plugin", [True, False], ids=["with-dopd-fixtures", "without"])
def test_sigterm_tears_the_session_fixtures_down(tmp_path: Path, plugin: bool) -> None:
    mark = tmp_path / "fixture.state"
    (tmp_path / "test_session.py").write_text(_SESSION.format(mark=str(mark)))
    package_parent = str(Path(dopd_e2e.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_session.py"]
    if plugin:
        args[3:3] = ["-p", "dopd_e2e.fixtures"]
    session = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: mark.exists() and mark.read_text() == "up", 60.0, "the session's fixture to start", 0.1
        )
        session.send_signal(signal.SIGTERM)
        output, _ = session.communicate(timeout=60)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait(timeout=10)
    if plugin:
        assert mark.read_text() == "torn down", output.decode(errors="replace")[-2000:]
        assert session.returncode == pytest.ExitCode.INTERRUPTED  # a failed run, never a passed one
    else:
        assert mark.read_text() == "up"
        assert session.returncode == -signal.SIGTERM
