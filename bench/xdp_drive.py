"""A flow driver for BPF_PROG_TEST_RUN: every repetition is a different flow.

The kernel's test run hands a program the same buffer `repeat` times, so on its own it can only
measure one cache-hot flow (and an encapsulating program such as Katran's sees its own output
from the second repetition on). The driver is a small XDP program run in its place: each
repetition it restores the frame (headers from a template, the data pointer moved back if the
previous run pushed headers in front), writes the next flow's addresses and ports from an array
holding the flows in the order given (shuffle it for random order), and tail-calls the program
under test. Its own cost is measured by tail-calling an empty XDP_DROP program with the same
flows (the floor), and subtracted.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from cyberstar.xdp.testrun import prog_test_run

HEADERS = 54  # Ethernet + IPv4 (no options) + TCP: what the driver restores
_IP_SRC, _TCP_SPORT = 26, 34

_DRIVER_C = """
#define FRAME_LEN %(frame_len)d
#define NFLOWS %(nflows)d
struct flow { __u32 src; __u32 dst; __u16 sport; __u16 dport; };
struct headers { __u64 w[7]; };  // 56 bytes: the template's first 54 and two of the payload
BPF_ARRAY(flows, struct flow, NFLOWS);
BPF_ARRAY(template, struct headers, 1);
BPF_PERCPU_ARRAY(cursor, __u32, 1);
BPF_PROG_ARRAY(target, 1);

int drive(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    int grown = (int)(data_end - data) - FRAME_LEN;
    if (grown) {
        if (bpf_xdp_adjust_head(ctx, grown))
            return XDP_ABORTED;
        data = (void *)(long)ctx->data;
        data_end = (void *)(long)ctx->data_end;
    }
    if (data + 56 > data_end)
        return XDP_ABORTED;
    __u32 zero = 0;
    struct headers *t = template.lookup(&zero);
    __u32 *c = cursor.lookup(&zero);
    if (!t || !c)
        return XDP_ABORTED;
    __u32 i = *c;
    *c = i + 1 < NFLOWS ? i + 1 : 0;
    struct flow *f = flows.lookup(&i);
    if (!f)
        return XDP_ABORTED;
    __u64 *w = data;
    #pragma unroll
    for (int k = 0; k < 7; k++)
        w[k] = t->w[k];
    *(__u32 *)(data + 26) = f->src;
    *(__u32 *)(data + 30) = f->dst;
    *(__u16 *)(data + 34) = f->sport;
    *(__u16 *)(data + 36) = f->dport;
#ifdef GENERATOR
    return XDP_TX;
#else
    target.call(ctx, 0);
    return XDP_ABORTED;
#endif
}
"""

_EMPTY_C = "int xdp_drop(struct xdp_md *ctx) { return XDP_DROP; }"


def pack_flow(src: str, dst: str, sport: int, dport: int) -> bytes:
    """One driver flow: addresses and ports in network order, as they sit in the frame."""
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


class FlowDriver:
    """The driver for one frame template and one list of flows; `attach_type` must equal the
    target program's expected attach type (the kernel refuses tail calls across them). As a
    `generator` it returns XDP_TX instead of calling a program: run in live-frames mode, it
    sends the flows out of an interface (bench/xdp_live.py)."""

    def __init__(
        self, frame: bytes, flows: list[bytes], attach_type: int = -1, generator: bool = False
    ) -> None:
        from bcc import BPF

        if len(frame) < HEADERS + 2:
            raise ValueError(f"the frame template needs at least {HEADERS + 2} bytes")
        self.frame = frame
        self.count = len(flows)
        self.bpf = BPF(
            text=(_DRIVER_C % {"frame_len": len(frame), "nflows": len(flows)}).encode(),
            cflags=["-Wno-unused-function", *(["-DGENERATOR"] if generator else [])],
        )
        self.fn = self.bpf.load_func(b"drive", BPF.XDP, attach_type=attach_type)
        self._empty = BPF(text=_EMPTY_C.encode())
        self.empty_fd = self._empty.load_func(b"xdp_drop", BPF.XDP, attach_type=attach_type).fd
        tpl = self.bpf[b"template"]
        tpl[ctypes.c_int(0)] = tpl.Leaf.from_buffer_copy(frame[:56])
        table = self.bpf[b"flows"]
        for start in range(0, len(flows), 65536):
            chunk = flows[start : start + 65536]
            keys = (table.Key * len(chunk))(*range(start, start + len(chunk)))
            values = (table.Leaf * len(chunk)).from_buffer_copy(b"".join(chunk))
            table.items_update_batch(keys, values)

    def target(self, prog_fd: int) -> None:
        progs = self.bpf[b"target"]
        progs[ctypes.c_int(0)] = ctypes.c_int(prog_fd)

    def run(self, prog_fd: int, repeat: int) -> tuple[str, int]:
        """One test run of the driver tail-calling `prog_fd` `repeat` times: (the last verdict,
        mean ns per repetition, the driver's own cost included)."""
        self.target(prog_fd)
        r = prog_test_run(self.fn.fd, self.frame, repeat)
        return r.action, r.duration_ns

    def close(self) -> None:
        self.bpf.cleanup()
        self._empty.cleanup()
