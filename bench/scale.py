#!/usr/bin/env python3
"""One XDP PP node at the paper's table sizes (issue 15): fill its flow table through P4Runtime
with FM-shaped rules in batches of 1000 and print, at each size, JSON with

* the insert rate of the last `--window` rules before that size (flat with table size?),
* the agent's memory beyond the kernel maps per entry (its RSS growth over the entries) and the
  kernel's memory for the map (bpftool's memlock),
* the time to read the whole flow table (per-response deadlines, streamed in chunks of 1000),
* the agent's CPU while idle: the idle-timeout scan walking every entry (a quarter of the
  shortest timeout per pass, capped at half a core), and how late a notification came for
  probe entries with a short timeout (deleted again once notified),
* FM takeover: a new FM leads (becomes primary, rebuilds its cache from the node's flow table
  as it streams in), its time from start to leading, and its memory per cached rule (RSS growth
  over an FM that took over an empty node, keys included).

Every figure is measured from the event that starts the work to the one that ends it; requests
are built before the clock starts and sent as bytes. The machine's load average at start and
end is printed: figures taken while others load the machine are not comparable.

Run as root from the repository (needs etcd):
    nice -n 19 .venv/bin/python bench/scale.py --sizes 10000,100000,1000000,10000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from finsy.proto import p4r

from cyberstar.lab.cpu import live_process_cpu_s
from cyberstar.lab.scale import (
    cookie_of,
    etcd,
    fm_takeover,
    map_memory,
    rss_bytes,
    scale_node,
    write_requests,
)

LONG_IDLE_NS = 3600 * 10**9  # the bulk of the rules: none expires during the run


def idle_figures(sn, quiet_s: float, probe_timeout_s: float) -> dict:
    """The agent's CPU over a quiet period (the idle scan walks the table), then how late the
    notification for probe rules with a short idle timeout came."""
    pid = sn.pid
    cpu0, t0 = live_process_cpu_s(pid), time.perf_counter()
    time.sleep(quiet_s)
    quiet_cpu = (live_process_cpu_s(pid) - cpu0) / (time.perf_counter() - t0)
    # two probe rules (one connection), idle from the moment they are written
    probe = sn.written
    send = sn.client.channel.unary_unary("/p4.v1.P4Runtime/Write")
    (request,) = write_requests(probe, 2, sn.client.election_id, int(probe_timeout_s * 1e9))
    cookie = cookie_of(probe // 2)
    while not sn.client.idle_notifications.empty():
        sn.client.idle_notifications.get_nowait()
    cpu0 = live_process_cpu_s(pid)
    written_at = time.perf_counter()
    send(request, timeout=60)
    sn.written += 2
    deadline = written_at + probe_timeout_s + 600
    late = None
    while time.perf_counter() < deadline:
        try:
            note = sn.client.idle_notifications.get(timeout=1)
        except Exception:
            continue
        if any(te.metadata == cookie for te in note.table_entry):
            late = time.perf_counter() - written_at - probe_timeout_s
            break
    busy_cpu = (live_process_cpu_s(pid) - cpu0) / (time.perf_counter() - written_at)
    # The probe has done its job: gone, the table holds the bulk rules only (an FM taking over
    # would release the idle connection and delete its rules itself).
    (delete,) = write_requests(probe, 2, sn.client.election_id, int(probe_timeout_s * 1e9),
                               p4r.Update.DELETE)  # fmt: skip
    send(delete, timeout=60)
    return {
        "quiet_cpu_cores": round(quiet_cpu, 3),
        "probe_idle_timeout_s": probe_timeout_s,
        "probe_notified_late_s": None if late is None else round(late, 2),
        "cpu_cores_while_waiting_for_probe": round(busy_cpu, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000",
                    help="table sizes to report at (comma-separated, increasing)")  # fmt: skip
    ap.add_argument("--window", type=int, default=100_000,
                    help="rules timed for the insert rate at each size")  # fmt: skip
    ap.add_argument("--fm-at", default="1000000,10000000",
                    help="sizes at which an FM takes over (comma-separated)")  # fmt: skip
    ap.add_argument("--quiet-s", type=float, default=10.0)
    ap.add_argument("--probe-idle-s", type=float, default=30.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    fm_at = {int(s) for s in args.fm_at.split(",") if s}
    out: dict = {"load_average_start": os.getloadavg(), "batch": 1000, "sizes": []}
    with etcd() as store, scale_node(int(max(sizes) * 1.05) + 16) as sn:
        agent_rss0 = rss_bytes(sn.pid)
        empty = fm_takeover(sn.node, store, "fm0")
        sn.retake()
        out["fm_empty_rss_bytes"] = empty.rss_bytes
        probes = 0
        for size in sizes:
            window = min(args.window, size - sn.written)
            sn.fill(size - window, LONG_IDLE_NS)
            n, seconds = sn.fill(size, LONG_IDLE_NS)
            row: dict = {
                "size": size,
                "insert_per_s": round(n / seconds),
                "insert_window": n,
                "agent_rss_bytes": rss_bytes(sn.pid),
                "agent_bytes_per_entry": round((rss_bytes(sn.pid) - agent_rss0) / size, 1),
                "kernel_flow_table_bytes": map_memory("flow_table"),
            }
            read, read_s = sn.read_all()
            assert read == sn.written - probes, (read, sn.written - probes)
            row.update({"full_read_s": round(read_s, 2), "read_entries": read,
                        "read_per_s": round(read / read_s)})  # fmt: skip
            row.update(idle_figures(sn, args.quiet_s, args.probe_idle_s))
            probes += 2  # written and deleted
            if size in fm_at:
                t = fm_takeover(sn.node, store, f"fm{size}")
                sn.retake()
                row["fm_takeover"] = {
                    "seconds": round(t.seconds, 2),
                    "cache_rebuild_s": t.rebuild_seconds,
                    "connections": t.connections,
                    "rules": t.rules,
                    "rss_bytes": t.rss_bytes,
                    "bytes_per_rule": round((t.rss_bytes - empty.rss_bytes) / max(t.rules, 1), 1),
                }
            out["sizes"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
