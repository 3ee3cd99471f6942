#!/usr/bin/env python3
"""P4Runtime throughput of a PP node: table writes, reads and PacketIn delivery.

Prints one JSON object per target: flow-table entries per second through `Write` for batches
of 1, 100 and 1000 (insert and delete), entries per second read back, and PacketIn messages per
second delivered to a client while frames that miss the flow table are sent into the node at
several offered loads. Batches of 1000 are also written by two threads with a Write in flight
each (`batch_1000_two_writers`), as a pipelining controller would.
Targets: the XDP agent (`cyberstar pp serve`), and bmv2 (simple_switch_grpc) when installed,
with the ratio between them. Goals: 100 000 entries/s with batches of 1000 (never below
50 000) and 20 000 PacketIn/s on a 2-core machine.

Run as root from the repository: .venv/bin/python bench/p4rt_write.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import socket
import sys
import threading
import time

from finsy.proto import p4r

from cyberstar import netns, packets
from cyberstar.lab.pp_process import start_agent
from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE

INSERT, DELETE = p4r.Update.INSERT, p4r.Update.DELETE


def flow_updates(kind: int, start: int, count: int) -> list[p4r.Update]:
    return [
        update(kind, PIPELINE, TableEntry(
            "flow_table",
            {"tenant_id": 7, "src_addr": 0x0B000000 + i, "dst_addr": 0x0A000005, "protocol": 6,
             "src_port": 1024 + i % 60000, "dst_port": 80},
            "snat", {"src_addr": 0xCB007109, "src_port": 1024 + i % 60000, "nexthop_id": 2},
        ))
        for i in range(start, start + count)
    ]  # fmt: skip


def write_rate(client, batch: int, total: int) -> dict[str, float]:
    inserts = [flow_updates(INSERT, s, batch) for s in range(0, total, batch)]
    deletes = [flow_updates(DELETE, s, batch) for s in range(0, total, batch)]
    t0 = time.perf_counter()
    for b in inserts:
        client.write(b)
    t1 = time.perf_counter()
    read_t0 = time.perf_counter()
    read = client.read(
        [p4r.Entity(table_entry=p4r.TableEntry(table_id=PIPELINE.table("flow_table").id))]
    )
    read_t1 = time.perf_counter()
    t2 = time.perf_counter()
    for b in deletes:
        client.write(b)
    t3 = time.perf_counter()
    assert len(read) == total, (len(read), total)
    return {
        "insert_per_s": round(total / (t1 - t0)),
        "delete_per_s": round(total / (t3 - t2)),
        "read_per_s": round(total / (read_t1 - read_t0)),
    }


def two_writer_rate(client, total: int, batch: int = 1000) -> dict[str, float]:
    """Inserts from two threads sharing one client, each with a Write in flight, as a controller
    with pipelined writes issues them: the node is not idle while the next request is built."""
    inserts = [flow_updates(INSERT, s, batch) for s in range(0, total, batch)]
    halves = [inserts[0::2], inserts[1::2]]

    def writer(batches: list) -> None:
        for b in batches:
            client.write(b)

    threads = [threading.Thread(target=writer, args=(h,)) for h in halves]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for s in range(0, total, batch):
        client.write(flow_updates(DELETE, s, batch))
    return {"insert_per_s": round(total / elapsed)}


def blast(ns: str, ifname: str, seconds: float, count_out, rate: float = 0) -> None:
    """Send frames that miss the flow table (distinct flows) into `ifname` for `seconds`, at
    `rate` frames per second (in bursts of 256), or as fast as possible when `rate` is 0."""
    with netns.entered(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((ifname, 0))
    frames = [
        packets.tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01", "192.168.1.2", "10.0.0.5",
                          1024 + i, 80)
        for i in range(4096)
    ]  # fmt: skip
    start = time.monotonic()
    sent, end = 0, start + seconds
    while time.monotonic() < end:
        if rate:
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        for f in frames[:256]:
            try:
                s.send(f)
                sent += 1
            except OSError:
                pass
        frames.append(frames.pop(0))
    count_out.value = sent


OFFERED = (10_000, 20_000, 30_000, 0)  # frames per second into the node; 0 = unpaced


def packet_in_rate(
    node, client, ns: str, seconds: float, ifname: str = "peer1"
) -> dict[str, float]:
    """PacketIns delivered per second at each offered load. An unpaced sender spends a core of
    its own (2 here) and measures contention with the generator as much as delivery; paced
    loads show what the node delivers when the generator leaves it room."""
    client.write([update(INSERT, PIPELINE, build_entry(
        PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"},
        "set_tenant", {"tenant_id": 7}))])  # fmt: skip
    runs = {str(rate or "unpaced"): _packet_ins_at(client, ns, seconds, ifname, rate)
            for rate in OFFERED}  # fmt: skip
    return {
        "packet_in_per_s": max(r["packet_in_per_s"] for r in runs.values()),
        "packet_in_by_offered_load": runs,
    }


def _packet_ins_at(client, ns: str, seconds: float, ifname: str, rate: float) -> dict:
    while True:  # what an earlier run left queued must not count in this one
        try:
            client.packet_ins.get(timeout=0.3)
        except queue.Empty:
            break
    sent = multiprocessing.Value("q", 0)
    sender = multiprocessing.Process(target=blast, args=(ns, ifname, seconds, sent, rate))
    received, t0 = 0, time.monotonic()
    sender.start()
    while time.monotonic() - t0 < seconds + 1:
        try:
            client.packet_ins.get(timeout=0.5)
            received += 1
        except queue.Empty:
            if not sender.is_alive():
                break
    sender.join()
    elapsed = time.monotonic() - t0
    return {
        "packet_in_per_s": round(received / min(elapsed, seconds)),
        "frames_sent": sent.value,
        "packet_ins_received": received,
    }


def bench_xdp(args) -> dict:
    with netns.with_pp_ports(f"cs-bench-p4rt-{os.getpid()}") as ns:
        node = start_agent(ns, ["pp1", "pp2"], mode="native")
        try:
            client = node.primary_with_pipeline()
            out: dict = {"target": "xdp"}
            for batch in (1, 100, 1000):
                total = min(args.entries, 2000) if batch == 1 else args.entries
                out[f"batch_{batch}"] = write_rate(client, batch, total)
            out["batch_1000_two_writers"] = two_writer_rate(client, args.entries)
            out.update(packet_in_rate(node, client, ns, args.seconds))
            return out
        finally:
            node.stop()


def bench_bmv2(args) -> dict | None:
    from cyberstar.errors import TargetUnavailable
    from cyberstar.targets.bmv2 import Bmv2Target

    try:
        target = Bmv2Target()
    except TargetUnavailable as exc:
        return {"target": "bmv2", "skipped": str(exc)}
    try:
        client = target.client
        out: dict = {"target": "bmv2"}
        for batch in (1, 100, 1000):
            total = min(args.entries, 2000) if batch == 1 else args.entries
            out[f"batch_{batch}"] = write_rate(client, batch, total)
        out["batch_1000_two_writers"] = two_writer_rate(client, args.entries)
        out.update(packet_in_rate(None, client, target.ns, args.seconds, ifname="host1"))
        return out
    finally:
        target.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    results = [bench_xdp(args), bench_bmv2(args)]
    xdp, bmv2 = results
    if "batch_1000" in bmv2:
        results.append({
            "xdp_over_bmv2": {
                "insert_batch_1000": round(xdp["batch_1000"]["insert_per_s"]
                                           / bmv2["batch_1000"]["insert_per_s"], 2),
                "packet_in": round(xdp["packet_in_per_s"] / max(bmv2["packet_in_per_s"], 1), 2),
            }
        })  # fmt: skip
    print(json.dumps({"goals": {"entries_per_s_batch_1000": 100_000, "floor": 50_000,
                                "packet_in_per_s": 20_000},
                      "results": results}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
