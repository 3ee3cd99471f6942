"""What the end-to-end slow-path tests share: many client connections, SC's request count."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import needs

from cyberstar.lab.slowpath import SlowPathLab
from cyberstar.lab.wait import wait_until
from cyberstar.sc.client import ScClient


@contextmanager
def running_lab(**options) -> Iterator[SlowPathLab]:
    """A `SlowPathLab(**options)` whose FM leads and is primary on every PP node; skips the
    test where the lab cannot run."""
    needs.root()
    needs.etcd()
    with SlowPathLab(**options) as lab:
        wait_until(lambda: lab.fm_get("fm1", "/status")["leader"], 30, "fm1 to lead")
        # ready: primary and programmed (the static entries and fabric next hops written)
        wait_until(
            lambda: all(n["ready"] for n in lab.fm_get("fm1", "/status")["pp_nodes"].values()),
            60, "fm1 to be primary on every PP node and to have programmed it",
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


def sc_requests(lab: SlowPathLab, counter: str = "requests") -> int:
    """Compute requests the SC nodes have answered (heads count requests they received), or
    another of their counters summed."""

    async def census() -> int:
        total = 0
        for node in lab.sc.nodes.values():
            if not node.alive:
                continue
            async with ScClient(node.config["listen"], lab.sc.client_tls) as c:
                reply = await c.inspect()
            total += reply.counters.get(counter, 0)
        return total

    return asyncio.run(census())


class Conversations:
    """Established connections kept talking from a thread, round after round: each round every
    connection sends a message and must get its echo. Failures (a reset, a timeout, a wrong
    echo) are recorded per connection, and that connection stops."""

    def __init__(self, sockets: list, timeout: float = 10.0) -> None:
        self.sockets = list(sockets)
        for s in self.sockets:
            s.settimeout(timeout)
        self.rounds = 0
        self.echoes = 0
        self.failures: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conversations", daemon=True)

    def __enter__(self) -> Conversations:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for s in self.sockets:
            s.close()

    def _run(self) -> None:
        alive = dict(enumerate(self.sockets))
        while not self._stop.is_set() and alive:
            for i, s in list(alive.items()):
                try:
                    s.sendall(b"ping")
                    reply = s.recv(100)
                    if reply != b"echo:ping":
                        raise ConnectionError(f"wrong echo {reply!r}")
                    self.echoes += 1
                except Exception as exc:
                    self.failures.append((i, repr(exc)))
                    del alive[i]
            self.rounds += 1

    def wait_rounds(self, n: int, timeout: float = 60) -> None:
        """Wait until n more rounds have completed."""
        target = self.rounds + n
        wait_until(lambda: self.rounds >= target or self.failures, timeout, f"{n} rounds")
