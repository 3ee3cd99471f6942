"""Live packets per second through a veth pair in native XDP mode, per receiving core.

Topology, in a private namespace:

    generator ──► g0 ═ r0 [program under test, native XDP, NAPI thread pinned to --rx-cpu]
                  ▲                │ XDP_TX (Katran, the reflector)     │ XDP_REDIRECT (PP)
                  └─ [sink] ◄──────┘                                    ▼
                                                   t0 ═ s0 [sink: count, XDP_DROP]

The generator is an XDP program run by BPF_PROG_TEST_RUN in live-frames mode as if received on
g0, on its own core: it writes the next flow into each frame (as bench/xdp_drive.py does) and
returns XDP_TX, which transmits the frame on g0, so it arrives on r0. r0's NAPI runs in a
kernel thread (threaded NAPI) pinned to the receiving core, where the program under test runs;
its output crosses one more veth to a sink that counts and drops. Packets per second are
counted at the sink; the receiving core's busy share (from /proc/stat) says whether it was the
bottleneck, and the kernel's BPF statistics (run time / runs of the program on r0, enabled
for the run) give the program's own ns per packet in live traffic, whatever share of the
core it got. Ceilings of the harness, measured in the same run: XDP_DROP on r0 (no second hop),
and a reflector (XDP_TX on r0, the same second hop as the programs under test).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xdp_drive import FlowDriver

from cyberstar import netns
from cyberstar.xdp.testrun import prog_test_run

XDP_FLAGS_DRV_MODE = 1 << 2
_SINK_C = """
BPF_PERCPU_ARRAY(seen, __u64, 1);
int sink(struct xdp_md *ctx) {
    __u32 zero = 0;
    __u64 *n = seen.lookup(&zero);
    if (n)
        *n += 1;
    return XDP_DROP;
}
int reflect(struct xdp_md *ctx) { return XDP_TX; }
int drop(struct xdp_md *ctx) { return XDP_DROP; }
"""


def _attach(ifname: str, fd: int) -> None:
    from bcc.libbcc import lib

    if lib.bpf_attach_xdp(ifname.encode(), fd, XDP_FLAGS_DRV_MODE) < 0:
        raise RuntimeError(f"cannot attach XDP in native mode to {ifname}")


def _detach(ifname: str) -> None:
    from bcc.libbcc import lib

    lib.bpf_attach_xdp(ifname.encode(), -1, XDP_FLAGS_DRV_MODE)


def _prog_stats(ns: str) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program attached to r0, from the kernel's BPF stats."""
    out = netns.exec_in(ns, "bpftool", "-j", "net", "show", "dev", "r0").stdout
    prog_id = json.loads(out)[0]["xdp"][0]["id"]
    show = ["bpftool", "-j", "prog", "show", "id", str(prog_id)]
    info = json.loads(subprocess.run(show, capture_output=True, text=True, check=True).stdout)
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


@contextmanager
def bpf_stats() -> Iterator[None]:
    """The kernel's per-program run time and count (kernel.bpf_stats_enabled), on meanwhile."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(old)


def _cpu_times(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v) - idle, sum(v)
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


class LiveVeth:
    """The namespace, its veths and the sinks; `measure` runs one program on r0."""

    def __init__(self, frame: bytes, flows: list[bytes], gen_cpu: int, rx_cpu: int) -> None:
        from bcc import BPF

        self.ns = f"cs-live-{os.getpid()}"
        self.gen_cpu, self.rx_cpu = gen_cpu, rx_cpu
        netns.create(self.ns)
        try:
            for a, b in (("g0", "r0"), ("t0", "s0")):
                netns.ip(
                    "link",
                    "add",
                    a,
                    "numtxqueues",
                    "1",
                    "numrxqueues",
                    "1",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    b,
                    "numtxqueues",
                    "1",
                    "numrxqueues",
                    "1",
                    ns=self.ns,
                )
                for name in (a, b):
                    netns.ip("link", "set", name, "up", ns=self.ns)  # fmt: skip
            self.ifindex = {n: netns.ifindex(n, self.ns) for n in ("g0", "r0", "t0", "s0")}
            self.bpf = BPF(text=_SINK_C.encode())
            self.fds = {n: self.bpf.load_func(n.encode(), BPF.XDP).fd
                        for n in ("sink", "reflect", "drop")}  # fmt: skip
            with netns.entered(self.ns):
                _attach("s0", self.fds["sink"])
                _attach("g0", self.fds["sink"])
            self.generator = FlowDriver(frame, flows, generator=True)
        except Exception:
            netns.delete(self.ns)
            raise

    def sink_count(self) -> int:
        table = self.bpf[b"seen"]
        return sum(table[table.Key(0)])

    def _pin_napi(self) -> None:
        netns.exec_in(self.ns, "sh", "-c", "echo 0 > /sys/class/net/r0/threaded; "
                      "echo 1 > /sys/class/net/r0/threaded")  # fmt: skip
        out = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout
        pids = [
            int(ln.split()[0]) for ln in out.splitlines() if ln.split()[-1].startswith("napi/r0-")
        ]
        if not pids:
            raise RuntimeError("no NAPI thread for r0: threaded NAPI unavailable")
        for pid in pids:
            os.sched_setaffinity(pid, {self.rx_cpu})

    def measure(self, attach: Callable[[], None], seconds: float) -> dict[str, float]:
        """Attach a program to r0 (in the namespace) with `attach`, send for `seconds` after a
        warm-up, and return the sink's packets/s and the receiving core's busy share."""
        with netns.entered(self.ns):
            attach()
        try:
            self._pin_napi()
            stop = threading.Event()

            def generate() -> None:
                os.sched_setaffinity(0, {self.gen_cpu})
                with netns.entered(self.ns):
                    while not stop.is_set():
                        with contextlib.suppress(InterruptedError):  # a signal: send on
                            prog_test_run(self.generator.fn.fd, self.generator.frame, 1 << 20,
                                          ingress_ifindex=self.ifindex["g0"])  # fmt: skip

            thread = threading.Thread(target=generate)
            thread.start()
            try:
                time.sleep(0.5)
                c0, (b0, t0), w0 = self.sink_count(), _cpu_times(self.rx_cpu), time.monotonic()
                r0, n0 = _prog_stats(self.ns)
                time.sleep(seconds)
                c1, (b1, t1), w1 = self.sink_count(), _cpu_times(self.rx_cpu), time.monotonic()
                r1, n1 = _prog_stats(self.ns)
            finally:
                stop.set()
                thread.join()
        finally:
            with netns.entered(self.ns):
                _detach("r0")
        return {
            "pps": round((c1 - c0) / (w1 - w0)),
            "rx_core_busy": round((b1 - b0) / max(t1 - t0, 1), 2),
            "program_ns": round((r1 - r0) / max(n1 - n0, 1), 1),
        }

    def attach_fd(self, fd: int) -> Callable[[], None]:
        return lambda: _attach("r0", fd)

    def close(self) -> None:
        self.generator.close()
        self.bpf.cleanup()
        netns.delete(self.ns)
