"""The flow table's open-addressed slots (xdp/slots.py, _slots.c): the writer against a dict,
its deleted slots reclaimed under churn, walks across moving entries, and the program's search
against the reference model after inserts, moves and deletes."""

from __future__ import annotations

import errno
import random
import time

import numpy as np
import pytest

from cyberstar import packets
from cyberstar.codegen.xdp_layout import SLOT_TOMB
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.targets.ref import RefTarget
from cyberstar.xdp.maps import encode_key, encode_value
from cyberstar.xdp.slots import ANY, EXIST, NOEXIST, PROBES, SlotTable, home

pytestmark = pytest.mark.root

KEY, VALUE = 16, 16  # the test table's slot: a 16-byte key, a value with its action first
M64 = (1 << 64) - 1


def documented_home(key: bytes, seed: int, slots: int) -> int:
    """The hash as xdp/slots.py documents it, written out again."""
    h = seed
    for i in range(0, len(key), 8):
        h = ((h ^ int.from_bytes(key[i : i + 8], "little")) * 0x9E3779B97F4A7C15) & M64
        h ^= h >> 32
    return ((h >> 32) * slots) >> 32


def small_table(capacity: int, seed: int = 7, grace_thread: bool = True) -> SlotTable:
    """A slot table of `capacity` entries in a real mmapable BPF array."""
    from bcc import BPF

    entries = 2 * capacity + PROBES - 1
    bpf = BPF(text=(
        f"struct slot {{ __u8 b[{KEY + VALUE}]; }};\n"
        f'BPF_F_TABLE("array", u32, struct slot, t, {entries}, BPF_F_MMAPABLE);'
    ).encode())  # fmt: skip
    table = SlotTable(bpf[b"t"].map_fd, entries, KEY, VALUE, 0, seed, grace_thread)
    table.bpf = bpf  # keeps the map open
    return table


def used_slots(table: SlotTable) -> tuple[int, int]:
    """(entries, deleted slots) of the table, read from its live-slot map and its array."""
    entries = int(np.count_nonzero(table._live == 1))
    return entries, int(np.count_nonzero(table._actions == SLOT_TOMB))


def key_of(n: int) -> bytes:
    return n.to_bytes(4, "big") + bytes(12)


def value_of(action: int, tag: int = 0) -> bytes:
    return action.to_bytes(4, "little") + bytes(4) + tag.to_bytes(8, "little")


def test_the_home_slot_is_the_documented_hash() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        key = rng.randbytes(16)
        seed, slots = rng.getrandbits(64), rng.randrange(1, 1 << 32)
        assert home(key, seed, slots) == documented_home(key, seed, slots)


def test_writes_and_lookups_agree_with_a_dict() -> None:
    """INSERT (new keys only), MODIFY (existing only), upsert and DELETE of 128 keys crowded
    into a table of 128 entries, in random order: each refusal and each lookup as a dict says."""
    table = small_table(128)
    rng = random.Random(2)
    oracle: dict[bytes, bytes] = {}
    for step in range(4000):
        key = key_of(rng.randrange(128))
        op = rng.choice(["insert", "modify", "upsert", "delete"])
        value = value_of(rng.randrange(1, 5), step)
        if op == "delete":
            deleted, err = table.delete(key, 0, 1)
            assert (deleted, err) == ((1, 0) if key in oracle else (0, errno.ENOENT))
            oracle.pop(key, None)
            continue
        flags = {"insert": NOEXIST, "modify": EXIST, "upsert": ANY}[op]
        refused = table.update(key, value, 1, flags)
        if op == "insert" and key in oracle:
            assert refused == [(0, errno.EEXIST)]
        elif op == "modify" and key not in oracle:
            assert refused == [(0, errno.ENOENT)]
        else:
            assert refused == []
            oracle[key] = value
        if step % 100 == 0:
            for n in range(128):
                assert table.lookup(key_of(n)) == oracle.get(key_of(n))
    keys, values, n, end = table.entries(0, table.length)
    assert end == table.length
    found = {keys[i * KEY : (i + 1) * KEY]: values[i * VALUE : (i + 1) * VALUE] for i in range(n)}
    assert n == len(found) and found == oracle  # every entry once, in one slot
    actions = table._actions
    assert n == sum(1 for a in actions if a not in (0, 0xFFFFFFFF))  # the live map is the array's


