"""What the end-to-end slow-path tests share: many client connections, SC's request count."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from cyberstar.lab.slowpath import SlowPathLab
from cyberstar.lab.wait import wait_until
from cyberstar.sc.client import ScClient


@contextmanager
def running_lab(**options) -> Iterator[SlowPathLab]:
    """A `SlowPathLab(**options)` whose FM leads and is primary on every PP node; skips the
    test where the lab cannot run."""
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF, network namespaces)")
    if shutil.which("etcd") is None:
        pytest.skip("etcd (Debian's etcd-server) is not installed: run `make install`")
    with SlowPathLab(**options) as lab:
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "fm1 to lead")
        wait_until(
            lambda: all(n["primary"] for n in lab.fm_get("fm1", "/status")["pp_nodes"].values()),
            30, "fm1 to be primary on every PP node",
        )  # fmt: skip
        yield lab


def open_connections(lab: SlowPathLab, dst: str, port: int, n: int, workers: int = 16,
                     keep: bool = False) -> tuple[list, list[Exception]]:  # fmt: skip
    sockets, errors = [], []
    lock = threading.Lock()

    def one(_: int) -> None:
        try:
            s = lab.connect(dst, port, timeout=15)
        except Exception as exc:
            with lock:
                errors.append(exc)
            return
        if keep:
            with lock:
                sockets.append(s)
        else:
            s.close()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return sockets, errors


def sc_requests(lab: SlowPathLab) -> int:
    """Compute requests the SC nodes have answered (heads count requests they received)."""

    async def census() -> int:
        total = 0
        for node in lab.sc.nodes.values():
            if not node.alive:
                continue
            async with ScClient(node.config["listen"]) as c:
                reply = await c.inspect()
            total += reply.counters.get("requests", 0)
        return total

    return asyncio.run(census())
