"""Load the generated XDP program with BCC, check its maps against the spec, and drive them."""

from __future__ import annotations

import ctypes
import itertools
import json
import logging
import mmap
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cyberstar.codegen.xdp import QUOTA_MAP, size_macro
from cyberstar.codegen.xdp_layout import (
    CLOCK_SAMPLE,
    HIT_CLOCK,
    METER_CONFIG,
    PORT_SLOT,
    PORT_SLOTS,
    REPLAY_FRAMES,
    REPLAY_HEADER,
    TableKind,
    punt_meta_layout,
    table_layout,
)
from cyberstar.errors import RuntimeFailure
from cyberstar.paths import xdp_source
from cyberstar.pipeline.frames import Punted
from cyberstar.pipeline.meters import Gcra, MeterConfig, gcra_pair
from cyberstar.pipeline.model import Pipeline
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.xdp.slots import SlotTable, new_seed
from cyberstar.xdp.tables import TableMaps
from cyberstar.xdp.testrun import MIN_FRAME, ProgRunResult, prog_test_run, run_replay

log = logging.getLogger(__name__)

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0  # never replace a program attached meanwhile
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
_MODE_FLAGS = {1: XDP_FLAGS_DRV_MODE, 2: XDP_FLAGS_SKB_MODE, 3: XDP_FLAGS_HW_MODE}  # ip's modes
PROGRAM_NAME = "pp_xdp"
CLOCK_SAMPLER = "pp_clock_sample"
HZ_CHOICES = (100, 250, 300, 1000)  # the kernel's CONFIG_HZ choices
LOOPBACK_IFINDEX = 1  # in every netns; test runs without live frames see frames arrive there


CLOCK_MONOTONIC_COARSE = 6  # the clock bpf_ktime_get_coarse_ns reads