def test_deleted_slots_are_reclaimed_under_churn() -> None:
    """Half full, then twenty times its size in deletes and inserts: marking deleted slots
    without ever emptying them would leave every free slot deleted (about half the slots) and
    each miss would search all PROBES slots. Deleted slots are released every 40 deletes (1 %
    of the table; at 100 000 deletes/s a grace period of ~13 ms takes 0.1 % of a 1M-entry
    table), without waiting for the grace period itself: what the layout sees of it."""
    from cyberstar.xdp import _slots

    capacity = 4096
    table = small_table(capacity, grace_thread=False)
    rng = random.Random(3)
    live = list(range(capacity))
    for n in live:
        assert table.update(key_of(n), value_of(1), 1, NOEXIST) == []
    fresh = capacity
    for step in range(20 * capacity):
        gone = live.pop(rng.randrange(len(live)))
        assert table.delete(key_of(gone), 0, 1) == (1, 0)
        assert table.update(key_of(fresh), value_of(1), 1, NOEXIST) == []
        live.append(fresh)
        fresh += 1
        if step % 40 == 39:
            _slots.seal(table._live)
            _slots.release(table.mem, table._live, table.geometry)
    assert table.grace_periods == 0  # no write found its window full
    table.grace()
    entries, tombs = used_slots(table)
    assert entries == capacity
    assert tombs < 0.25 * table.slots, f"{tombs} of {table.slots} slots deleted, not reclaimed"
    actions = table._actions
    lengths = []
    for n in range(10**7, 10**7 + 2000):  # absent keys: a search runs to the first empty slot
        start = home(key_of(n), table.seed, table.slots)
        window = actions[start : start + PROBES]
        empty = [i for i, a in enumerate(window) if a == 0]
        lengths.append(empty[0] + 1 if empty else PROBES)
    assert sum(lengths) / len(lengths) < 8
    assert all(table.lookup(key_of(n)) == value_of(1) for n in live)


def test_a_walk_sees_each_entry_once_while_modifies_move_them() -> None:
    table = small_table(1024)
    keys = [key_of(n) for n in range(900)]
    for k in keys:
        assert table.update(k, value_of(1), 1, NOEXIST) == []
    walk = table.walk(64)
    seen: list[bytes] = []
    step = 0
    while not walk.done:
        kraw, _, n = walk.next()
        seen += [kraw[i * KEY : (i + 1) * KEY] for i in range(n)]
        step += 1
        if step % 4 == 0:  # every entry modified: each moves to another slot of its window
            for k in keys:
                assert table.update(k, value_of(2 + step % 3), 1, EXIST) == []
    assert sorted(seen) == sorted(keys)


