"""What the end-to-end slow-path tests share: many client connections, SC's request count."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from cyberstar.lab.slowpath import SlowPathLab
from cyberstar.sc.client import ScClient


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
