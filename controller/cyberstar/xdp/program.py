"""Load the generated XDP program with BCC, check its maps against the spec, and drive them."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cyberstar.codegen.xdp import QUOTA_MAP, size_macro
from cyberstar.codegen.xdp_layout import punt_meta_layout, table_layout, ternary_entry_offsets
from cyberstar.errors import RuntimeFailure
from cyberstar.paths import xdp_source
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.frames import Punted
from cyberstar.pipeline.model import Pipeline
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.xdp.maps import (
    empty_ternary_slot,
    encode_key,
    encode_ternary_entry,
    encode_value,
)
from cyberstar.xdp.testrun import ProgRunResult, prog_test_run

log = logging.getLogger(__name__)

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0  # never replace a program attached meanwhile
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
_MODE_FLAGS = {1: XDP_FLAGS_DRV_MODE, 2: XDP_FLAGS_SKB_MODE, 3: XDP_FLAGS_HW_MODE}  # ip's modes
PROGRAM_NAME = "pp_xdp"
BPF_MAP_TYPE_HASH = 1
BATCH = 65536  # entries per BPF_MAP_UPDATE_BATCH call


CLOCK_MONOTONIC_COARSE = 6  # the clock bpf_ktime_get_coarse_ns reads


def coarse_now_ns() -> int:
    """Now on the data plane's clock (what `last_hit_ns` is stamped with)."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


@dataclass(frozen=True)
class HashMap:
    fd: int
    key_size: int
    value_size: int
    capacity: int  # max_entries


class XdpLoadError(RuntimeFailure):
    """The program did not compile, load or attach; the message names the log file."""