def test_the_program_finds_what_the_agent_wrote(xdp_target) -> None:
    """3 000 flows written, a third deleted and a fifth modified (moved to another slot) in the
    program's flow table; a packet of each goes where the reference model, given the same
    final entries, sends it."""
    prog = xdp_target.prog
    prog.clear()
    hops = [
        build_entry(PIPELINE, "next_hop", {"nexthop_id": n}, "set_next_hop",
                    {"port": n, "smac": "02:00:00:00:00:01", "dmac": "02:00:00:00:00:02"})
        for n in (1, 2, 3)
    ]  # fmt: skip
    classify = build_entry(PIPELINE, "tenant_classify",
                           {"ingress_port": 1, "vni": 0, "dst_addr": "10.1.0.0/16"},
                           "set_tenant", {"tenant_id": 1})  # fmt: skip

    def flow(n: int, hop: int):
        return build_entry(
            PIPELINE, "flow_table",
            {"tenant_id": 1, "src_addr": f"192.168.{n >> 8}.{n & 255}", "dst_addr": "10.1.0.5",
             "protocol": 6, "src_port": 40000, "dst_port": 80},
            "forward", {"nexthop_id": hop},
        )  # fmt: skip

    flows = {n: flow(n, 1 + n % 3) for n in range(3000)}
    xdp_target.install([*hops, classify, *flows.values()])
    gone = [flows.pop(n) for n in range(0, 3000, 3)]
    prog.delete_raw("flow_table", b"".join(encode_key(PIPELINE, e) for e in gone), len(gone))
    moved = {n: flow(n, 1 + (n + 1) % 3) for n in list(flows)[::5]}
    flows.update(moved)
    prog.write_raw(
        "flow_table",
        b"".join(encode_key(PIPELINE, e) for e in moved.values()),
        b"".join(encode_value(PIPELINE, e) for e in moved.values()),
        len(moved),
    )
    ref = RefTarget()
    ref.install([*hops, classify, *flows.values()])
    for n in range(3000):
        data = packets.tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01",
                                 f"192.168.{n >> 8}.{n & 255}", "10.1.0.5", 40000, 80,
                                 b"x" * 6, flags=0x10)  # fmt: skip
        assert xdp_target.process(data, 1) == ref.process(data, 1), f"flow {n}"
    assert used_slots(prog.slot_tables["flow_table"])[0] == len(flows)


def test_garbage_geometry_and_short_buffers_are_refused() -> None:
    from cyberstar.xdp import _slots

    table = small_table(16)
    with pytest.raises(ValueError, match="multiple of 8"):
        _slots.update(table.mem, table._live, (32, PROBES, 12, VALUE, 0, 0), b"", b"", 0, 0, ANY, 0)
    with pytest.raises(ValueError, match="live-slot map"):
        _slots.delete(table.mem, bytearray(3), table.geometry, bytes(KEY), 0, 1)
    with pytest.raises(ValueError, match="need"):
        _slots.find(table.mem, (1 << 20, PROBES, KEY, VALUE, 0, 0), bytes(KEY))
    with pytest.raises(ValueError, match="expected 32 bytes"):
        table.update(bytes(KEY), value_of(1), 2, ANY)
    with pytest.raises(ValueError, match="flags"):
        table.update(bytes(KEY), value_of(1), 1, 7)
    assert table.update(bytes(KEY), value_of(0), 1, ANY) == [(0, errno.EINVAL)]  # not an action


def test_a_key_with_no_free_slot_in_reach_is_refused_and_nothing_else_is_lost() -> None:
    """A table of 8 entries has 16 home slots and 16 + 63 slots in all: of 100 keys, at least
    21 find no free slot within PROBES of their home (E2BIG, which the device answers
    RESOURCE_EXHAUSTED); every key written is there, and no refused one."""
    table = small_table(8)
    refused = table.update(
        b"".join(key_of(n) for n in range(100)),
        b"".join(value_of(1, n) for n in range(100)),
        100,
        NOEXIST,
    )
    assert len(refused) >= 100 - table.length
    assert all(err == errno.E2BIG for _, err in refused)
    kept = set(range(100)) - {i for i, _ in refused}
    assert len(kept) <= table.length
    assert all(table.lookup(key_of(n)) == value_of(1, n) for n in kept)
    assert all(table.lookup(key_of(i)) is None for i, _ in refused)


def same_home(table: SlotTable, count: int) -> tuple[int, list[bytes]]:
    """A home slot and `count` keys whose home it is."""
    by_home: dict[int, list[bytes]] = {}
    n = 0
    while True:
        key = key_of(n)
        keys = by_home.setdefault(home(key, table.seed, table.slots), [])
        keys.append(key)
        if len(keys) == count:
            return home(key, table.seed, table.slots), keys
        n += 1


def retired(table: SlotTable) -> int:
    return int(np.count_nonzero(table._live >= 2))


