#!/usr/bin/env python3
"""The flow table's slots under churn (xdp/slots.py): what deleted slots cost searches when
they wait for grace periods, and what a grace period takes on this machine.

A table half full, then `--churn` times its size in deletes and inserts (each delete a random
entry, each insert a new key), in a real BPF array mapped into this process. A deleted slot is
written again only after a grace period; how many deletes one grace period takes depends on the
delete rate (at 100 000 deletes/s a ~13 ms grace period takes ~1 300). Each `--every` run
releases the deleted slots every N deletes (the layout's view of a grace period every N
deletes, without waiting for it); the `background` run lets the table's own thread do it while
the loop deletes and inserts as fast as it can (a grace period takes far more deletes than any
node makes). Printed per run: the share of slots left deleted, and the slots a search reads on
average for a key present (a hit) and absent (a miss: a flow's first packet), after a last
grace period. Also: `synchronize()` (membarrier, which is synchronize_rcu) latency.

Run as root from the repository: .venv/bin/python bench/slot_churn.py [--capacity 4096]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np

from cyberstar.codegen.xdp_layout import SLOT_TOMB
from cyberstar.xdp import _slots
from cyberstar.xdp.slots import NOEXIST, PROBES, SlotTable, home

KEY, VALUE = 16, 16


def table_of(capacity: int, background: bool) -> SlotTable:
    from bcc import BPF

    entries = 2 * capacity + PROBES - 1
    bpf = BPF(text=(
        f"struct slot {{ __u8 b[{KEY + VALUE}]; }};\n"
        f'BPF_F_TABLE("array", u32, struct slot, t, {entries}, BPF_F_MMAPABLE);'
    ).encode())  # fmt: skip
    table = SlotTable(bpf[b"t"].map_fd, entries, KEY, VALUE, 0, 7, background)
    table.bpf = bpf  # keeps the map open
    return table


def key_of(n: int) -> bytes:
    return n.to_bytes(8, "little") + bytes(8)


def churn(capacity: int, rounds: int, every: int | None) -> dict:
    table = table_of(capacity, background=every is None)
    value = (1).to_bytes(4, "little") + bytes(VALUE - 4)
    rng = random.Random(3)
    live = list(range(capacity))
    for n in live:
        table.update(key_of(n), value, 1, NOEXIST)
    fresh = capacity
    start = time.perf_counter()
    for step in range(rounds * capacity):
        gone = live.pop(rng.randrange(len(live)))
        table.delete(key_of(gone), 0, 1)
        table.update(key_of(fresh), value, 1, NOEXIST)
        live.append(fresh)
        fresh += 1
        if every and step % every == every - 1:
            _slots.seal(table._live)
            _slots.release(table.mem, table._live, table.geometry)
    seconds = time.perf_counter() - start
    waited = table.grace_periods
    table.grace()
    actions = table._actions
    misses = []
    for n in range(1 << 40, (1 << 40) + 4000):
        at = home(key_of(n), table.seed, table.slots)
        empty = np.flatnonzero(actions[at : at + PROBES] == 0)
        misses.append(int(empty[0]) + 1 if len(empty) else PROBES)
    hits = [table.find(key_of(n)) - home(key_of(n), table.seed, table.slots) + 1 for n in live]
    out = {
        "grace_every_deletes": every if every else "background thread",
        "deleted_share": round(float(np.count_nonzero(actions == SLOT_TOMB)) / table.slots, 3),
        "slots_read_hit": round(statistics.fmean(hits), 2),
        "slots_read_miss": round(statistics.fmean(misses), 2),
        "deletes_per_s": round(rounds * capacity / seconds),
        "grace_periods_a_write_waited_for": waited if every else None,
    }
    if every is None:
        out["grace_periods"] = waited
        out["deletes_per_grace_period"] = round(rounds * capacity / max(waited, 1))
    return out


def synchronize_ms(calls: int) -> dict:
    took = []
    for _ in range(calls):
        t = time.perf_counter()
        _slots.synchronize()
        took.append((time.perf_counter() - t) * 1e3)
    took.sort()
    return {"p50": round(took[len(took) // 2], 2), "max": round(took[-1], 2), "calls": calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capacity", type=int, default=4096, help="entries the table may hold")
    ap.add_argument("--churn", type=int, default=20, help="deletes and inserts, in table sizes")
    ap.add_argument("--every", default="1,40,200,1000", help="deletes per release, runs")
    args = ap.parse_args()
    runs = [churn(args.capacity, args.churn, int(n)) for n in args.every.split(",")]
    runs.append(churn(args.capacity, args.churn, None))
    print(json.dumps({
        "capacity": args.capacity, "slots": 2 * args.capacity, "churn": args.churn,
        "runs": runs, "synchronize_ms": synchronize_ms(20),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
