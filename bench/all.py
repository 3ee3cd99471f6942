#!/usr/bin/env python3
"""Every benchmark in bench/, one after the other: one JSON object, {script: its JSON}.

Each script runs as its own process with its defaults (the figures docs/performance.md
publishes); `--quick` passes each the options of a short run (seconds, not minutes) instead.
A script that fails is reported with its exit code and the end of its stderr, and the others
still run; the exit code is then 1. Also recorded: the load average before and after each
script (a figure measured while other work shared the machine is not publishable).

Run as root from the repository: .venv/bin/python bench/all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Options of a short run, per script; scripts not listed run with no option.
QUICK = {
    "cold_write": ["--calls", "50"],
    "xdp_fastpath": ["--runs", "3", "--repeat", "50000", "--flows", "100000"],
    "p4rt_write": ["--entries", "20000", "--seconds", "2"],
    "slowpath": ["--seconds", "2"],
    "fm_cache": ["--rules", "200000", "--lookups", "50000"],
    "fm_encoding": ["--connections", "1000", "--runs", "3"],
    "packet_out": ["--packets", "2000", "--runs", "1"],
    "grpc_floor": ["--calls", "500", "--rounds", "1"],
    "sc_scale": ["--mappings", "20000", "--seconds", "1", "--window", "1"],
    "placement": ["--seeds", "0", "--ilp-time-limit", "10", "--no-dynamic"],
    "placement_headroom": ["--families", "nat50", "--seeds", "700"],
    "scale": ["--sizes", "10000,100000", "--fm-at", "100000", "--probe-idle-s", "2"],
}


def scripts() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if p.name != Path(__file__).name)


def run(script: Path, quick: bool) -> dict:
    name = script.stem
    cmd = [sys.executable, str(script), *(QUICK.get(name, []) if quick else [])]
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH.parent)
    out: dict = {
        "command": " ".join([".venv/bin/python", f"bench/{script.name}", *cmd[2:]]),
        "seconds": round(time.monotonic() - t0, 1),
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if proc.returncode != 0:
        out.update(exit_code=proc.returncode, stderr_tail=proc.stderr[-2000:])
        return out
    try:
        out["result"] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out.update(exit_code=proc.returncode, error="no JSON on stdout",
                   stdout_tail=proc.stdout[-2000:])  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only these scripts")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (the benchmarks load XDP programs and create namespaces)",
              file=sys.stderr)  # fmt: skip
        return 2
    chosen = [s for s in scripts() if not args.only or s.stem in args.only]
    results = {}
    for script in chosen:
        print(f"bench/all: {script.name} …", file=sys.stderr, flush=True)
        results[script.stem] = run(script, args.quick)
    print(json.dumps(results, indent=1))
    return 1 if any("exit_code" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