def test_a_deleted_slot_is_not_written_again_before_a_grace_period() -> None:
    """A program run that read an entry just before its delete may still be using its bytes:
    the slot is passed over by writes until every run under way has ended, then reused."""
    table = small_table(64, grace_thread=False)
    h, (a, b, c) = same_home(table, 3)
    assert table.update(a, value_of(1, 1), 1, NOEXIST) == [] and table.find(a) == h
    assert table.delete(a, 0, 1) == (1, 0)
    assert table.update(b, value_of(1, 2), 1, NOEXIST) == []
    assert table.find(b) == h + 1, "the deleted slot was written again at once"
    assert table._actions[h] == SLOT_TOMB and retired(table) == 1
    assert table.grace() == 1 and retired(table) == 0
    assert table.update(c, value_of(1, 3), 1, NOEXIST) == []
    assert table.find(c) == h  # released: free again
    assert table.lookup(b) == value_of(1, 2) and table.lookup(a) is None


def test_retired_slots_are_released_in_the_background() -> None:
    table = small_table(1024)
    keys = b"".join(key_of(n) for n in range(500))
    assert table.update(keys, b"".join(value_of(1, n) for n in range(500)), 500, NOEXIST) == []
    assert table.delete(keys, 0, 500) == (500, 0)
    assert retired(table) == 500
    deadline = time.monotonic() + 5
    while retired(table) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert retired(table) == 0 and table.grace_periods >= 1
    entries, tombs = used_slots(table)
    assert (entries, tombs) == (0, 0)  # nothing after them needs a search to pass them


def test_a_write_whose_window_is_full_of_retired_slots_waits_for_a_grace_period() -> None:
    """PROBES keys with one home fill its window, and one is deleted: a MODIFY is not rewritten
    in place while a program may read it, nor a new key of that home refused (E2BIG); each
    waits for a grace period and is written after it, in the order of its batch."""
    table = small_table(128, grace_thread=False)
    h, keys = same_home(table, PROBES + 1)
    for i, k in enumerate(keys[:PROBES]):
        assert table.update(k, value_of(1, i), 1, NOEXIST) == []
    assert table.delete(keys[5], 0, 1) == (1, 0)
    batch = keys[7] + keys[PROBES]  # a MODIFY, then a new key
    assert table.update(batch, value_of(2, 107) + value_of(2, 100), 2, ANY) == []
    assert table.grace_periods == 2
    assert table.find(keys[7]) == h + 5  # moved into the slot released by the first
    assert table.find(keys[PROBES]) == h + 7  # into the one the move released, by the second
    assert table.lookup(keys[7]) == value_of(2, 107)
    assert table.lookup(keys[PROBES]) == value_of(2, 100)
    kept = [(i, k) for i, k in enumerate(keys[:PROBES]) if i not in (5, 7)]
    assert all(table.lookup(k) == value_of(1, i) for i, k in kept)
    assert table.lookup(keys[5]) is None


def test_a_modify_in_a_full_window_is_never_rewritten_under_a_reader() -> None:
    """PROBES keys with one home fill its window and none was deleted: a MODIFY has no other
    slot for its new version, so its entry is deleted and inserted after a grace period (never
    rewritten in place while a program may be reading it); the next write of the batch follows."""
    table = small_table(128, grace_thread=False)
    h, keys = same_home(table, PROBES)
    for i, k in enumerate(keys):
        assert table.update(k, value_of(1, i), 1, NOEXIST) == []
    assert table.update(keys[7] + keys[9], value_of(3, 7) + value_of(3, 9), 2, EXIST) == []
    assert table.grace_periods == 2
    assert table.lookup(keys[7]) == value_of(3, 7) and table.lookup(keys[9]) == value_of(3, 9)
    assert {table.find(k) for k in keys} == set(range(h, h + PROBES))
    assert all(table.lookup(k) == value_of(1, i) for i, k in enumerate(keys) if i not in (7, 9))
