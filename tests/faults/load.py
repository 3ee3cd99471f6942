"""A connection load the fault suite runs while it kills processes: long-lived connections that
keep talking, and a stream of new ones. The counts are the clients' own: what a user of the
tenant's network would see."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from socket import socket


@dataclass
class Counts:
    attempted: int = 0  # new connections tried
    failed: int = 0  # of which did not connect (or did not echo) within the timeout
    established: int = 0  # long-lived connections opened at the start
    reset: int = 0  # long-lived connections that broke (error, reset, wrong echo)
    exchanges: int = 0  # echoes on long-lived connections
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "errors"}


class ConnectionLoad:
    def __init__(self, connect: Callable[[float], socket], established: int = 10,
                 workers: int = 3, connect_timeout_s: float = 20.0) -> None:  # fmt: skip
        self.connect = connect
        self.workers = workers
        self.timeout = connect_timeout_s
        self.counts = Counts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open = [connect(self.timeout) for _ in range(established)]
        self.counts.established = len(self._open)
        self._threads = [threading.Thread(target=self._talk, daemon=True)]
        self._pool = ThreadPoolExecutor(workers)

    def start(self) -> None:
        for t in self._threads:
            t.start()
        for _ in range(self.workers):
            self._pool.submit(self._new_connections)

    def stop(self) -> Counts:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        self._pool.shutdown(wait=True)
        for s in self._open:
            s.close()
        return self.counts

    def progress(self) -> int:
        """New connections made so far (a test waits for more to know the load goes on)."""
        with self._lock:
            return self.counts.attempted - self.counts.failed

    def wait_for_more(self, n: int, timeout: float) -> None:
        target = self.progress() + n
        deadline = time.monotonic() + timeout
        while self.progress() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the load made fewer than {n} new connections in {timeout} s: "
                                   f"{self.counts.as_dict()}")  # fmt: skip
            time.sleep(0.1)

    def _talk(self) -> None:
        n = 0
        while not self._stop.wait(0.5):
            for s in list(self._open):
                n += 1
                message = f"ping {n}\n".encode()
                try:
                    s.settimeout(self.timeout)
                    s.sendall(message)
                    got = b""
                    while len(got) < len(message) + 5:
                        chunk = s.recv(100)
                        if not chunk:
                            raise ConnectionResetError("closed by the other end")
                        got += chunk
                    if got != b"echo:" + message:
                        raise ConnectionError(f"wrong echo {got!r}")
                except OSError as exc:
                    with self._lock:
                        self.counts.reset += 1
                        self.counts.errors.append(f"established: {exc!r}")
                    self._open.remove(s)
                    s.close()
                    continue
                with self._lock:
                    self.counts.exchanges += 1

    def _new_connections(self) -> None:
        while not self._stop.is_set():
            try:
                s = self.connect(self.timeout)
            except OSError as exc:
                with self._lock:
                    self.counts.attempted += 1
                    self.counts.failed += 1
                    self.counts.errors.append(f"new: {exc!r}")
                continue
            s.close()
            with self._lock:
                self.counts.attempted += 1
            time.sleep(0.05)
