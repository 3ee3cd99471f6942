"""The verifier accepts the generated program in native (veth) and generic mode, and an
attached program forwards real frames between namespaces."""

from __future__ import annotations

import socket
import time

import pytest

from cyberstar import netns
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import parse_rules

pytestmark = pytest.mark.root


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_program_attaches_in_each_mode(pp_ns, prog, mode: str) -> None:
    with netns.entered(pp_ns):
        assert prog.attach("pp1", mode) == mode
        prog.detach_all()


def test_attached_program_forwards_between_namespaces(pp_ns, prog) -> None:
    """A frame sent into peer1 comes out of peer2 rewritten (generic mode on both ports)."""
    from conformance.cases import BASE_RULES, SNAT, client_tcp

    rules = [*BASE_RULES[:3], SNAT]  # next hop 3 -> port 2
    prog.install_defaults()
    prog.install(parse_rules(rules, PIPELINE))
    with netns.entered(pp_ns):
        prog.set_port(socket.if_nametoindex("pp1"), 1)
        prog.set_port(socket.if_nametoindex("pp2"), 2)
        prog.attach("pp1", "skb")
        prog.attach("pp2", "skb")
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        tx.bind(("peer1", 0))
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        rx.bind(("peer2", 0))
        rx.settimeout(2)
    try:
        frame = bytes(client_tcp())
        tx.send(frame)
        deadline = time.monotonic() + 2
        while True:
            data, addr = rx.recvfrom(65536)
            if addr[2] != 4:  # not our own outgoing frames
                break
            assert time.monotonic() < deadline
        assert data[:6] == bytes.fromhex("020000000002")  # next hop MAC
        assert data[26:30] == bytes([203, 0, 113, 9])  # SNAT source address
        assert prog.counter_cell("port_tx", 2)[0] >= 1
    finally:
        with netns.entered(pp_ns):
            prog.detach_all()
        tx.close()
        rx.close()
