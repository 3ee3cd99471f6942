"""`frame_flow`'s shortcut for plain TCP/UDP frames gives what the pipeline's parser gives
(`frame_metadata`) for every frame: well-formed ones built with scapy, and the same with
random bytes of their headers changed (lengths, flags, versions, protocols, VLAN and VXLAN)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from cyberstar.pipeline.frames import frame_flow, frame_metadata

ports = st.integers(0, 65535)
addrs = st.integers(0, (1 << 32) - 1).map(
    lambda v: ".".join(str(v >> s & 255) for s in (24, 16, 8, 0))
)


@st.composite
def frames(draw) -> bytes:
    src, dst = draw(addrs), draw(addrs)
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp", "vxlan"]))
    payload = draw(st.binary(max_size=40))
    if l4 == "tcp":
        inner = TCP(sport=draw(ports), dport=draw(ports), flags="S") / payload
    elif l4 == "udp":
        inner = UDP(sport=draw(ports), dport=draw(ports)) / payload
    elif l4 == "icmp":
        inner = ICMP(type=draw(st.sampled_from([0, 8, 3])), id=draw(ports)) / payload
    else:
        inner = (
            UDP(sport=draw(ports), dport=4789)
            / VXLAN(vni=draw(st.integers(0, 1 << 24 - 1)))
            / (Ether() / IP(src=draw(addrs), dst=draw(addrs)) / TCP(sport=draw(ports), dport=80))
        )
    pkt = IP(src=src, dst=dst) / inner
    if draw(st.booleans()):
        pkt = Dot1Q(vlan=5) / pkt
    return bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:01") / pkt)


def expected(frame: bytes):
    m = frame_metadata(frame, 1)
    return None if m is None else (m["vni"], m["l3_proto"], m["l3_src"], m["l3_dst"],
                                   m["l4_src"], m["l4_dst"])  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(frames())
def test_well_formed_frames(frame: bytes) -> None:
    assert frame_flow(frame, 1) == expected(frame)


@settings(max_examples=500, deadline=None)
@given(frames(), st.lists(st.tuples(st.integers(12, 60), st.integers(0, 255)), min_size=1,
                          max_size=4), st.integers(0, 80))  # fmt: skip
def test_frames_with_header_bytes_changed_or_cut(frame: bytes, changes, cut: int) -> None:
    raw = bytearray(frame)
    for offset, value in changes:
        if offset < len(raw):
            raw[offset] = value
    raw = bytes(raw[: len(raw) - cut] if cut < len(raw) else raw)
    assert frame_flow(raw, 1) == expected(raw)


def _tcp(**ip) -> bytes:
    return bytes(Ether() / IP(src="10.1.0.2", dst="10.2.0.2", **ip) / TCP(sport=40000, dport=80))


@pytest.mark.parametrize(
    "frame",
    [
        _tcp(flags="MF"),  # a first fragment: the pipeline drops it
        _tcp(frag=3),  # a later fragment
        _tcp(options=[IPOption_NOP()] * 4),  # IHL 6: options before TCP
        _tcp(len=39),  # total length cuts the TCP header
        _tcp()[:50],  # the frame cuts the TCP header
        bytes(Ether() / IP(src="10.1.0.2", dst="10.2.0.2") / TCP(dataofs=4)),
        bytes(Ether() / IP(src="10.1.0.2", dst="10.2.0.2") / UDP(sport=5, dport=6, len=7)),
        bytes(Ether() / IP(src="10.1.0.2", dst="10.2.0.2") / UDP(sport=5, dport=4789)
              / VXLAN(vni=7) / Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2)),
        bytes(Ether() / Dot1Q(vlan=9) / IP(src="10.1.0.2", dst="10.2.0.2") / TCP()),
        bytes(Ether() / IP(version=5, src="10.1.0.2", dst="10.2.0.2") / TCP()),
    ],
    ids=["mf", "offset", "options", "total_len", "cut", "tcp_doff", "udp_len", "vxlan",
         "vlan", "version"],
)  # fmt: skip
def test_frames_the_shortcut_must_leave_to_the_parser(frame: bytes) -> None:
    assert frame_flow(frame, 1) == expected(frame)
