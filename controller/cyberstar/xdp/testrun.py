"""BPF_PROG_TEST_RUN: run a loaded XDP program on a frame in the kernel, without a NIC.

Called through the bpf(2) system call directly (BCC's Python API does not wrap it).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from cyberstar.pipeline.pp import CONSTANTS
from cyberstar.xdp._live_frames import MIN_FRAME as _C_MIN_FRAME
from cyberstar.xdp._live_frames import run_replay as _run_replay

_SYS_BPF = 321  # x86_64
_BPF_PROG_TEST_RUN = 10
# XDP test runs take at most a page minus XDP headroom and skb_shared_info: the pipeline's
# maximum frame size is that limit.
MAX_FRAME = CONSTANTS["MAX_FRAME"]
# The kernel refuses XDP test frames shorter than an Ethernet header (14 bytes); the C batch
# runner checks the same bound, and is its one definition.
MIN_FRAME = _C_MIN_FRAME

XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}

_libc = ctypes.CDLL(None, use_errno=True)


class _TestAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class ProgRunResult:
    action: str
    data: bytes
    duration_ns: int  # mean per repetition, as the kernel reports it


class _XdpMd(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


def prog_test_run(
    prog_fd: int, frame: bytes, repeat: int = 1, ingress_ifindex: int | None = None
) -> ProgRunResult:
    """Run the program on `frame`. With `ingress_ifindex`, run it in live-frames mode as if the
    frame had arrived on that interface: redirects really transmit, XDP_PASS reaches the stack
    (kernel ≥ 5.18), and there is no output frame (`data` is empty)."""
    _check_frame(frame)
    data_in = ctypes.create_string_buffer(frame, len(frame))
    attr = _TestAttr(
        prog_fd=prog_fd, data_size_in=len(frame), data_in=ctypes.addressof(data_in), repeat=repeat
    )
    data_out = None
    if ingress_ifindex is not None:  # live frames give no output frame: no buffer for one
        ctx = _XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
        attr.ctx_in = ctypes.addressof(ctx)
        attr.ctx_size_in = ctypes.sizeof(ctx)
        attr.flags = BPF_F_TEST_XDP_LIVE_FRAMES
    else:
        data_out = ctypes.create_string_buffer(MAX_FRAME + 256)
        attr.data_out = ctypes.addressof(data_out)
        attr.data_size_out = len(data_out)
    rc = _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    action = XDP_ACTIONS.get(attr.retval, f"XDP_{attr.retval}")
    out = data_out.raw[: attr.data_size_out] if data_out is not None else b""
    return ProgRunResult(action, out, attr.duration)


def run_replay(prog_fd: int, slots: object, slot_size: int, frames: list[bytes], ifindex: int,
               run: int) -> list[int]:  # fmt: skip
    """Run the frames through the program in one live-frames test run numbered `run` (not 0),
    as if they arrived on `ifindex`, in order, without the GIL (`_live_frames.c`); `slots` is
    its memory-mapped `replay_frames` map, with one slot more than the frames. 0 or the errno,
    per frame: the frames a failed or interrupted run did not reach get its errno."""
    ran, err = _run_replay(prog_fd, slots, slot_size, frames, ifindex, run)  # checks the sizes
    if ran == len(frames):
        return [0] * ran
    return [0] * ran + [err or errno.EIO] * (len(frames) - ran)


def _check_frame(frame: bytes) -> None:
    if not MIN_FRAME <= len(frame) <= MAX_FRAME:
        raise ValueError(
            f"XDP test runs take frames of {MIN_FRAME}..{MAX_FRAME} bytes, found {len(frame)}"
        )
