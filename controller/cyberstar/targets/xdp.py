"""The generated XDP program as a target, run in the kernel with BPF_PROG_TEST_RUN.

Forwarded frames come back from the kernel rewritten; the egress port is read from the
`port_tx` counter; punted frames arrive through the program's perf buffer, as they do for the
PP agent.
"""

from __future__ import annotations

import logging
import os

from cyberstar.errors import TargetUnavailable
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.frames import Punted
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.targets import Outcome
from cyberstar.xdp.program import LOOPBACK_IFINDEX, XdpProgram
from cyberstar.xdp.testrun import MAX_FRAME, MIN_FRAME

log = logging.getLogger(__name__)


class XdpTarget:
    name = "xdp"

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise TargetUnavailable("the xdp target loads a BPF program: run as root")
        self.prog = XdpProgram()
        self.prog.install_defaults()
        self._punted: list[Punted] = []
        self.prog.open_punts(self._punted.append)
        self._ports: set[int] = set()
        self._ingress: int | None = None

    def install(self, entries: list[TableEntry]) -> None:
        self.prog.install(entries)
        for e in entries:
            if "port" in e.params:
                port = e.params["port"]
                self._ports.add(port)
                self.prog.set_egress_port(port, LOOPBACK_IFINDEX)

    def process(self, frame: bytes, ingress_port: int) -> Outcome:
        if len(frame) < MIN_FRAME:
            # No NIC delivers a frame shorter than an Ethernet header; the kernel refuses to
            # test-run one. The pipeline's answer for it is a drop (truncated_ethernet).
            log.info("%d-byte frame: below the Ethernet header, dropped", len(frame))
            return Outcome("drop", drop_reason="truncated_ethernet")
        if len(frame) > MAX_FRAME:
            # Nor does the kernel test-run a frame longer than a page (a GSO super-frame in a
            # host capture): the program would drop it as frame_too_long, and does so live.
            log.info("%d-byte frame: longer than %d bytes, dropped", len(frame), MAX_FRAME)
            return Outcome("drop", drop_reason="frame_too_long")
        if ingress_port != self._ingress:
            self.prog.set_ingress_port(LOOPBACK_IFINDEX, ingress_port)
            self._ingress = ingress_port
        before = {p: self.prog.counter_cell("port_tx", p)[0] for p in self._ports}
        drops_before = self._drops()
        result = self.prog.run(frame)
        if result.action == "XDP_REDIRECT":
            moved = [p for p in self._ports if self.prog.counter_cell("port_tx", p)[0] > before[p]]
            return Outcome("forward", moved[0] if moved else None, result.data)
        if result.action == "XDP_PASS":
            return Outcome("pass")
        self.prog.poll_punts(0)
        if self._punted:
            punted = self._punted.pop(0)
            return Outcome("punt", None, punted.frame)
        moved = [
            i for i, (a, b) in enumerate(zip(self._drops(), drops_before, strict=True)) if a > b
        ]
        return Outcome(
            "drop", drop_reason=PIPELINE.drop_reasons[moved[0]] if len(moved) == 1 else None
        )

    def _drops(self) -> list[int]:
        """Packets counted per drop reason: the one that moves during a run is its reason."""
        return [packets for packets, _ in self.prog.counter("drop_reasons")]

    def close(self) -> None:
        self.prog.close()
