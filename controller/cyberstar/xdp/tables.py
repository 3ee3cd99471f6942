"""The pipeline's tables as the XDP program's maps: entry values in and out, whatever each table
kind keeps in the kernel (see `cyberstar.codegen.xdp_layout`).

Callers (the loader's `install`, the P4Runtime device) speak entry values: action, priority,
direct counters, last hit time, params. This module turns them into map values, moving direct
counters to and from per-CPU counter slots it allocates, keeps the prefix lengths in use of an
LPM-kind table, and publishes ternary tables as per-partition lists.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections import Counter
from collections.abc import Iterable

from cyberstar.codegen.xdp_layout import (
    DIRECT_INDEX,
    TableKind,
    TableLayout,
    cached_tables,
    map_entry_offsets,
    table_layout,
    ternary_entry_offsets,
)
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.model import Pipeline
from cyberstar.xdp.maps import (
    encode_key,
    encode_ternary_entry,
    encode_value,
    from_map_value,
    map_ternary_entry,
    prefix_len_of,
    to_map_value,
)
from cyberstar.xdp.slots import ANY, SlotTable


class TableMaps:
    """Mixed into `XdpProgram`: the table operations on its maps (`self._map(name)`)."""

    pipeline: Pipeline

    def _map(self, name: str):  # provided by XdpProgram
        raise NotImplementedError

    def _init_tables(self, seeds: dict[str, int]) -> None:
        """`seeds`: the hash seed each slot table's program was compiled with."""
        self.slot_tables: dict[str, SlotTable] = {}
        self._ternary: dict[str, list[TableEntry]] = {}
        self._ternary_slots: dict[str, dict[tuple, int]] = {}
        self._lpm_slots: dict[str, dict[bytes, int]] = {}
        self._lengths: dict[str, Counter[int]] = {}
        self._direct_used: dict[str, set[int]] = {}
        self._free: dict[str, list[int]] = {}
        self._written_lists: dict[tuple[str, int], set[int]] = {}
        self._epochs = dict.fromkeys(cached_tables(self.pipeline), 0)
        for name in self._epochs:
            self._expire(name)
        for t in self.pipeline.tables:
            lay = table_layout(self.pipeline, t.name)
            if lay.percpu_counters:
                self._free[t.name] = list(range(lay.counter_slots - 1, -1, -1))
            if lay.kind is TableKind.TERNARY:
                self._ternary[t.name] = []
                self._ternary_slots[t.name] = {}
            elif lay.kind is TableKind.LPM:
                self._lpm_slots[t.name] = {}
                self._lengths[t.name] = Counter()
            elif lay.kind is TableKind.DIRECT:
                self._direct_used[t.name] = set()
            elif lay.kind is TableKind.HASH:
                table = self._map(t.name)
                self.slot_tables[t.name] = SlotTable(
                    table.map_fd, table.max_entries, lay.key.size, lay.value_size,
                    lay.value_head.member("action").offset, seeds[t.name],
                )  # fmt: skip

    def map_sizes(self, lay: TableLayout) -> tuple[int, int]:
        """(key, value) sizes the table's map must have."""
        if lay.kind is TableKind.TERNARY:
            return 4, map_entry_offsets(lay)["size"]
        if lay.kind is TableKind.HASH:  # an array of key + value slots
            return 4, lay.key.size + lay.map_value_size
        return lay.key.size, lay.map_value_size

    # ---- entries in --------------------------------------------------------------------

    def install(self, entries: Iterable[TableEntry]) -> None:
        """Add entries (tests, the pcap runner, the demo); the P4Runtime device uses the
        finer-grained operations below."""
        touched_ternary = set()
        batches: dict[str, list[TableEntry]] = {}
        for e in entries:
            if e.is_default:
                self.write_default(e)
            elif e.table in self._ternary:
                self._ternary[e.table].append(e)
                touched_ternary.add(e.table)
            else:
                batches.setdefault(e.table, []).append(e)
        for name, batch in batches.items():
            self.write_exact(name, batch)
        for name in touched_ternary:
            self.publish_ternary(name, sorted(self._ternary[name], key=lambda e: -e.priority))

    def write_default(self, entry: TableEntry) -> None:
        lay = table_layout(self.pipeline, entry.table)
        value, _, _ = to_map_value(lay, encode_value(self.pipeline, entry))
        default = self._map(f"{entry.table}_default")
        default[ctypes.c_int(0)] = default.Leaf.from_buffer_copy(value)
        self._expire(entry.table)

    def _expire(self, name: str) -> None:
        """After a change to table `name`: results of it cached in other tables' entries (which
        carry the epoch they were computed in) no longer count. Epochs start at 1, so a new
        entry's zeroed cache is stale."""
        if name in self._epochs:
            self._epochs[name] = self._epochs[name] % 0xFFFFFFFF + 1
            epoch = self._map(f"{name}_epoch")
            epoch[ctypes.c_int(0)] = ctypes.c_uint32(self._epochs[name])

    def write_exact(self, name: str, entries: list[TableEntry]) -> None:
        keys = b"".join(encode_key(self.pipeline, e) for e in entries)
        values = b"".join(encode_value(self.pipeline, e) for e in entries)
        self.write_raw(name, keys, values, len(entries))

    def write_raw(self, name: str, keys: bytes, values: bytes, count: int) -> None:
        """Upsert `count` encoded keys and entry values. Flow (slot) tables are written in
        place (xdp/slots.py); the others take one map update per entry."""
        lay = table_layout(self.pipeline, name)
        table = self._map(name)
        ksize, vsize = lay.key.size, lay.value_size
        if lay.kind is TableKind.HASH:
            refused = self.slot_tables[name].update(keys, values, count, ANY)
            if refused:
                i, err = refused[0]
                raise OSError(err, f"{name}: entry {i} of {count}: {os.strerror(err)}")
            return
        try:
            for i in range(count):
                key = keys[i * ksize : (i + 1) * ksize]
                self._write_one(lay, table, key, values[i * vsize : (i + 1) * vsize])
        finally:
            self._expire(name)

    def _write_one(self, lay: TableLayout, table, key: bytes, value: bytes) -> None:
        name = lay.table.name
        if lay.kind is TableKind.DIRECT:
            slot = lay.key.unpack(key)[DIRECT_INDEX]
            new = False
        else:
            slots = self._lpm_slots[name]
            new = key not in slots
            if new:
                if lay.percpu_counters:
                    if not self._free[name]:
                        raise OSError(errno.E2BIG, f"table {name} has no free counter slot")
                    slots[key] = self._free[name].pop()
                else:
                    slots[key] = 0
            slot = slots[key]
        map_value, packets, nbytes = to_map_value(lay, value, slot)
        if lay.percpu_counters:
            self._set_counters(name, slot, packets, nbytes)
        try:
            table[table.Key.from_buffer_copy(key)] = table.Leaf.from_buffer_copy(map_value)
        except Exception:
            if new:
                self._release(lay, key)
            raise
        if lay.kind is TableKind.DIRECT:
            self._direct_used[name].add(slot)
        elif new:  # publish the prefix length once an entry of that length exists
            length = prefix_len_of(lay, key)
            self._lengths[name][length] += 1
            if self._lengths[name][length] == 1:
                self._write_lengths(name)

    def _release(self, lay: TableLayout, key: bytes) -> None:
        slot = self._lpm_slots[lay.table.name].pop(key)
        if lay.percpu_counters:
            self._free[lay.table.name].append(slot)

    def delete_raw(self, name: str, keys: bytes, count: int) -> None:
        lay = table_layout(self.pipeline, name)
        table = self._map(name)
        ksize = lay.key.size
        if lay.kind is TableKind.HASH:
            deleted, err = self.slot_tables[name].delete(keys, 0, count)
            if err:
                raise KeyError(f"{name}: entry {deleted} of {count} is not in the table")
            return
        for i in range(count):
            key = keys[i * ksize : (i + 1) * ksize]
            if lay.kind is TableKind.DIRECT:
                index = lay.key.unpack(key)[DIRECT_INDEX]
                table[ctypes.c_int(index)] = table.Leaf()  # action 0: an empty slot
                self._direct_used[name].discard(index)
                continue
            if key not in self._lpm_slots[name]:
                raise KeyError(f"{name}: no such entry")
            length = prefix_len_of(lay, key)
            self._lengths[name][length] -= 1
            if not self._lengths[name][length]:  # stop probing the length before the delete
                del self._lengths[name][length]
                self._write_lengths(name)
            del table[table.Key.from_buffer_copy(key)]
            self._release(lay, key)
        self._expire(name)

    def _write_lengths(self, name: str) -> None:
        """Bit (width - n) set for each prefix length n in use: the lowest bit is the longest."""
        width = table_layout(self.pipeline, name).lpm_width
        bits = 0
        for length in self._lengths[name]:
            bits |= 1 << (width - length)
        lengths = self._map(f"{name}_lengths")
        lengths[ctypes.c_int(0)] = ctypes.c_uint64(bits)

    def _set_counters(self, name: str, slot: int, packets: int, nbytes: int) -> None:
        """Per-CPU counter cells of `slot`: the totals on the first CPU, zero on the others."""
        counters = self._map(f"{name}_counters")
        cells = counters.Leaf()
        cells[0].packets, cells[0].bytes = packets, nbytes
        counters[ctypes.c_int(slot)] = cells

    def _counters(self, name: str, slot: int) -> tuple[int, int]:
        cells = self._map(f"{name}_counters")[ctypes.c_int(slot)]
        return sum(c.packets for c in cells), sum(c.bytes for c in cells)

    # ---- entries out -------------------------------------------------------------------

    def _entry_value(self, lay: TableLayout, map_value: bytes, slot: int) -> bytes:
        counters = self._counters(lay.table.name, slot) if lay.percpu_counters else (0, 0)
        return from_map_value(lay, map_value, *counters)

    def _slot_of(self, lay: TableLayout, key: bytes) -> int:
        if lay.kind is TableKind.DIRECT:
            return lay.key.unpack(key)[DIRECT_INDEX]
        return self._lpm_slots[lay.table.name].get(key, 0)

    def lookup_raw(self, name: str, key: bytes) -> bytes | None:
        """The entry value under `key`, or None."""
        lay = table_layout(self.pipeline, name)
        if lay.kind is TableKind.HASH:
            return self.slot_tables[name].lookup(key)
        table = self._map(name)
        try:
            value = bytes(table[table.Key.from_buffer_copy(key)])
        except KeyError:
            return None
        if lay.kind is TableKind.DIRECT and not lay.map_head.unpack(value)["action"]:
            return None
        return self._entry_value(lay, value, self._slot_of(lay, key))

    # ---- ternary tables ----------------------------------------------------------------

    def publish_ternary(
        self,
        name: str,
        entries: list[TableEntry],
        counters: dict[tuple, tuple[int, int]] | None = None,
    ) -> None:
        """Publish a ternary table's entries (already in match order): write the lists to the
        idle half of its arrays, then make that half the active one. Entries that stay keep
        their counter slots (and counts); `counters` sets those of new entries, by identity."""
        lay = table_layout(self.pipeline, name)
        size = lay.table.size
        if len(entries) > size:
            raise ValueError(f"table {name} holds at most {size} entries, asked for {len(entries)}")
        slots = self._assign_ternary_slots(lay, entries, counters or {})
        lists = _partition_lists(lay, entries)
        if sum(len(members) for members in lists.values()) > lay.list_capacity:
            lists = {None: list(range(len(entries)))}  # one list for every partition value
        table, active = self._map(name), self._map(f"{name}_active")
        half = (active[ctypes.c_int(0)].value & 1) ^ 1
        base = half * lay.list_capacity
        encoded = [map_ternary_entry(self.pipeline, e, slots[e.match_key()]) for e in entries]
        heads: dict[int, int] = {}
        slot_bytes: list[bytes] = []
        for part, members in lists.items():
            start = base + len(slot_bytes)
            slot_bytes += [encoded[i] for i in members]
            heads[lay.partitions if part is None else part] = start | len(members) << 16
        for i, raw in enumerate(slot_bytes):
            table[ctypes.c_int(base + i)] = table.Leaf.from_buffer_copy(raw)
        self._write_lists(lay, half, heads)
        active[ctypes.c_int(0)] = ctypes.c_uint32(half)
        self._ternary[name] = list(entries)
        self._expire(name)

    def _assign_ternary_slots(
        self, lay: TableLayout, entries: list[TableEntry], counters: dict[tuple, tuple[int, int]]
    ) -> dict[tuple, int]:
        name = lay.table.name
        slots = self._ternary_slots[name]
        wanted = {e.match_key() for e in entries}
        if not lay.percpu_counters:
            return {ident: 0 for ident in wanted}
        for ident in [i for i in slots if i not in wanted]:
            self._free[name].append(slots.pop(ident))
        for ident in wanted - slots.keys():
            slots[ident] = self._free[name].pop()
            self._set_counters(name, slots[ident], *counters.get(ident, (0, 0)))
        return slots

    def _write_lists(self, lay: TableLayout, half: int, heads: dict[int, int]) -> None:
        """The list heads of one half: `heads` by partition value (`partitions` is the list
        for values without entries of their own); every other value gets an empty list."""
        lists = self._map(f"{lay.table.name}_lists")
        stride = lay.partitions + 1
        written = self._written_lists.get((lay.table.name, half), set())
        cleared = {p: 0 for p in written if p not in heads}
        for part, head in {**cleared, **heads}.items():
            lists[ctypes.c_int(half * stride + part)] = ctypes.c_uint32(head)
        self._written_lists[(lay.table.name, half)] = set(heads)

    def ternary_entries(self, name: str) -> list[TableEntry]:
        """The published entries of a ternary table, in match order."""
        return list(self._ternary[name])

    def ternary_value_offset(self, name: str) -> int:
        return ternary_entry_offsets(table_layout(self.pipeline, name))["v"]

    def ternary_raw(self, name: str) -> list[bytes]:
        """The published entries of a ternary table in match order, as match value, mask and
        entry value (with the counters)."""
        lay = table_layout(self.pipeline, name)
        slots = self._ternary_slots[name]
        out = []
        for e in self._ternary[name]:
            counters = self._counters(name, slots[e.match_key()]) if lay.percpu_counters else (0, 0)
            out.append(encode_ternary_entry(self.pipeline, e, *counters))
        return out

    # ---- reset -------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every entry and restore the spec's default actions."""
        for t in self.pipeline.tables:
            lay = table_layout(self.pipeline, t.name)
            if lay.kind is TableKind.TERNARY:
                self.publish_ternary(t.name, [])
            elif lay.kind is TableKind.DIRECT:
                used = sorted(self._direct_used[t.name])
                keys = b"".join(lay.key.pack({DIRECT_INDEX: i}) for i in used)
                self.delete_raw(t.name, keys, len(used))
            elif lay.kind is TableKind.LPM:
                keys = list(self._lpm_slots[t.name])
                self.delete_raw(t.name, b"".join(keys), len(keys))
            else:
                self.slot_tables[t.name].clear()
        self.install_defaults()

    def install_defaults(self) -> None:
        """Write each table's spec default action into its `<table>_default` map."""
        for t in self.pipeline.tables:
            self.write_default(TableEntry(t.name, {}, t.default_action, {}, is_default=True))


def _partition_lists(lay: TableLayout, entries: list[TableEntry]) -> dict[int | None, list[int]]:
    """Entry indices (in match order) of each partition value's list; None: the list for the
    values without entries of their own (every entry not pinned to one value)."""
    if not lay.partition:
        return {None: list(range(len(entries)))}
    full = (1 << lay.table.key_field(lay.partition).width) - 1
    pinned: dict[int, list[int]] = {}
    shared = []
    for i, e in enumerate(entries):
        m = e.match.get(lay.partition)
        if m is not None and m.mask == full:
            pinned.setdefault(m.value, []).append(i)
        else:
            shared.append(i)
    lists: dict[int | None, list[int]] = {}
    for value, own in pinned.items():
        applies = [i for i in shared if _matches(entries[i], lay.partition, value)]
        lists[value] = sorted(own + applies)
    lists[None] = shared
    return lists


def _matches(entry: TableEntry, field: str, value: int) -> bool:
    m = entry.match.get(field)
    return m is None or value & m.mask == m.value
