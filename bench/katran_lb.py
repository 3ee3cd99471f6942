"""Katran's balancer as the peer of the fast-path benchmark: built from a Katran checkout with
Debian's clang, loaded with bpftool, configured through its maps as katran's own library does.

Nothing of Katran is kept in this repository: `build(src)` compiles `katran/lib/bpf/balancer.bpf.c`
of the checkout given on the command line the way its `build_bpf_modules_opensource.sh` does
(clang to LLVM IR, llc to BPF), and `KatranLb` loads the object with `bpftool prog loadall`
into a private bpffs directory. Its configuration is the one of an established flow: VIPs,
reals, the default gateway MAC, and a per-CPU LRU connection table (`lru_mapping`, one
`lru_hash` map per CPU, as `KatranLb::initLrus` creates) holding the flows.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

BPF_XDP = 37  # expected attach type libbpf gives SEC("xdp") programs
MAX_VIPS = 512  # balancer_consts.h
XDP_TOTAL_CNTR, XDP_TX_CNTR = 16, 17
LRU_MISS_CNTR, FALLBACK_LRU_CNTR = 1, 3
FLOW_KEY = struct.Struct("<16s16s4sB3x")  # struct flow_key: src, dst, ports, proto
REAL_POS_LRU = struct.Struct("<I4xQ")  # struct real_pos_lru: pos, atime

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
_lib.bpf_map_update_elem.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_ulonglong,
]
_lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_lib.bpf_map_update_batch.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
    ctypes.c_void_p,
]  # fmt: skip


class KatranError(RuntimeError):
    pass


def possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def build(src: Path, out_dir: Path) -> Path:
    """Compile Katran's balancer from checkout `src` into `out_dir`/balancer.bpf.o."""
    bpf_dir = src / "katran" / "lib" / "bpf"
    if not (bpf_dir / "balancer.bpf.c").is_file():
        raise KatranError(f"{src} is not a Katran checkout: no katran/lib/bpf/balancer.bpf.c")
    include = out_dir / "include"
    include.mkdir(parents=True, exist_ok=True)
    for header in (src / "katran" / "lib" / "linux_includes").iterdir():
        shutil.copy(header, include)
    obj = out_dir / "balancer.bpf.o"
    clang = subprocess.Popen(
        ["clang", f"-I{src}", f"-I{include}", "-DDEBUG", "-D__KERNEL__",
         "-Wno-unused-value", "-Wno-pointer-sign", "-Wno-compare-distinct-pointer-types",
         "-O2", "-emit-llvm", "-c", "-g", str(bpf_dir / "balancer.bpf.c"), "-o", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    llc = subprocess.run(
        ["llc", "-march=bpf", "-filetype=obj", "-o", str(obj)],
        stdin=clang.stdout, capture_output=True, text=True,
    )  # fmt: skip
    _, clang_err = clang.communicate()
    if clang.returncode or llc.returncode:
        raise KatranError(
            f"building Katran failed: {clang_err.decode()[-2000:]}{llc.stderr[-2000:]}"
        )
    return obj


def _bpftool(*args: str) -> None:
    proc = subprocess.run(["bpftool", *args], capture_output=True, text=True)
    if proc.returncode:
        raise KatranError(f"bpftool {' '.join(args)}: {proc.stderr.strip()[-2000:]}")


def _ip(addr: str) -> bytes:
    return socket.inet_aton(addr)


class KatranLb:
    """A loaded balancer.bpf.o with its maps pinned under a private bpffs directory."""

    def __init__(self, obj: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cyberstar-katran-", dir="/sys/fs/bpf"))
        try:
            _bpftool("prog", "loadall", str(obj), str(self.root / "prog"), "type", "xdp",
                     "pinmaps", str(self.root / "maps"))  # fmt: skip
            self.fd = self._obj_get(self.root / "prog" / "balancer_ingress")
        except Exception:
            self.close()
            raise
        self.ncpus = possible_cpus()
        self._lru_fds: list[int] = []

    def _obj_get(self, path: Path) -> int:
        fd = _lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            raise KatranError(f"cannot open {path}: {os.strerror(ctypes.get_errno())}")
        return fd

    def map_fd(self, name: str) -> int:
        return self._obj_get(self.root / "maps" / name)

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        fd = self.map_fd(name)
        try:
            if _lib.bpf_map_update_elem(fd, key, value, 0):
                raise KatranError(f"update of {name}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)

    def configure(
        self, gateway_mac: bytes, vips: list[str], reals: list[str], lru_size: int
    ) -> None:
        """VIPs `vip:80/TCP` (vip_num = index), reals 1..len(reals), the gateway MAC, and one
        LRU connection table of `lru_size` entries per CPU."""
        self._update("ctl_array", struct.pack("<I", 0), gateway_mac.ljust(8, b"\0"))
        for num, vip in enumerate(vips):
            key = _ip(vip).ljust(16, b"\0") + struct.pack("!H", 80) + bytes([6]) + b"\0"
            self._update("vip_map", key, struct.pack("<II", 0, num))
        for pos, real in enumerate(reals, start=1):
            self._update("reals", struct.pack("<I", pos), _ip(real).ljust(16, b"\0") + bytes(4))
        lru_mapping = self.map_fd("lru_mapping")
        try:
            for cpu in range(self.ncpus):
                path = self.root / f"lru{cpu}"
                _bpftool("map", "create", str(path), "type", "lru_hash", "key", str(FLOW_KEY.size),
                         "value", str(REAL_POS_LRU.size), "entries", str(lru_size),
                         "name", f"katran_lru{cpu}")  # fmt: skip
                fd = self._obj_get(path)
                self._lru_fds.append(fd)
                if _lib.bpf_map_update_elem(
                    lru_mapping, struct.pack("<I", cpu), struct.pack("<I", fd), 0
                ):
                    raise KatranError(f"lru_mapping[{cpu}]: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(lru_mapping)

    def add_flows(self, flows: list[tuple[str, str, int, int]], real_count: int) -> None:
        """Established TCP flows (src, dst, sport, dport) in every CPU's LRU table, each mapped
        to a real as if consistent hashing had chosen it."""
        keys = b"".join(
            FLOW_KEY.pack(_ip(s).ljust(16, b"\0"), _ip(d).ljust(16, b"\0"),
                          struct.pack("!HH", sp, dp), 6)
            for s, d, sp, dp in flows
        )  # fmt: skip
        values = b"".join(REAL_POS_LRU.pack(1 + i % real_count, 0) for i in range(len(flows)))
        for fd in self._lru_fds:
            for start in range(0, len(flows), 65536):
                n = min(65536, len(flows) - start)
                count = ctypes.c_uint32(n)
                k = ctypes.create_string_buffer(
                    keys[start * FLOW_KEY.size : (start + n) * FLOW_KEY.size]
                )
                v = ctypes.create_string_buffer(
                    values[start * REAL_POS_LRU.size : (start + n) * REAL_POS_LRU.size]
                )
                if _lib.bpf_map_update_batch(fd, k, v, ctypes.byref(count), None):
                    raise KatranError(f"LRU batch update: {os.strerror(ctypes.get_errno())}")

    def stat(self, index: int) -> tuple[int, int]:
        """(v1, v2) of `stats[index]` summed over CPUs."""
        fd = self.map_fd("stats")
        try:
            buf = ctypes.create_string_buffer(16 * self.ncpus)
            if _lib.bpf_map_lookup_elem(fd, struct.pack("<I", index), buf):
                raise KatranError(f"stats[{index}]: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)
        cells = [struct.unpack_from("<QQ", buf.raw, 16 * c) for c in range(self.ncpus)]
        return sum(c[0] for c in cells), sum(c[1] for c in cells)

    def counters(self) -> dict[str, int]:
        """Packets seen, sent (XDP_TX), LRU misses of non-SYN packets, fallback-LRU uses."""
        return {
            "total": self.stat(MAX_VIPS + XDP_TOTAL_CNTR)[0],
            "tx": self.stat(MAX_VIPS + XDP_TX_CNTR)[0],
            "lru_miss_non_syn": self.stat(MAX_VIPS + LRU_MISS_CNTR)[1],
            "fallback_lru": self.stat(MAX_VIPS + FALLBACK_LRU_CNTR)[0],
        }

    def close(self) -> None:
        for fd in self._lru_fds if hasattr(self, "_lru_fds") else ():
            os.close(fd)
        if hasattr(self, "fd"):
            os.close(self.fd)
        shutil.rmtree(self.root, ignore_errors=True)
