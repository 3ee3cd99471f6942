"""bmv2 (simple_switch_grpc) as a target, driven over P4Runtime.

The generated P4 is compiled with p4c-bm2-ss (cached by source hash); the switch runs in its own
network namespace with veth ports 0..N-1, P4Runtime on a unix socket. A frame is sent into its
ingress port; the `verdicts` counter (read over P4Runtime) tells when the switch has decided, and
the frame is then collected from the egress veth (forward) or the PacketIn stream (punt, and
`pass`, which bmv2 has no host stack for: it reaches the CPU port with reason "host").
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from finsy.proto import p4r

from cyberstar import netns
from cyberstar.codegen.p4info import parse_p4info_text
from cyberstar.errors import RuntimeFailure, TargetUnavailable
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.p4rt.codec import update
from cyberstar.p4tools import compile_p4, require_tools, switch_command
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.subprocs import tied_to_parent
from cyberstar.targets import Outcome

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
VLAN_ETHERTYPES = (b"\x81\x00", b"\x88\xa8")
DEFAULT_PORTS = 8
VETH_MTU = 9000  # jumbo: frames between MAX_FRAME and this reach the switch, which drops them
PACKET_OUT_FIELDS = {f.name: i for i, f in enumerate(PIPELINE.packet_out.fields, start=1)}


def lost_on_veth(frame: bytes) -> bool:
    """Linux untags every 802.1Q/802.1ad frame it receives before any packet socket (bmv2's
    libpcap) sees it, and drops one whose tag is cut short."""
    return frame[12:14] in VLAN_ETHERTYPES and len(frame) < 18


def with_vlan_tag(frame: bytes, ancillary: list[tuple[int, int, bytes]]) -> bytes:
    """Put back the 802.1Q tag the kernel moved out of a received frame (it untags every frame
    before packet sockets see it and reports the tag in PACKET_AUXDATA)."""
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 20:
            status, _len, _snap, _mac, _net, tci, tpid = struct.unpack_from("=IIIHHHH", data)
            if status & TP_STATUS_VLAN_VALID:
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = 0x8100
                return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


class Bmv2Target:
    name = "bmv2"

    def __init__(self, ports: int = DEFAULT_PORTS) -> None:
        if os.geteuid() != 0:
            raise TargetUnavailable("the bmv2 target creates network namespaces: run as root")
        switch, _ = require_tools()
        self.compiled = compile_p4()
        self.p4info = parse_p4info_text(self.compiled.p4info_path.read_text())
        self.device_config = self.compiled.json_path.read_bytes()
        self.ns = f"cs-bmv2-{os.getpid()}"
        self.workdir = Path(tempfile.mkdtemp(prefix="cyberstar-bmv2-"))
        self.ports = ports
        self.sockets: dict[int, socket.socket] = {}
        self.proc: subprocess.Popen | None = None
        self.client: P4RuntimeClient | None = None
        try:
            self._start(switch)
        except BaseException:
            self.close()
            raise

    def _start(self, switch: str) -> None:
        netns.create(self.ns)
        for port in range(self.ports):
            netns.veth(f"sw{port}", f"host{port}", self.ns, self.ns, mtu=VETH_MTU)
        with netns.entered(self.ns):
            for port in range(self.ports):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
                s.bind((f"host{port}", 0))
                s.setblocking(False)
                self.sockets[port] = s
        grpc_sock = self.workdir / "p4rt.sock"
        cmd = switch_command(
            switch,
            self.ns,
            {port: f"sw{port}" for port in range(self.ports)},
            f"unix://{grpc_sock}",
            device_id=1,
            workdir=self.workdir,
            cpu_port=PIPELINE.constants["CPU_PORT"],
            log_level="trace",
        )
        self.log_path = self.workdir / "switch.out"
        self.proc = subprocess.Popen(
            tied_to_parent(cmd), stdout=self.log_path.open("w"), stderr=subprocess.STDOUT
        )
        self.client = P4RuntimeClient(f"unix://{grpc_sock}", device_id=1, election_id=1)
        deadline = time.monotonic() + 20
        while not grpc_sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"simple_switch_grpc did not start; its output: {self.log_path}"
                )
            time.sleep(0.05)
        self.client.wait_ready(timeout=20)
        self.client.open_stream()
        self.reset()

    def reset(self) -> None:
        """Push the pipeline again: empty tables, spec defaults, zeroed counters."""
        assert self.client is not None
        self.client.set_pipeline(self.p4info, self.device_config)
        self._drain()
        self._drops = self._drop_counts()

    def install(self, entries: list[TableEntry]) -> None:
        assert self.client is not None
        for e in entries:
            if "port" in e.params and e.params["port"] >= self.ports:
                raise RuntimeFailure(
                    f"port {e.params['port']} is beyond the {self.ports} ports of this bmv2 target"
                )
        updates = [
            update(p4r.Update.MODIFY if e.is_default else p4r.Update.INSERT, PIPELINE, e)
            for e in entries
        ]
        self.client.write(updates)

    def _verdict_counts(self) -> list[int]:
        assert self.client is not None
        cells = self.client.read_counter(PIPELINE.counter("verdicts").id)
        return [cells.get(i, (0, 0))[0] for i in range(len(PIPELINE.verdicts))]

    def _drop_counts(self) -> list[int]:
        assert self.client is not None
        cells = self.client.read_counter(PIPELINE.counter("drop_reasons").id)
        return [cells.get(i, (0, 0))[0] for i in range(len(PIPELINE.drop_reasons))]

    def _last_drop_reason(self) -> str | None:
        """The reason whose counter moved since the last drop (only drops move them)."""
        now = self._drop_counts()
        moved = [i for i, (a, b) in enumerate(zip(now, self._drops, strict=True)) if a > b]
        self._drops = now
        return PIPELINE.drop_reasons[moved[0]] if len(moved) == 1 else None

    def _drain(self) -> None:
        for s in self.sockets.values():
            with contextlib.suppress(BlockingIOError):
                while s.recv(65536):
                    pass
        assert self.client is not None
        while not self.client.packet_ins.empty():
            self.client.packet_ins.get_nowait()

    def process(self, frame: bytes, ingress_port: int) -> Outcome:
        if len(frame) < 14:
            # No link delivers a frame shorter than its header; the pipeline would drop it.
            return Outcome("drop", drop_reason="truncated_ethernet")
        if len(frame) > VETH_MTU + 14:
            # Nor a frame beyond the ports' MTU (a GSO super-frame in a host capture); one up
            # to it that is longer than MAX_FRAME reaches the switch, which drops it.
            return Outcome("drop", drop_reason="frame_too_long")
        before = self._verdict_counts()
        if lost_on_veth(frame):
            # Through the CPU port instead: the pipeline parses it as received on ingress_port.
            assert self.client is not None
            self.client.packet_out(
                frame,
                [
                    (PACKET_OUT_FIELDS["ingress_port"], ingress_port.to_bytes(2, "big")),
                    (PACKET_OUT_FIELDS["submit_to_ingress"], b"\x01"),
                ],
            )
        else:
            self.sockets[ingress_port].send(frame)
        deadline = time.monotonic() + 5
        while (after := self._verdict_counts()) == before:
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"bmv2 gave no verdict within 5 s; logs in {self.workdir}")
            time.sleep(0.002)
        moved = next(i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a > b)
        verdict = PIPELINE.verdicts[moved]
        if verdict == "drop":
            return Outcome("drop", drop_reason=self._last_drop_reason())
        if verdict == "forward":
            return self._receive_forwarded()
        return self._receive_packet_in()

    def _receive_forwarded(self) -> Outcome:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for port, s in self.sockets.items():
                try:
                    data, ancillary, _flags, addr = s.recvmsg(65536, 64)
                except BlockingIOError:
                    continue
                if addr[2] != PACKET_OUTGOING:
                    return Outcome("forward", port, with_vlan_tag(data, ancillary))
            time.sleep(0.001)
        raise RuntimeFailure("bmv2 counted a forward but no frame left any port within 5 s")

    def _receive_packet_in(self) -> Outcome:
        assert self.client is not None
        try:
            pin = self.client.packet_ins.get(timeout=5)
        except queue.Empty:
            raise RuntimeFailure("bmv2 counted a punt but sent no PacketIn within 5 s") from None
        meta = {m.metadata_id: int.from_bytes(m.value, "big") for m in pin.metadata}
        reason_id = 1 + [f.name for f in PIPELINE.packet_in.fields].index("reason")
        if PIPELINE.punt_reasons[meta.get(reason_id, 0)] == "host":
            return Outcome("pass")
        return Outcome("punt", None, pin.payload)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        netns.delete(self.ns)
