"""`cyberstar.timeline`: marks go to DIR/PID.events only when the environment names DIR, with
CLOCK_MONOTONIC times that line up with another process's clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cyberstar import timeline

MARK_TWO = (
    "from cyberstar import timeline; timeline.mark('a.first'); timeline.mark('b.second'); "
    "print(timeline._out is None)"
)


def run(env: dict, cwd) -> str:
    return subprocess.run(
        [sys.executable, "-c", MARK_TWO],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_marks_are_written_with_this_hosts_monotonic_clock(tmp_path) -> None:
    before = time.monotonic_ns()
    assert run({**os.environ, timeline.ENV: str(tmp_path)}, tmp_path) == "False"
    after = time.monotonic_ns()
    (written,) = tmp_path.glob("*.events")
    lines = [line.split() for line in written.read_text().splitlines()]
    assert [name for name, _ in lines] == ["a.first", "b.second"]
    first, second = (int(t) for _, t in lines)
    assert before <= first <= second <= after


def test_nothing_is_written_without_the_variable(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != timeline.ENV}
    assert run(env, tmp_path) == "True"  # no file opened: marking is one test of a global
    assert list(tmp_path.iterdir()) == []
