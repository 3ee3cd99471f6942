"""Children started through `tied_to_parent` do not outlive a parent killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PARENT = """
import subprocess, sys, time
from cyberstar.subprocs import tied_to_parent
child = subprocess.Popen(tied_to_parent(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def test_child_dies_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        # setpriv sets the death signal, then execs: wait for the exec.
        deadline = time.monotonic() + 5
        while _comm(child_pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _alive(child_pid) and _comm(child_pid) == "sleep"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.stdout.close()
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
