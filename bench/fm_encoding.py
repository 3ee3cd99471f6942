#!/usr/bin/env python3
"""FM's Python work per first packet outside gRPC, in process CPU time: the general encoders
against the ones FM uses.

Per connection FM parses the punted frame, turns SC's two rules into table entries, encodes
them as two P4Runtime Updates of one WriteRequest, and builds the PacketOut. `general` does it
with the general paths (`frame_metadata`, `table_entry`, `codec.update`, protobuf messages);
`fm_protobuf_rules` with FM's (`frame_flow`, `flow_table_entry`, `ExactTableEncoder`, bytes
built by hand) from SC's protobuf rules, `fm` from the packed rules FM asks SC for
(`RuleCodec.from_packed`); tests hold them equal to the general ones. The reply is parsed
before the clock in all three. `sc_reply` times the SC head's side of the same reply: the
`RuleReply` built (`reply_of`) and serialized, with protobuf or packed rules. CPU time, not wall
time: a loaded machine slows all alike. Prints one JSON object (best and median of `--runs`).

A connection's teardown has FM's share too: `teardown` times `SlowPath._expire` on idle
notifications of N cached connections' rules (512 per notification, as a PP's idle scan sends
them), up to the Delete Write and the Release it hands on (neither is sent here): `host` is the
path of a PP node with no DPU in front of it (each rule read from its wire form and cleared in
its packed record), `offload_aware` the path FM takes for a PP node behind a DPU (each rule
decoded, its connection unpacked and checked for an offload).

Run: .venv/bin/python bench/fm_encoding.py [--connections N] [--runs R]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from types import SimpleNamespace

from finsy.proto import p4r

from cyberstar import packets
from cyberstar.fm.cache import CachedRule, Connection, RuleCache, connection_cookie, entry_key
from cyberstar.fm.slowpath import SlowPath
from cyberstar.p4rt import batching
from cyberstar.p4rt.codec import update, write_request_bytes
from cyberstar.p4rt.messages import packet_out_request, write_request
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.frames import frame_flow, frame_metadata
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import sc_pb2
from cyberstar.sc.engine import Outcome
from cyberstar.sc.flows import FlowKey
from cyberstar.sc.rules import flow_table_entry, table_entry
from cyberstar.sc.server import reply_of
from cyberstar.sc.state import FlowRule

FRAME = packets.tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01", "10.1.0.2", "10.2.0.2",
                          40000, 80)  # fmt: skip
META = [(1, b"\x01"), (2, b"\x00\x01")]  # submit_to_ingress, ingress_port
INSERT = p4r.Update.INSERT


OUTCOME = Outcome(
    sc_pb2.OK,
    rules=[
        FlowRule(FlowKey(6, 0x0A010002, 0x0A020002, 40000, 80), "snat", (0xCB007109, 50000, 2)),
        FlowRule(FlowKey(6, 0x0A020002, 0xCB007109, 80, 50000), "dnat", (0x0A010002, 40000, 1)),
    ],
    tenant_id=7,
    timeout_ns=30_000_000_000,
    slot=5,
)
CODEC = RuleCache(PIPELINE).codec


def sc_reply(packed: bool = False) -> sc_pb2.RuleReply:
    reply = reply_of(1, OUTCOME, packed)
    assert bool(reply.packed_rules) == packed
    return reply


def sc_side(packed: bool, n: int, runs: int) -> dict:
    def one(_reply: sc_pb2.RuleReply, i: int) -> None:
        reply_of(i, OUTCOME, packed).SerializeToString()

    return measure(one, sc_pb2.RuleReply(), n, runs)


def general(reply: sc_pb2.RuleReply, i: int) -> None:
    frame_metadata(FRAME, 1)
    rules = []
    for r in reply.rules:
        e = table_entry(r)
        e = TableEntry(e.table, e.match, e.action, e.params, e.priority, e.is_default,
                       e.idle_timeout_ns, connection_cookie(i, 5))  # fmt: skip
        rules.append(CachedRule(entry_key(e), 0, e))
    write_request(1, 1 << 33, [update(INSERT, PIPELINE, r.entry) for r in rules]
                  ).SerializeToString()  # fmt: skip
    packet_out_request(FRAME, META).SerializeToString()


def fm_protobuf_rules(reply: sc_pb2.RuleReply, i: int) -> None:
    frame_flow(FRAME, 1)
    cookie = connection_cookie(i, 5)
    rules = [CachedRule(entry_key(e), 0, e) for e in (flow_table_entry(r, cookie)
                                                      for r in reply.rules)]  # fmt: skip
    write_request_bytes(1, 1 << 33, [CODEC.encoder.update(INSERT, r.entry) for r in rules])
    batching.packet_out_request(batching.packet_out(FRAME, META))


def fm(reply: sc_pb2.RuleReply, i: int) -> None:
    frame_flow(FRAME, 1)
    rules = CODEC.from_packed(i, reply.slot, reply.packed_rules).rules
    write_request_bytes(1, 1 << 33, [CODEC.insert_update(r) for r in rules])
    batching.packet_out_request(batching.packet_out(FRAME, META))


def measure(fn, reply: sc_pb2.RuleReply, n: int, runs: int) -> dict:
    per = []
    for _ in range(runs):
        t0 = time.process_time()
        for i in range(n):
            fn(reply, i)
        per.append((time.process_time() - t0) / n * 1e6)
    return {"best_us": round(min(per), 1), "median_us": round(statistics.median(per), 1)}


class _Router:
    map = None

    async def release(self, keys):
        return SimpleNamespace(failed=[], reply=None)


class _Session:
    index = 0

    async def write(self, updates) -> None:
        pass


def teardown(reply: sc_pb2.RuleReply, n: int, offload_aware: bool) -> float:
    """µs of CPU per connection for FM to take both rules of n connections off a PP node."""
    cache = RuleCache(PIPELINE)
    slow = SlowPath(cache, _Router(), 16, 0.001)
    if offload_aware:
        slow.dpu_of = {0: 1}  # a DPU (PP 1) in front of PP 0
    template = [flow_table_entry(r, connection_cookie(0, 5)) for r in reply.rules]
    idle = []
    for i in range(n):  # distinct flows: the client port varies
        ports = ("src_port", "dst_port")  # the forward rule's client port, the return rule's
        entries = [
            dataclasses.replace(e, match={**e.match, port: 1024 + i})
            for port, e in zip(ports, template, strict=True)
        ]
        conn = Connection(i, 5, [CachedRule(entry_key(e), 1, e) for e in entries])
        cache.put(conn)
        idle += [update(INSERT, PIPELINE, e).entity.table_entry for e in entries]
    loop = asyncio.new_event_loop()
    t0 = time.process_time()
    for k in range(0, len(idle), 512):
        loop.run_until_complete(slow._expire(_Session(), idle[k : k + 512]))
    spent = time.process_time() - t0
    loop.close()
    assert cache.connections == 0, "a connection was not taken off"
    return spent / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=5000, help="per run")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    reply, packed = sc_reply(), sc_reply(packed=True)
    out: dict = {"per_connection_cpu": {}, "sc_reply": {}}
    for _ in range(2):  # interleaved: a change of load hits all alike
        for name, fn, given in (("general", general, reply),
                                ("fm_protobuf_rules", fm_protobuf_rules, reply),
                                ("fm", fm, packed)):  # fmt: skip
            out["per_connection_cpu"].setdefault(name, []).append(
                measure(fn, given, args.connections, args.runs)
            )
        for name, pack in (("protobuf_rules", False), ("packed_rules", True)):
            out["sc_reply"].setdefault(name, []).append(sc_side(pack, args.connections, args.runs))
    best = {k: min(r["best_us"] for r in v) for k, v in out["per_connection_cpu"].items()}
    out["best_us"] = best
    out["fm_over_general"] = round(best["fm"] / best["general"], 2)
    out["sc_reply_best_us"] = {k: min(r["best_us"] for r in v) for k, v in out["sc_reply"].items()}
    out["reply_bytes"] = {"protobuf_rules": reply.ByteSize(), "packed_rules": packed.ByteSize()}
    runs: dict[str, list[float]] = {"host": [], "offload_aware": []}
    for _ in range(args.runs):
        for name in runs:
            runs[name].append(teardown(reply, args.connections, name == "offload_aware"))
    out["teardown_cpu_us"] = {
        name: {"best_us": round(min(v), 1), "median_us": round(statistics.median(v), 1)}
        for name, v in runs.items()
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
