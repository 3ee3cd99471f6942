#!/usr/bin/env python3
"""What a pause costs the next piece of work on this machine: the same small P4Runtime Write
(two flow entries with FM's cookie, `XdpDevice.write` on a real program's kernel map, read
whole from the request's bytes as the agent reads FM's) timed back to back, and again after
the thread slept or spun for a while.

At low load every hop of the slow path runs after such a pause (a first packet every few
milliseconds), so its latency is this "cold" cost, not the back-to-back one the profiles and
the CPU-per-connection figures see. Prints JSON: the median and P90 in µs for each pause.
Run as root from the repository: `.venv/bin/python bench/cold_write.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from finsy.proto import p4r

from cyberstar.pp.device import XdpDevice
from cyberstar.xdp.program import XdpProgram

sys.path.insert(0, str(Path(__file__).resolve().parent))
from p4rt_write import INSERT, flow_updates

ENTRIES = 2  # a connection's forward and return rules: FM's Write for one first packet


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed_writes(device: XdpDevice, first: int, calls: int, pause) -> dict[str, float]:
    """µs per Write of `ENTRIES` new entries, each after `pause()`."""
    requests = []
    for i in range(calls):
        w = p4r.WriteRequest(device_id=1, election_id=p4r.Uint128(low=1))
        w.updates.extend(flow_updates(INSERT, first + i * ENTRIES, ENTRIES, cookie=True))
        requests.append((w.updates, w.SerializeToString()))
    times = []
    for updates, raw in requests:
        pause()
        t0 = time.perf_counter()
        results = device.write(updates, raw)
        times.append(time.perf_counter() - t0)
        if any(results):
            raise SystemExit(f"a write failed: {results}")
    times.sort()
    return {"p50_us": round(times[len(times) // 2] * 1e6, 1),
            "p90_us": round(times[int(len(times) * 0.9)] * 1e6, 1)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300, help="Writes per pause")
    args = ap.parse_args()
    device = XdpDevice(XdpProgram(), [])
    pauses = {
        "back_to_back": lambda: None,
        "after_0.5ms_sleep": lambda: time.sleep(0.0005),
        "after_10ms_sleep": lambda: time.sleep(0.01),
        "after_10ms_spin": lambda: _spin(0.01),
    }
    out: dict = {"load_average_start": os.getloadavg(), "entries_per_write": ENTRIES}
    first = 0
    timed_writes(device, 10_000_000, 200, pauses["back_to_back"])  # warm the code
    for name, pause in pauses.items():
        out[name] = timed_writes(device, first, args.calls, pause)
        first += args.calls * ENTRIES
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
