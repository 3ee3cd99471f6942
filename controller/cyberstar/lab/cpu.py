"""CPU time of processes and of the whole machine, from /proc, for benchmarks.

`CpuMeter` samples each named group of processes (utime + stime of every thread, dead threads
included, as /proc/PID/stat reports them) and the machine's busy time (/proc/stat, softirq
included) at `start()` and `stop()`; `per_unit()` divides what each used by a count of work
done (connections, packets).
"""

from __future__ import annotations

import os
import time

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def live_process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); OSError if it is gone."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14, 15)


def process_cpu_s(pid: int) -> float:
    """`live_process_cpu_s`, 0 once the process is gone."""
    try:
        return live_process_cpu_s(pid)
    except OSError:
        return 0.0


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot: busy is everything but
    idle and iowait (softirq, where the kernel forwards and NATs, included)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) * TICK_S, total * TICK_S


class CpuMeter:
    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall_s = 0.0

    def _sample(self) -> dict[str, float]:
        out = {name: sum(process_cpu_s(p) for p in pids) for name, pids in self.groups.items()}
        out["machine"] = machine_busy_s()[0]
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._sample()

    def stop(self) -> None:
        end = self._sample()
        self.wall_s = time.monotonic() - self._t0
        self.used = {k: end[k] - self._start[k] for k in end}

    def per_unit(self, units: int, scale: float = 1e6) -> dict[str, float]:
        """CPU per unit of work, in µs by default, for each group and the machine."""
        return {k: round(v * scale / max(units, 1), 1) for k, v in self.used.items()}

    def utilisation(self) -> dict[str, float]:
        """Cores each group kept busy on average."""
        return {k: round(v / max(self.wall_s, 1e-9), 2) for k, v in self.used.items()}