@contextmanager
def _captured_stderr() -> Iterator[Path]:
    """BCC and the verifier write to fd 2; keep what they say in a file."""
    fd, name = tempfile.mkstemp(prefix="cyberstar-xdp-", suffix=".log")
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield Path(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def attached_programs(ifname: str) -> list[tuple[int, dict]]:
    """(mode, program) of each XDP program on `ifname`, as `ip -d link` reports them (in the
    caller's network namespace)."""
    out = subprocess.run(
        ["ip", "-j", "-d", "link", "show", "dev", ifname], capture_output=True, text=True
    )
    if out.returncode != 0:
        return []
    xdp = json.loads(out.stdout)[0].get("xdp") or {}
    return [(a.get("mode", 0), a["prog"]) for a in xdp.get("attached") or [xdp] if "prog" in a]


def _first_error(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[-1] if lines else "no message"


class XdpProgram:
    """The generated PP program, loaded into the kernel, with its maps."""

    def __init__(
        self,
        pipeline: Pipeline = PIPELINE,
        source: str | None = None,
        table_sizes: dict[str, int] | None = None,
    ) -> None:
        """`table_sizes` sizes hash tables' maps beyond the spec's sizes (pp serve
        --flow-table-size)."""
        from bcc import BPF  # Debian's python3-bpfcc; imported here so other commands run without

        self.pipeline = pipeline
        self._bpf_cls = BPF
        with _captured_stderr() as log_path:
            try:
                self.source = source or xdp_source()
                sizes = [f"-D{size_macro(t)}={n}" for t, n in (table_sizes or {}).items()]
                self.bpf = BPF(text=self.source.encode(), cflags=["-Wno-unused-function", *sizes])
                self.fn = self.bpf.load_func(PROGRAM_NAME.encode(), BPF.XDP)
            except Exception as exc:
                raise XdpLoadError(
                    f"could not load the XDP program: {exc}; first error: "
                    f"{_first_error(log_path)} (full compiler/verifier log: {log_path})"
                ) from None
        log_path.unlink(missing_ok=True)
        self._check_layouts()
        self._ternary: dict[str, list[TableEntry]] = {
            t.name: [] for t in pipeline.tables if t.needs_priority
        }
        self.attached: dict[str, int] = {}
        self.punts_lost = 0

    def _map(self, name: str):
        return self.bpf[name.encode()]

    @property
    def fd(self) -> int:
        return self.fn.fd

    def _check_layouts(self) -> None:
        """Refuse to run if the compiled maps do not have the spec's layouts."""
        for t in self.pipeline.tables:
            lay = table_layout(self.pipeline, t.name)
            table = self._map(t.name)
            if lay.ternary:
                expected_key, expected_leaf = 4, ternary_entry_offsets(lay)["size"]
            else:
                expected_key, expected_leaf = lay.key.size, lay.value_size
            found = (ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf))
            if found != (expected_key, expected_leaf):
                raise XdpLoadError(
                    f"map {t.name}: key/value sizes {found} differ from the spec's "
                    f"{(expected_key, expected_leaf)}; regenerate with `cyberstar build`"
                )

    # ---- tables --------------------------------------------------------------------------

    def install(self, entries: Iterable[TableEntry]) -> None:
        """Add entries (tests, the pcap runner, the demo); the P4Runtime device uses the
        finer-grained operations below."""
        touched_ternary = set()
        batches: dict[str, list[TableEntry]] = {}
        for e in entries:
            if e.is_default:
                self.write_default(e)
            elif table_layout(self.pipeline, e.table).ternary:
                self._ternary[e.table].append(e)
                touched_ternary.add(e.table)
            else:
                batches.setdefault(e.table, []).append(e)
        for name, batch in batches.items():
            self.write_exact(name, batch)
        for name in touched_ternary:
            self.publish_ternary(name, sorted(self._ternary[name], key=lambda e: -e.priority))

    def write_default(self, entry: TableEntry) -> None:
        default = self._map(f"{entry.table}_default")
        default[ctypes.c_int(0)] = default.Leaf.from_buffer_copy(encode_value(self.pipeline, entry))

    def write_exact(self, name: str, entries: list[TableEntry]) -> None:
        keys = b"".join(encode_key(self.pipeline, e) for e in entries)
        values = b"".join(encode_value(self.pipeline, e) for e in entries)
        self.write_raw(name, keys, values, len(entries))

    def write_raw(self, name: str, keys: bytes, values: bytes, count: int) -> None:
        """Upsert `count` encoded key/value pairs. Hash tables take one BPF_MAP_UPDATE_BATCH
        call per chunk; LPM tries (no batch support in the kernel) one update per entry."""
        table = self._map(name)
        ksize, vsize = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        if table.ttype != BPF_MAP_TYPE_HASH or count == 1:
            for i in range(count):
                table[table.Key.from_buffer_copy(keys, i * ksize)] = table.Leaf.from_buffer_copy(
                    values, i * vsize
                )
            return
        for start in range(0, count, BATCH):
            n = min(BATCH, count - start)
            ct_keys = (table.Key * n).from_buffer_copy(keys, start * ksize)
            ct_values = (table.Leaf * n).from_buffer_copy(values, start * vsize)
            table.items_update_batch(ct_keys, ct_values)

    def delete_raw(self, name: str, keys: bytes, count: int) -> None:
        table = self._map(name)
        ksize = ctypes.sizeof(table.Key)
        if table.ttype != BPF_MAP_TYPE_HASH or count == 1:
            for i in range(count):
                del table[table.Key.from_buffer_copy(keys, i * ksize)]
            return
        for start in range(0, count, BATCH):
            n = min(BATCH, count - start)
            table.items_delete_batch((table.Key * n).from_buffer_copy(keys, start * ksize))

    def hash_map(self, name: str) -> HashMap | None:
        """The kernel side of a table kept in a BPF hash map (None for other maps)."""
        table = self._map(name)
        if table.ttype != BPF_MAP_TYPE_HASH:
            return None
        return HashMap(
            table.map_fd, ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf), table.max_entries
        )

    def lookup_raw(self, name: str, key: bytes) -> bytes | None:
        table = self._map(name)
        try:
            value = table[table.Key.from_buffer_copy(key)]
        except KeyError:
            return None
        return bytes(value)

    def publish_ternary(
        self,
        name: str,
        entries: list[TableEntry],
        counters: dict[tuple, tuple[int, int]] | None = None,
    ) -> None:
        """Write a ternary table's entries (already in match order) to the idle half of its
        array, end them with an empty slot, then make that half the active one. `counters`
        carries direct counters over, by entry identity."""
        size = self.pipeline.table(name).size
        if len(entries) > size:
            raise ValueError(f"table {name} holds at most {size} entries, asked for {len(entries)}")
        table, active = self._map(name), self._map(f"{name}_active")
        base = size - active[ctypes.c_int(0)].value  # the idle half: 0 or size
        counters = counters or {}
        slots = [
            encode_ternary_entry(self.pipeline, e, *counters.get(e.match_key(), (0, 0)))
            for e in entries
        ]
        if len(entries) < size:
            slots.append(empty_ternary_slot(self.pipeline, name))
        for i, slot in enumerate(slots):
            table[ctypes.c_int(base + i)] = table.Leaf.from_buffer_copy(slot)
        active[ctypes.c_int(0)] = ctypes.c_uint32(base)
        self._ternary[name] = list(entries)

    def ternary_entries(self, name: str) -> list[TableEntry]:
        """The published entries of a ternary table, in match order."""
        return list(self._ternary[name])

    def ternary_value_offset(self, name: str) -> int:
        return ternary_entry_offsets(table_layout(self.pipeline, name))["v"]

    def ternary_raw(self, name: str) -> list[bytes]:
        """The active entries of a ternary table, in match order."""
        table, active = self._map(name), self._map(f"{name}_active")
        base = active[ctypes.c_int(0)].value
        return [bytes(table[ctypes.c_int(base + i)]) for i in range(len(self._ternary[name]))]

    def clear(self) -> None:
        """Remove every entry and restore the spec's default actions."""
        for t in self.pipeline.tables:
            if t.name in self._ternary:
                self.publish_ternary(t.name, [])
            else:
                self._map(t.name).clear()
        self.install_defaults()

    def install_defaults(self) -> None:
        """Write each table's spec default action into its `<table>_default` map."""
        for t in self.pipeline.tables:
            self.write_default(TableEntry(t.name, {}, t.default_action, {}, is_default=True))

    # ---- ports ----------------------------------------------------------------------------

    def set_port(self, ifindex: int, port: int) -> None:
        """Bind an interface to a port number, both ways."""
        self.set_ingress_port(ifindex, port)
        self.set_egress_port(port, ifindex)

    def set_ingress_port(self, ifindex: int, port: int) -> None:
        """Frames arriving on `ifindex` enter the pipeline as `port`."""
        ports = self._map("ports")
        ports[ports.Key(ifindex)] = ports.Leaf(port)

    def set_egress_port(self, port: int, ifindex: int) -> None:
        """Frames forwarded to `port` leave through `ifindex`."""
        tx = self._map("tx_ports")
        tx[tx.Key(port)] = tx.Leaf(ifindex)

    def set_tenant_over_quota(self, tenant: int, full: bool) -> None:
        """Mark a tenant at its flow-entry quota (its flow-table misses are dropped) or not."""
        flags = self._map(QUOTA_MAP)
        flags[ctypes.c_int(tenant)] = ctypes.c_uint8(int(full))

    # ---- counters -------------------------------------------------------------------------

    def counter(self, name: str) -> list[tuple[int, int]]:
        """(packets, bytes) per index of an indexed counter, summed over CPUs."""
        table = self._map(name)
        out = []
        for i in range(self.pipeline.counter(name).size):
            cells = table[table.Key(i)]
            out.append((sum(c.packets for c in cells), sum(c.bytes for c in cells)))
        return out

    def counter_cell(self, name: str, index: int) -> tuple[int, int]:
        table = self._map(name)
        cells = table[table.Key(index)]
        return sum(c.packets for c in cells), sum(c.bytes for c in cells)

    # ---- punted packets ----------------------------------------------------------------

    def open_punts(self, on_punt: Callable[[Punted], None], page_count: int = 256) -> None:
        """Deliver each punted frame to `on_punt`; perf-buffer losses are added to
        `punts_lost` (overflows inside the kernel are in the `punt_overflows` map)."""
        meta = punt_meta_layout(self.pipeline)

        def handle(_cpu: int, data: int, size: int) -> None:
            raw = ctypes.string_at(data, size)
            fields = meta.unpack(raw[: meta.size])
            frame = raw[meta.size : meta.size + fields.pop("len")]
            on_punt(Punted(fields, frame))

        def lost(count: int) -> None:
            self.punts_lost += count

        self._map("punts").open_perf_buffer(handle, page_cnt=page_count, lost_cb=lost)

    def punt_overflows(self) -> int:
        """Punts the kernel could not write to the perf buffer (it was full)."""
        table = self._map("punt_overflows")
        return sum(table[table.Key(0)])

    def poll_punts(self, timeout_ms: int = 0) -> None:
        self.bpf.perf_buffer_poll(timeout=timeout_ms)

    # ---- running --------------------------------------------------------------------------

    def run(
        self, frame: bytes, repeat: int = 1, ingress_ifindex: int | None = None
    ) -> ProgRunResult:
        return prog_test_run(self.fd, frame, repeat, ingress_ifindex)

    def attach(self, ifname: str, mode: str | None = None) -> str:
        """Attach to an interface in native mode, falling back to skb (generic) mode.

        `mode` = "native" or "skb" forces one; returns the mode used.
        """
        modes = [mode] if mode else ["native", "skb"]
        last_error = ""
        for m in modes:
            flags = XDP_FLAGS_DRV_MODE if m == "native" else XDP_FLAGS_SKB_MODE
            with _captured_stderr() as log_path:
                try:
                    self._bpf_cls.attach_xdp(
                        ifname.encode(), self.fn, flags | XDP_FLAGS_UPDATE_IF_NOEXIST
                    )
                except Exception as exc:
                    last_error = f"{exc}: {_first_error(log_path)}"
                    log.warning("XDP %s mode on %s failed: %s", m, ifname, last_error)
                    continue
                finally:
                    log_path.unlink(missing_ok=True)
            if m == "skb" and mode is None:
                log.warning("%s: native XDP unavailable, running in skb (generic) mode", ifname)
            self.attached[ifname] = flags
            return m
        raise XdpLoadError(f"could not attach XDP to {ifname}: {last_error}")

    def detach_stale(self, ifname: str) -> None:
        """Remove the program a previous run of ours left on `ifname` (a killed agent cannot
        detach); another program on it is not ours to remove: refuse to start."""
        for mode, prog in attached_programs(ifname):
            if prog.get("name") != PROGRAM_NAME:
                raise XdpLoadError(
                    f"{ifname} runs another XDP program ({prog.get('name')}, id {prog.get('id')})"
                    f"; cyberstar does not replace it: detach it (ip link set dev {ifname} xdp "
                    "off) or choose another interface"
                )
            with _captured_stderr() as log_path:
                try:
                    self._bpf_cls.remove_xdp(ifname.encode(), _MODE_FLAGS.get(mode, 0))
                finally:
                    log_path.unlink(missing_ok=True)
            log.info("%s: removed the XDP program (id %s) a previous run left", ifname, prog["id"])

    def detach_all(self) -> None:
        for ifname, flags in list(self.attached.items()):
            try:
                self._bpf_cls.remove_xdp(ifname.encode(), flags)
            except Exception as exc:  # the interface may be gone already
                log.warning("detaching XDP from %s: %s", ifname, exc)
            del self.attached[ifname]

    def close(self) -> None:
        self.detach_all()
        self.bpf.cleanup()
