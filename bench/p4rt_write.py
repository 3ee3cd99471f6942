#!/usr/bin/env python3
"""P4Runtime throughput of a PP node: table writes, reads and PacketIn delivery.

Prints one JSON object per target: flow-table entries per second through `Write` for batches
of 1, 100 and 1000 (insert and delete), entries per second read back, and PacketIn messages per
second delivered to a primary while bench/frame_sender.c puts frames that miss the flow table
into the node at 20 000, 50 000, 100 000 frames/s and unpaced: PacketIns that reached the
primary within the sender's window divided by the window (what arrived later, and what never
did, is printed beside it), to a standard controller and to one that asked for PacketInBatch
messages (the stream extension, p4rt/batching.py); the primary only counts, so it is not the
limit. Batches of 1000 are also written with a 14-byte cookie in every entry's metadata
(`batch_1000_fm_cookie`, as FM writes every rule), by two threads with a Write in flight
each (`batch_1000_two_writers`), as a pipelining controller would, and as requests serialized
before the clock starts (`batch_1000_serialized`, as FM sends its Writes: the node's own rate;
every other row includes the Python client building and serializing its protobuf messages).
Targets: the XDP agent (`cyberstar pp serve`), and bmv2 (simple_switch_grpc) when installed.
Goals: 100 000 entries/s with batches of 1000 (never below 50 000) and 50 000 PacketIn/s
delivered on a 2-core machine.

Run as root from the repository: .venv/bin/python bench/p4rt_write.py [--parts packet_in]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time

import grpc
from finsy.proto import p4r, p4r_grpc

from cyberstar import netns, packets
from cyberstar.lab.endpoints import FrameSender
from cyberstar.lab.pp_process import start_agent
from cyberstar.p4rt import batching
from cyberstar.p4rt.codec import update
from cyberstar.p4rt.messages import arbitration_request, write_request
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import p4rt_batch_pb2
from cyberstar.tls import TlsFiles, secure_or_plain_channel

INSERT, DELETE = p4r.Update.INSERT, p4r.Update.DELETE


def flow_updates(kind: int, start: int, count: int, cookie: bool = False) -> list[p4r.Update]:
    """`cookie`: each entry carries 14 bytes of controller metadata, as every rule FM writes."""
    return [
        update(kind, PIPELINE, TableEntry(
            "flow_table",
            {"tenant_id": 7, "src_addr": 0x0B000000 + i, "dst_addr": 0x0A000005, "protocol": 6,
             "src_port": 1024 + i % 60000, "dst_port": 80},
            "snat", {"src_addr": 0xCB007109, "src_port": 1024 + i % 60000, "nexthop_id": 2},
            metadata=i.to_bytes(14, "big") if cookie and kind == INSERT else b"",
        ))
        for i in range(start, start + count)
    ]  # fmt: skip


def write_rate(client, batch: int, total: int, cookie: bool = False) -> dict[str, float]:
    inserts = [flow_updates(INSERT, s, batch, cookie) for s in range(0, total, batch)]
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


def serialized_rate(client, total: int, batch: int = 1000) -> dict[str, float]:
    """Inserts (with FM's cookie) whose WriteRequests were serialized before the clock started,
    sent as bytes, as FM sends its Writes (p4rt/codec.py): the node's rate without the client's
    protobuf work, which the other rows include."""
    send = client.channel.unary_unary(
        "/p4.v1.P4Runtime/Write", response_deserializer=p4r.WriteResponse.FromString
    )
    inserts = [write_request(client.device_id, client.election_id,
                             flow_updates(INSERT, s, batch, cookie=True)).SerializeToString()
               for s in range(0, total, batch)]  # fmt: skip
    t0 = time.perf_counter()
    for req in inserts:
        send(req, timeout=client.timeout)
    elapsed = time.perf_counter() - t0
    for s in range(0, total, batch):
        client.write(flow_updates(DELETE, s, batch))
    return {"insert_per_s": round(total / elapsed)}


def miss_frames() -> list[bytes]:
    """Frames of distinct flows that miss the flow table."""
    return [packets.tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01", "192.168.1.2",
                              "10.0.0.5", 1024 + i, 80) for i in range(4096)]  # fmt: skip


_counter_ids = iter(range(1 << 40, 1 << 41))  # above any client's: each counter is primary
OFFERED = (20_000, 50_000, 100_000, 0)  # frames per second into the node; 0 = unpaced


class PacketInCounter:
    """A primary's stream that only counts PacketIns (stamping each message's arrival), so
    the client is not what limits delivery. With `batch`, it asks for PacketInBatch messages
    (cyberstar's stream extension); without, it is a standard controller."""

    def __init__(self, address: str, device_id: int, election_id: int, batch: int,
                 tls: TlsFiles | None) -> None:  # fmt: skip
        self.channel = secure_or_plain_channel(address, tls, [], "P4Runtime server")
        stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.requests: queue.Queue = queue.Queue()
        self.arrivals: list[tuple[float, int]] = []  # (time.monotonic(), PacketIns in it)
        self.call = stub.StreamChannel(iter(self.requests.get, None))
        self.requests.put(arbitration_request(device_id, election_id))
        self.granted = 0
        if batch:
            self.granted = batching.server_max_packets(
                stub.Capabilities(p4r.CapabilitiesRequest(), timeout=10)
            )
            if self.granted:
                self.requests.put(batching.opt_in_request(min(batch, self.granted)))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        arrivals = self.arrivals
        try:
            for msg in self.call:
                kind = msg.WhichOneof("update")
                if kind == "packet":
                    arrivals.append((time.monotonic(), 1))
                elif kind == "other" and msg.other.type_url == batching.PACKET_IN_BATCH:
                    n = len(p4rt_batch_pb2.PacketInBatch.FromString(msg.other.value).packets)
                    arrivals.append((time.monotonic(), n))
        except grpc.RpcError:
            pass

    def count(self, t0: float = 0.0, t1: float = float("inf")) -> int:
        return sum(n for t, n in list(self.arrivals) if t0 <= t < t1)

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def classify_punts(client) -> None:
    """Frames to 10.0.0.0/8 on port 1 belong to tenant 7 and miss its (empty) flow table."""
    client.write([update(INSERT, PIPELINE, build_entry(
        PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"},
        "set_tenant", {"tenant_id": 7}))])  # fmt: skip


def packet_in_rate(client, ns: str, seconds: float, ifname: str = "peer1",
                   batch: int = 0, senders: int = 1,
                   tls: TlsFiles | None = None) -> dict:  # fmt: skip
    """PacketIns delivered per second to a primary, at each offered load: those that reached
    the client within the sender's window of `seconds`, divided by `seconds`; and what came
    after the window (a backlog) and never (lost), once the node drained."""
    counter = PacketInCounter(client.address, client.device_id, next(_counter_ids), batch, tls)
    try:
        time.sleep(0.5)  # arbitration and the opt-in are handled before any punt
        runs = {str(rate or "unpaced"): _packet_ins_at(counter, ns, seconds, ifname, rate,
                                                       senders)
                for rate in OFFERED}  # fmt: skip
    finally:
        counter.close()
    return {"stream_batching": counter.granted, "by_offered_frames_per_s": runs}


def _packet_ins_at(counter: PacketInCounter, ns: str, seconds: float, ifname: str,
                   rate: float, senders: int) -> dict:  # fmt: skip
    """`senders` processes share the offered rate (each frame's XDP run and punt happen in its
    sender's system call: one sender on one core may be the ceiling)."""
    before = counter.count()
    frames = miss_frames()
    procs = [FrameSender(ns, ifname, frames[i::senders], seconds, rate / senders)
             for i in range(senders)]  # fmt: skip
    while procs[0].proc.poll() is None and not counter.count() - before:
        time.sleep(0.001)  # the first frame's punt marks the window's start
    t0 = time.monotonic()
    sent = sum(p.result()["frames_sent"] for p in procs)
    t1 = t0 + seconds
    last = -1
    while (now := counter.count()) != last:  # drained: nothing came in the last half second
        last = now
        time.sleep(0.5)
    in_window = counter.count(t0, t1)
    total = counter.count() - before
    return {
        "frames_sent": sent,
        "offered_per_s": round(sent / seconds),
        "packet_in_per_s": round(in_window / seconds),
        "delivered_in_window": in_window,
        "delivered_after_window": total - in_window,
        "lost": sent - total,
    }


def writes(client, args) -> dict:
    out = {}
    for batch in (1, 100, 1000):
        total = min(args.entries, 2000) if batch == 1 else args.entries
        out[f"batch_{batch}"] = write_rate(client, batch, total)
    out["batch_1000_fm_cookie"] = write_rate(client, 1000, args.entries, cookie=True)
    out["batch_1000_two_writers"] = two_writer_rate(client, args.entries)
    out["batch_1000_serialized"] = serialized_rate(client, args.entries)
    return out


def bench_xdp(args) -> dict:
    with netns.with_pp_ports(f"cs-bench-p4rt-{os.getpid()}") as ns:
        node = start_agent(ns, ["pp1", "pp2"], mode="native")
        try:
            client = node.primary_with_pipeline()
            out: dict = {"target": "xdp"}
            if "writes" in args.parts:
                out.update(writes(client, args))
            if "packet_in" in args.parts:
                classify_punts(client)
                out["packet_in_standard"] = packet_in_rate(client, ns, args.seconds,
                                                           senders=args.senders,
                                                           tls=node.tls)  # fmt: skip
                out["packet_in_batched"] = packet_in_rate(client, ns, args.seconds, batch=256,
                                                          senders=args.senders,
                                                          tls=node.tls)  # fmt: skip
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
        if "writes" in args.parts:
            out.update(writes(client, args))
        if "packet_in" in args.parts:
            classify_punts(client)
            out["packet_in_standard"] = packet_in_rate(client, target.ns, args.seconds, "host1",
                                                       senders=args.senders)  # fmt: skip
        return out
    finally:
        target.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per PacketIn run")
    ap.add_argument("--senders", type=int, default=1,
                    help="frame-sender processes sharing the offered load (default 1)")  # fmt: skip
    ap.add_argument(
        "--parts",
        default="writes,packet_in",
        type=lambda v: v.split(","),
        help="writes (entries/s) and/or packet_in (PacketIn/s), comma-separated",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    results = [bench_xdp(args), bench_bmv2(args)]
    xdp, bmv2 = results
    if "batch_1000" in bmv2 and "batch_1000" in xdp:
        ratio = xdp["batch_1000"]["insert_per_s"] / bmv2["batch_1000"]["insert_per_s"]
        results.append({"xdp_over_bmv2": {"insert_batch_1000": round(ratio, 2)}})
    print(json.dumps({"goals": {"entries_per_s_batch_1000": 100_000, "floor": 50_000,
                                "packet_in_per_s": 50_000},
                      "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
