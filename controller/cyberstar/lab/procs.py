"""Processes and ports of the labs: free ports, waiting for a listener, stopping a group."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path


class LabError(RuntimeError):
    pass


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 20000  # where free_port looks, up to the start of the ephemeral range
_handed_out: set[int] = set()
_random = random.SystemRandom()  # not the `random` module's state, which tests may seed


def ephemeral_start() -> int:
    """The first port the kernel hands out as a connection's source port."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port that is free now, below the kernel's ephemeral range and not
    handed out before by this process. A port the kernel picked (bind to 0) could become some
    connection's source port between this call and the bind of the process it is meant for
    (etcd failed that way: "bind: address already in use"); ports below the range are never
    picked for connections."""
    top = ephemeral_start()
    candidates = range(LOWEST_PORT, top)
    for _ in range(200 if len(candidates) > 1000 else 0):
        port = _random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # an unusual ephemeral range leaves no room below it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"{what} exited with {proc.returncode}; log: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)  # polling a port that is about to open
    raise LabError(f"{what} did not listen on port {port} within {timeout} s; log: {log}")


def terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the process's group, SIGKILL to it after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
