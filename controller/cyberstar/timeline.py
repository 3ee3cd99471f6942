"""Opt-in timestamps of the slow path's hops, read by `bench/slowpath.py --timeline`.

With `CYBERSTAR_TIMELINE_DIR` in a daemon's environment, `mark(event)` appends a line
`EVENT NANOSECONDS` to `DIR/PID.events`, the time from CLOCK_MONOTONIC, one clock for every
process of the host, so the events of one first packet line up across the PP agent, FM and the
SC nodes. Without it `mark` returns at once. Events are named `daemon.what_happened`; a daemon
writes through a 64 kB buffer (flushed at exit), so marking costs a formatted string, not a
system call.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import TextIO

ENV = "CYBERSTAR_TIMELINE_DIR"
_out: TextIO | None = None


def _open() -> None:
    global _out
    directory = os.environ.get(ENV)
    if not directory:
        return
    _out = open(os.path.join(directory, f"{os.getpid()}.events"), "a", buffering=1 << 16)  # noqa: SIM115
    atexit.register(_out.flush)


def mark(event: str) -> None:
    """Record that `event` happened now (when the timeline is on)."""
    if _out is not None:
        _out.write(f"{event} {time.monotonic_ns()}\n")


_open()
