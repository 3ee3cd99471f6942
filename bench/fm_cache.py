#!/usr/bin/env python3
"""FM rule cache: memory per cached rule at 1 000 000 rules, and lookups per second.

Prints one JSON object. Connections are SNAT flows (a forward and a return rule each), packed as
FM packs them. Memory is measured with tracemalloc from before the connections are built: the
cache holds their keys, so the keys count (FM builds them from PacketIns and SC's replies; only
the TableEntry objects, which FM drops once a connection is cached, are freed before the
measurement ends). Goal: at most 200 bytes per cached rule.

Run: .venv/bin/python bench/fm_cache.py [--rules N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc

from cyberstar.fm.cache import KEY, CachedRule, Connection, RuleCache, connection_cookie
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE


def connection(i: int) -> Connection:
    client, public = 0x0A000000 + (i >> 12), 0xCB007100 + i // 60000
    cport, pport, server = 1024 + (i & 0xFFF), 1024 + (i % 60000), 0x0A020002
    fwd = TableEntry(
        "flow_table",
        {"tenant_id": 7, "src_addr": client, "dst_addr": server, "protocol": 6,
         "src_port": cport, "dst_port": 8080},
        "snat", {"src_addr": public, "src_port": pport, "nexthop_id": 2},
        idle_timeout_ns=30_000_000_000, metadata=connection_cookie(i, i % 1024),
    )  # fmt: skip
    ret = TableEntry(
        "flow_table",
        {"tenant_id": 7, "src_addr": server, "dst_addr": public, "protocol": 6,
         "src_port": 8080, "dst_port": pport},
        "dnat", {"dst_addr": client, "dst_port": cport, "nexthop_id": 1},
        idle_timeout_ns=30_000_000_000, metadata=connection_cookie(i, i % 1024),
    )  # fmt: skip
    keys = [
        KEY.pack(7, client, server, 6, cport, 8080),
        KEY.pack(7, server, public, 6, 8080, pport),
    ]
    return Connection(i, i % 1024, [CachedRule(keys[0], 1, fwd), CachedRule(keys[1], 1, ret)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    args = ap.parse_args()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cache = RuleCache(PIPELINE)
    fill_s = 0.0
    sample: list[bytes] = []
    for i in range(args.rules // 2):
        conn = connection(i)  # what FM holds when it caches a connection
        t0 = time.perf_counter()
        cache.put(conn)
        fill_s += time.perf_counter() - t0
        if i % 97 == 0:
            sample.append(conn.rules[i % 2].key)
    del conn
    used = tracemalloc.get_traced_memory()[0] - base - sys.getsizeof(sample)
    tracemalloc.stop()
    keys = [random.choice(sample) for _ in range(args.lookups)]
    t0 = time.perf_counter()
    for k in keys:
        cache.get(k)
    lookup_s = time.perf_counter() - t0
    print(json.dumps({
        "cached_rules": len(cache),
        "connections": cache.connections,
        "bytes_per_rule": round(used / len(cache), 1),
        "goal_bytes_per_rule": 200,
        "lookups_per_s": round(args.lookups / lookup_s),
        "inserts_per_s": round(len(cache) / fill_s),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
