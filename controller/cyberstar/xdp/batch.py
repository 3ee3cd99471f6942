"""Map updates, deletes and walks through bpf(2), saying which entry failed and why.

BCC's calls raise without saying which entry of a batch failed, and its batch update takes no
flags. Here an update of many entries is one BPF_MAP_UPDATE_ELEM call each with BPF_NOEXIST
(INSERT) or BPF_EXIST (MODIFY) — the kernel's batch update takes no such flags — and reports
each refused entry with its errno; a delete batch stops at the first missing key and says how
many it deleted; a walk reads a hash map chunk by chunk. The P4Runtime device builds INSERT,
MODIFY and DELETE on these, one result per entry, with no copy of the table in user space.
The update loop is in C (`_bpf_update.c`): through ctypes each entry cost ~1 µs more than its
system call, and the loop runs without the GIL.
"""

from __future__ import annotations

import ctypes
import errno
import os

from cyberstar.xdp._bpf_update import update as _update

_SYS_BPF = 321  # x86_64
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_DELETE_BATCH = 27
BPF_NOEXIST, BPF_EXIST = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def _address(buf: bytes | ctypes.Array) -> int:
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
    return ctypes.addressof(buf)


def _call(cmd: int, attr: _BatchAttr) -> int:
    """0, or the errno of the entry the kernel stopped at (attr.count: entries processed)."""
    rc = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return ctypes.get_errno() if rc != 0 else 0


def update(
    map_fd: int, keys: bytes, values: bytes, ksize: int, vsize: int, count: int, flags: int
) -> list[tuple[int, int]]:
    """Write the `count` packed `keys`/`values` with `flags` (BPF_NOEXIST: only new keys,
    BPF_EXIST: only present ones); returns (position, errno) of each entry refused."""
    return _update(map_fd, keys, values, ksize, vsize, count, flags)


def delete(map_fd: int, keys: bytes, ksize: int, start: int, count: int) -> tuple[int, int]:
    """Delete entries `start`..`start+count` of the packed `keys`; (deleted, errno or 0)."""
    attr = _BatchAttr(keys=_address(keys) + start * ksize, count=count, map_fd=map_fd)
    err = _call(BPF_MAP_DELETE_BATCH, attr)
    return (count, 0) if not err else (attr.count, err)


class Walk:
    """A hash map read chunk by chunk (BPF_MAP_LOOKUP_BATCH with a resume token): no buffer of
    the map's size, and entries changed between chunks are seen or not, never twice."""

    def __init__(self, map_fd: int, ksize: int, vsize: int, chunk: int) -> None:
        self.map_fd, self.ksize, self.vsize, self.chunk = map_fd, ksize, vsize, chunk
        self._keys = ctypes.create_string_buffer(ksize * chunk)
        self._values = ctypes.create_string_buffer(vsize * chunk)
        self._token_in = ctypes.c_uint32(0)
        self._token_out = ctypes.c_uint32(0)
        self._started = False
        self.done = False

    def next(self) -> tuple[bytes, bytes, int]:
        """The next chunk's packed keys and values and its entry count (0 when done)."""
        if self.done:
            return b"", b"", 0
        attr = _BatchAttr(
            in_batch=ctypes.addressof(self._token_in) if self._started else 0,
            out_batch=ctypes.addressof(self._token_out),
            keys=ctypes.addressof(self._keys), values=ctypes.addressof(self._values),
            count=self.chunk, map_fd=self.map_fd,
        )  # fmt: skip
        err = _call(BPF_MAP_LOOKUP_BATCH, attr)
        if err and err != errno.ENOENT:
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        self.done = err == errno.ENOENT
        self._started = True
        self._token_in.value = self._token_out.value
        n = attr.count
        return self._keys.raw[: n * self.ksize], self._values.raw[: n * self.vsize], n
