"""What the lab reads while a scenario runs: every daemon's Prometheus `/metrics` and the
routers' interface counters, sampled into one time series.

Samples are `(t, source, metric, labels, value)`: `source` is the host (`pp1`, `fm1`,
`scg1a`, `vsw`), `t` seconds since the scenario's start. The plots and the autoscaler read the
same samples.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

Labels = tuple[tuple[str, str], ...]


def parse_prometheus(text: str) -> list[tuple[str, Labels, float]]:
    """The samples of a Prometheus text exposition (0.0.4): name, sorted labels, value."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, rest = head.partition("{")
        labels: list[tuple[str, str]] = []
        if brace:
            for part in _split_labels(rest.rstrip("}")):
                key, _, val = part.partition("=")
                labels.append((key.strip(), val.strip().strip('"')))
        with contextlib.suppress(ValueError):
            out.append((name.strip(), tuple(sorted(labels)), float(value)))
    return out


def _split_labels(text: str) -> Iterable[str]:
    part, quoted = "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            yield part
            part = ""
        else:
            part += ch
    if part.strip():
        yield part


def interface_counters(pid: int) -> dict[str, tuple[int, int]]:
    """Per interface (rx packets, tx packets) in the network namespace of process `pid`."""
    out = {}
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, data = line.partition(":")
            fields = data.split()
            out[name.strip()] = (int(fields[1]), int(fields[9]))
    return out


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / hz, sum(fields[:8]) / hz


class Series:
    """Samples in memory (and appended to a JSON-lines file), with rate helpers."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._file = path.open("w") if path else None
        self._lock = threading.Lock()
        # (source, metric, labels) → [(t, value)]
        self.points: dict[tuple[str, str, Labels], list[tuple[float, float]]] = defaultdict(list)

    def add(self, t: float, source: str, metric: str, labels: Labels, value: float) -> None:
        with self._lock:
            self.points[(source, metric, labels)].append((t, value))
            if self._file:
                self._file.write(
                    json.dumps([round(t, 3), source, metric, dict(labels), value]) + "\n"
                )

    def select(
        self, metric: str, source: str | None = None, **labels: str
    ) -> dict[tuple[str, Labels], list[tuple[float, float]]]:
        """Every series of `metric` (from `source`) whose labels include `labels`."""
        want = set(labels.items())
        with self._lock:
            return {
                (src, lab): list(pts)
                for (src, m, lab), pts in self.points.items()
                if m == metric and (source is None or src == source) and want <= set(lab)
            }

    def rate(self, metric: str, source: str, window_s: float, now: float, **labels: str) -> float:
        """Per-second increase of a counter (summed over matching series) in the last
        `window_s` seconds; 0 without two samples in the window."""
        total = 0.0
        for pts in self.select(metric, source, **labels).values():
            recent = [p for p in pts if now - window_s <= p[0] <= now]
            if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
                total += max(0.0, recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        return total

    def close(self) -> None:
        if self._file:
            self._file.close()


class Scraper:
    """A thread that samples `targets()` every `interval_s`: each target is (source, fetch)
    where fetch returns Prometheus text; plus the routers' interface counters."""

    def __init__(
        self,
        series: Series,
        targets: Callable[[], list[tuple[str, Callable[[], str]]]],
        routers: dict[str, int],
        clock: Callable[[], float],
        interval_s: float,
        enter: Callable,
    ) -> None:
        self.series = series
        self.targets = targets
        self.routers = routers
        self.clock = clock
        self.interval_s = interval_s
        self.enter = enter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scraper")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with self.enter():  # the management network
            while not self._stop.is_set():
                started = time.monotonic()
                self.sample()
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def sample(self) -> None:
        for source, fetch in self.targets():
            t = self.clock()
            try:
                text = fetch()
            except Exception:
                self.series.add(t, source, "up", (), 0.0)
                continue
            self.series.add(t, source, "up", (), 1.0)
            for metric, labels, value in parse_prometheus(text):
                self.series.add(t, source, metric, labels, value)
        t = self.clock()
        busy, total = host_cpu()
        self.series.add(t, "host", "cpu_busy_seconds", (), busy)
        self.series.add(t, "host", "cpu_seconds", (), total)
        self.series.add(t, "host", "load1", (), os.getloadavg()[0])
        for router, pid in self.routers.items():
            t = self.clock()
            with contextlib.suppress(OSError):
                for intf, (rx, tx) in interface_counters(pid).items():
                    if intf == "lo":
                        continue
                    self.series.add(t, router, "intf_rx_packets", (("intf", intf),), rx)
                    self.series.add(t, router, "intf_tx_packets", (("intf", intf),), tx)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
