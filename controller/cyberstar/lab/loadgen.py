"""The lab's load generator: real TCP connections and HTTP requests at set rates, counted by
the client itself.

`python -m cyberstar.lab.loadgen SPEC.json` (the lab starts one in each tenant host). It opens
new connections to `target` open-loop, at the rate the schedule gives for each moment; each
connection sends a request, then one every `request_interval_s` until it has been open
`hold_s`, and closes. `persistent` connections are opened at the start and send a request
every `probe_interval_s` until the end: they show how long a connection stalls when its path
breaks. Every `report_interval_s` it appends one JSON line to `out`:

    {"t": seconds since t0, "attempted", "established", "failed", "reset", "completed",
     "closed_by_peer", "requests", "responses", "request_timeouts" (counts in the interval),
     "active" (connections open now), "lag" (connections due but not yet attempted),
     "max_latency_ms" (slowest response in the interval), "connect_ms" (mean connect time),
     "loop_lag_ms" (how late the generator itself woke up: its own stall)}

and a `{"stall": ...}` line for every response slower than `stall_s` and every reset, then one
`{"summary": ...}` line. A connection *fails* when it cannot be established (refused, timed
out, unreachable) or a request gets no answer within `request_timeout_s`; it is *reset* when an
established connection receives a RST (or its peer vanishes under a write); it *completes*
when it closes as planned with every request answered. Times are `time.monotonic()`, the same
clock in every namespace, relative to the spec's `t0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REQUEST = b"GET / HTTP/1.1\r\nHost: lab\r\nUser-Agent: cyberstar-loadgen\r\n\r\n"
COUNTERS = (
    "attempted",
    "established",
    "failed",
    "reset",
    "completed",
    "closed_by_peer",
    "requests",
    "responses",
    "request_timeouts",
)


@dataclass
class LoadSpec:
    target: str
    port: int
    t0: float
    duration_s: float
    out: str
    schedule: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 0.0)])
    hold_s: float = 0.0
    request_interval_s: float = 1.0
    persistent: int = 0
    probe_interval_s: float = 0.1
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 10.0
    report_interval_s: float = 0.1
    stall_s: float = 0.1
    max_open: int = 60000

    @classmethod
    def load(cls, path: Path) -> LoadSpec:
        data = json.loads(path.read_text())
        data["schedule"] = [tuple(step) for step in data.get("schedule", [(0.0, 0.0)])]
        return cls(**data)

    def rate(self, t: float) -> float:
        """New connections per second at time t."""
        current = 0.0
        for start, rate in self.schedule:
            if start <= t:
                current = rate
        return current

    def due(self, t: float) -> float:
        """Connections due by time t: the integral of the schedule from 0."""
        total, steps = 0.0, [*self.schedule, (math.inf, 0.0)]
        for (start, rate), (end, _) in itertools.pairwise(steps):
            if t <= start:
                break
            total += rate * (min(t, end) - start)
        return total


class Stats:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.totals = dict.fromkeys(COUNTERS, 0)
        self.active = 0
        self.max_latency = 0.0
        self.connect_times: list[float] = []
        self.all_connect_times: list[float] = []

    def inc(self, name: str) -> None:
        self.counts[name] += 1
        self.totals[name] += 1

    def interval(self) -> dict:
        out = dict(self.counts)
        out["active"] = self.active
        out["max_latency_ms"] = round(self.max_latency * 1000, 2)
        times = self.connect_times
        out["connect_ms"] = round(sum(times) / len(times) * 1000, 2) if times else None
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.max_latency = 0.0
        self.connect_times = []
        return out


class LoadGenerator:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.stats = Stats()
        self.out = open(spec.out, "a", buffering=1)  # noqa: SIM115 - closed in run()
        self.stop_at = spec.t0 + spec.duration_s
        self.tasks: set[asyncio.Task] = set()
        self.attempted = 0
        self._ids = 0

    def now(self) -> float:
        return time.monotonic() - self.spec.t0

    def write(self, record: dict) -> None:
        self.out.write(json.dumps(record) + "\n")

    async def run(self) -> None:
        try:
            reporter = asyncio.create_task(self._report())
            for i in range(self.spec.persistent):
                # spread the persistent connections over the first second
                delay = i / max(1, self.spec.persistent)
                self._spawn(self._connection(math.inf, self.spec.probe_interval_s, True, delay))
            await self._open_loop()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            reporter.cancel()
            self.write({"t": round(self.now(), 3), **self.stats.interval()})
            times = sorted(self.stats.all_connect_times)
            summary = dict(self.stats.totals)
            summary["connect_ms"] = (
                {
                    q: round(times[min(len(times) - 1, int(len(times) * float(q)))] * 1000, 2)
                    for q in ("0.5", "0.99")
                }
                if times
                else {}
            )
            summary["scheduled"] = round(self.spec.due(self.spec.duration_s))
            self.write({"summary": summary})
        finally:
            self.out.close()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open_loop(self) -> None:
        """Attempt connection n at the moment the schedule's integral reaches n."""
        while (t := self.now()) < self.spec.duration_s:
            due = self.spec.due(t)
            while self.attempted < int(due):
                self.attempted += 1
                if self.stats.active + len(self.tasks) >= self.spec.max_open:
                    continue  # counted as lag: due but never attempted
                self._spawn(self._connection(self.spec.hold_s, self.spec.request_interval_s))
            rate = self.spec.rate(t)
            wait = (int(due) + 1 - due) / rate if rate > 0 else 0.05
            await asyncio.sleep(min(max(wait, 0.0005), 0.05))

    async def _report(self) -> None:
        interval = self.spec.report_interval_s
        next_t = math.floor(self.now() / interval + 1) * interval
        while True:
            await asyncio.sleep(max(0.0, next_t - self.now()))
            record = {"t": round(next_t, 3), **self.stats.interval()}
            # How late this wake-up came: the generator's own stall (a starved CPU), which
            # inflates the latencies it measures in the same interval.
            record["loop_lag_ms"] = round(max(0.0, self.now() - next_t) * 1000, 1)
            record["lag"] = max(
                0,
                int(self.spec.due(min(next_t, self.spec.duration_s)))
                - self.stats.totals["attempted"],
            )
            self.write(record)
            next_t += interval

    async def _connection(
        self, hold_s: float, interval_s: float, persistent: bool = False, delay: float = 0.0
    ) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._ids += 1
        cid = self._ids
        stats = self.stats
        stats.inc("attempted")
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.spec.target, self.spec.port),
                self.spec.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            stats.inc("failed")
            self.write(
                {
                    "stall": {
                        "t": round(t0 - self.spec.t0, 3),
                        "conn": cid,
                        "kind": "connect_failed",
                        "error": _reason(exc),
                    }
                }
            )
            return
        stats.connect_times.append(time.monotonic() - t0)
        stats.all_connect_times.append(time.monotonic() - t0)
        stats.inc("established")
        stats.active += 1
        end = min(t0 + hold_s, self.stop_at) if hold_s != math.inf else self.stop_at
        try:
            while True:
                sent = time.monotonic()
                await self._request(reader, writer, cid, persistent)
                next_at = sent + interval_s
                if next_at >= end or interval_s <= 0:
                    await asyncio.sleep(max(0.0, end - time.monotonic()))  # open until `end`
                    break
                await asyncio.sleep(next_at - time.monotonic())
            stats.inc("completed")
        except TimeoutError:
            stats.inc("request_timeouts")
            stats.inc("failed")
        except asyncio.IncompleteReadError:
            stats.inc("closed_by_peer")
        except OSError as exc:
            kind = "reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else "failed"
            stats.inc(kind)
            self.write(
                {
                    "stall": {
                        "t": round(time.monotonic() - self.spec.t0, 3),
                        "conn": cid,
                        "kind": kind,
                        "error": _reason(exc),
                        "persistent": persistent,
                    }
                }
            )
        finally:
            stats.active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cid: int, persistent: bool
    ) -> None:
        stats = self.stats
        sent = time.monotonic()
        stats.inc("requests")
        writer.write(REQUEST)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.spec.request_timeout_s)
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await asyncio.wait_for(reader.readexactly(length), self.spec.request_timeout_s)
        latency = time.monotonic() - sent
        stats.inc("responses")
        stats.max_latency = max(stats.max_latency, latency)
        if latency > self.spec.stall_s:
            self.write(
                {
                    "stall": {
                        "t": round(sent - self.spec.t0, 3),
                        "conn": cid,
                        "kind": "slow_response",
                        "latency_s": round(latency, 3),
                        "persistent": persistent,
                    }
                }
            )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def main(argv: list[str]) -> int:
    spec = LoadSpec.load(Path(argv[1]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 200_000)), hard))
    asyncio.run(LoadGenerator(spec).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