def coarse_now_ns() -> int:
    """Now on the data plane's clock (what `last_hit_ns` is stamped with)."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


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


class XdpProgram(TableMaps):
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
                seeds = {
                    t.name: new_seed() for t in pipeline.tables
                    if table_layout(pipeline, t.name).kind is TableKind.HASH
                }  # fmt: skip
                sizes += [f"-D{t.upper()}_SEED={seed}ULL" for t, seed in seeds.items()]
                self.bpf = BPF(text=self.source.encode(), cflags=["-Wno-unused-function", *sizes])
                self.fn = self.bpf.load_func(PROGRAM_NAME.encode(), BPF.XDP)
            except Exception as exc:
                raise XdpLoadError(
                    f"could not load the XDP program: {exc}; first error: "
                    f"{_first_error(log_path)} (full compiler/verifier log: {log_path})"
                ) from None
        log_path.unlink(missing_ok=True)
        self._check_layouts()
        self._init_tables(seeds)
        self._open_replay()
        self._port_slots: dict[int, int] = {}  # slot of `ports` → the ifindex it holds
        self._configured_meters: dict[str, set[int]] = {}
        self.calibrate_hit_clock()
        self.live_frame_limit = self._live_frame_limit()
        self.attached: dict[str, int] = {}
        self.punts_lost = 0

    def _map(self, name: str):
        return self.bpf[name.encode()]

    def hash_map(self, name: str) -> SlotTable | None:
        """The kernel side of an exact table kept in slots of a BPF array, whose values are
        the entry values (None for other kinds of table)."""
        return self.slot_tables.get(name)

    @property
    def fd(self) -> int:
        return self.fn.fd

    def _check_layouts(self) -> None:
        """Refuse to run if the compiled maps do not have the spec's layouts."""
        for t in self.pipeline.tables:
            expected = self.map_sizes(table_layout(self.pipeline, t.name))
            table = self._map(t.name)
            found = (ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf))
            if found != expected:
                raise XdpLoadError(
                    f"map {t.name}: key/value sizes {found} differ from the spec's "
                    f"{expected}; regenerate with `cyberstar build`"
                )

    # ---- ports ----------------------------------------------------------------------------

    def set_port(self, ifindex: int, port: int) -> None:
        """Bind an interface to a port number, both ways."""
        self.set_ingress_port(ifindex, port)
        self.set_egress_port(port, ifindex)

    def set_ingress_port(self, ifindex: int, port: int) -> None:
        """Frames arriving on `ifindex` enter the pipeline as `port`: in the direct-mapped
        `ports` array when its slot is free or already this interface's, else in the spill
        hash."""
        slot = ifindex % PORT_SLOTS
        if self._port_slots.setdefault(slot, ifindex) == ifindex:
            ports = self._map("ports")
            raw = PORT_SLOT.pack({"ifindex": ifindex, "port": port})
            ports[ctypes.c_int(slot)] = ports.Leaf.from_buffer_copy(raw)
        else:
            spill = self._map("ports_spill")
            spill[spill.Key(ifindex)] = spill.Leaf(port)

    # ---- meters ---------------------------------------------------------------------------

    def set_meter(self, name: str, index: int, config: MeterConfig | None) -> None:
        """Configure a meter cell (None: never configured, green). Its state stays: a new
        rate applies from the bucket's current level."""
        peak, committed = gcra_pair(config) if config else (Gcra(0, 0), Gcra(0, 0))
        raw = METER_CONFIG.pack({
            "peak_increment": peak.increment, "peak_depth": peak.depth,
            "committed_increment": committed.increment, "committed_depth": committed.depth,
        })  # fmt: skip
        cells = self._map(name)
        cells[ctypes.c_int(index)] = cells.Leaf.from_buffer_copy(raw)
        configured = self._configured_meters.setdefault(name, set())
        if config is None:
            configured.discard(index)
        else:
            configured.add(index)

    def clear(self) -> None:
        """Remove every entry, restore the default actions, unconfigure every meter cell."""
        super().clear()
        for name, cells in self._configured_meters.items():
            for index in list(cells):
                self.set_meter(name, index, None)

    # ---- time ---------------------------------------------------------------------------

    def calibrate_hit_clock(self, seconds: float = 0.05) -> None:
        """Let the data plane turn jiffies into CLOCK_MONOTONIC_COARSE nanoseconds: measure the
        tick (two samples `seconds` apart, snapped to a CONFIG_HZ choice) and the offset."""
        sampler = self.bpf.load_func(CLOCK_SAMPLER.encode(), self._bpf_cls.XDP)
        table = self._map("clock_sample")

        def sample() -> dict[str, int]:
            prog_test_run(sampler.fd, bytes(14))
            return CLOCK_SAMPLE.unpack(bytes(table[ctypes.c_int(0)]))

        first = sample()
        time.sleep(seconds)
        last = sample()
        ticks = max(1, last["jiffies"] - first["jiffies"])
        hz = 1e9 * ticks / max(1, last["coarse_ns"] - first["coarse_ns"])
        tick_ns = 1_000_000_000 // min(HZ_CHOICES, key=lambda c: abs(c - hz))
        # jiffies start near 2^32 - 300 HZ: the offset wraps, as the data plane's u64 sum does
        offsets = sorted(
            (s["coarse_ns"] - s["jiffies"] * tick_ns) % (1 << 64) for s in (first, last, sample())
        )
        clock = self._map("hit_clock")
        raw = HIT_CLOCK.pack({"tick_ns": tick_ns, "offset_ns": offsets[1]})
        clock[ctypes.c_int(0)] = clock.Leaf.from_buffer_copy(raw)

    def _live_frame_limit(self) -> int:
        """The longest frame a live-frames test run takes on this kernel: MAX_FRAME, less the
        page header recent kernels keep in front of each live frame (3 408 bytes on 6.18).
        Found by running the clock sampler (XDP_DROP: nothing leaves) on frames of the lengths
        tried, as if they arrived on the loopback."""
        sampler = self.bpf.load_func(CLOCK_SAMPLER.encode(), self._bpf_cls.XDP)
        lo, hi = MIN_FRAME, self.pipeline.constants["MAX_FRAME"]
        while lo < hi:
            size = (lo + hi + 1) // 2
            try:
                prog_test_run(sampler.fd, bytes(size), ingress_ifindex=LOOPBACK_IFINDEX)
                lo = size
            except OSError:
                hi = size - 1
        return lo

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

    def punt_fds(self) -> list[int]:
        """The punt buffer's file descriptors (one ring per CPU), readable when punts wait:
        an event loop watches them and calls `read_punts`, where a thread would block in
        `poll_punts` and then have to wake the loop."""
        from bcc.libbcc import lib

        return [lib.perf_reader_fd(reader) for reader in self.bpf.perf_buffers.values()]

    def read_punts(self) -> None:
        """Deliver every punt waiting in the buffer to `on_punt`, without waiting."""
        self.bpf.perf_buffer_consume()

    # ---- running --------------------------------------------------------------------------

    def run(
        self, frame: bytes, repeat: int = 1, ingress_ifindex: int | None = None
    ) -> ProgRunResult:
        return prog_test_run(self.fd, frame, repeat, ingress_ifindex)

    def _open_replay(self) -> None:
        """Map the slots PacketOut batches go through (`replay_take` in the program)."""
        slots = self._map("replay_frames")
        self._slot_size = ctypes.sizeof(slots.Leaf)
        expected = REPLAY_HEADER + self.pipeline.constants["MAX_FRAME"]
        if self._slot_size != expected or slots.max_entries != REPLAY_FRAMES + 1:
            raise XdpLoadError(
                f"map replay_frames: {slots.max_entries} slots of {self._slot_size} bytes, "
                f"expected {REPLAY_FRAMES + 1} of {expected}; regenerate with `cyberstar build`"
            )
        length = -(-self._slot_size * slots.max_entries // mmap.PAGESIZE) * mmap.PAGESIZE
        self._slots = mmap.mmap(slots.map_fd, length, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
        self._replay_lock = threading.Lock()  # one batch in the slots at a time
        self._replay_runs = 0

    def run_live(self, frames: list[bytes], ifindexes: list[int]) -> list[int]:
        """Each frame through the program as if it arrived on its ifindex, in order: 0 or the
        errno per frame. Consecutive frames of one ifindex go REPLAY_FRAMES at a time through
        one live-frames test run (`testrun.run_replay`). A run that repeats costs two RCU grace
        periods (~24 ms) unless the program is attached to an interface, as a PP node's is: a
        program attached nowhere runs each frame alone."""
        count = len(frames)
        if count != len(ifindexes):
            raise ValueError(f"{count} frames and {len(ifindexes)} ifindexes: expected one each")
        if not count:
            return []
        if not self.attached:
            return [self._replay([f], i)[0] for f, i in zip(frames, ifindexes, strict=True)]
        out: list[int] = []
        start = 0
        with self._replay_lock:
            for ifindex, group in itertools.groupby(ifindexes):
                end = start + sum(1 for _ in group)
                for first in range(start, end, REPLAY_FRAMES):
                    out += self._replay(frames[first : min(first + REPLAY_FRAMES, end)], ifindex)
                start = end
        return out

    def _replay(self, frames: list[bytes], ifindex: int) -> list[int]:
        self._replay_runs = self._replay_runs % 0xFFFFFFFF + 1  # 1..2^32-1
        return run_replay(self.fd, self._slots, self._slot_size, frames, ifindex,
                          self._replay_runs)  # fmt: skip

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
        with self._replay_lock:
            self._slots.close()
        for table in self.slot_tables.values():
            table.close()
        self.bpf.cleanup()
