"""Frames as the PP pipeline sees them: the parser (raw frame → header instances, or a drop
reason), the lookup metadata derived from them, and a punted frame. The reference model and
FM both read frames through this module.

The checks and their order are the pipeline's contract; the P4 parser and the XDP parser make
the same checks in the same order (the differential tests hold them to it):

  At most MAX_FRAME bytes in all (frame_too_long), then
  Ethernet (14 bytes) → optional 802.1Q tag → IPv4, if the EtherType says so:
    20 bytes present, version 4, IHL ≥ 5, IHL*4 ≤ total length ≤ bytes available,
    not a fragment (MF clear and offset 0), then by protocol within the total length:
    TCP (20 bytes, 5 ≤ data offset, data offset*4 ≤ L4 length), UDP (8 bytes,
    8 ≤ UDP length ≤ L4 length), ICMP (8 bytes).
  UDP to port 4789 is VXLAN (8 bytes within the UDP length, I flag set), then the inner
    Ethernet (14 bytes within the UDP length) and the inner IPv4/L4 with the same checks,
    bounded by the end of the UDP datagram.
Anything beyond the parsed headers is payload and is carried untouched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cyberstar.pipeline.headers import unpack
from cyberstar.pipeline.model import HeaderType
from cyberstar.pipeline.pp import CONSTANTS, ETHERNET, ICMP, IPV4, TCP, UDP, VLAN, VXLAN

MAX_FRAME = CONSTANTS["MAX_FRAME"]
ETHERTYPE_IPV4 = CONSTANTS["ETHERTYPE_IPV4"]
ETHERTYPE_VLAN = CONSTANTS["ETHERTYPE_VLAN"]
VXLAN_UDP_PORT = CONSTANTS["VXLAN_UDP_PORT"]
L4_TYPES = {
    CONSTANTS["IP_PROTO_TCP"]: ("tcp", TCP),
    CONSTANTS["IP_PROTO_UDP"]: ("udp", UDP),
    CONSTANTS["IP_PROTO_ICMP"]: ("icmp", ICMP),
}


ICMP_ECHO_TYPES = (0, 8)


@dataclass(frozen=True)
class Punted:
    """A frame a data plane sent to the controller, with its packet_in metadata."""

    metadata: dict[str, int]
    frame: bytes


class Malformed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Parsed:
    """Valid header instances by name; `options` holds raw IPv4 options bytes."""

    headers: dict[str, dict[str, int]] = field(default_factory=dict)
    options: dict[str, bytes] = field(default_factory=dict)
    payload_offset: int = 0
    offsets: dict[str, int] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.headers


def parse(frame: bytes) -> Parsed:
    """Parse a frame; raises `Malformed(reason)` with a `drop_reasons` label."""
    p = Parsed()
    end = len(frame)
    if end > MAX_FRAME:
        raise Malformed("frame_too_long")
    off = _extract(p, frame, "ethernet", ETHERNET, 0, end, "truncated_ethernet")
    ether_type = p.headers["ethernet"]["ether_type"]
    if ether_type == ETHERTYPE_VLAN:
        off = _extract(p, frame, "vlan", VLAN, off, end, "truncated_vlan")
        ether_type = p.headers["vlan"]["ether_type"]
    if ether_type != ETHERTYPE_IPV4:
        p.payload_offset = off
        return p
    off = _parse_ipv4(p, frame, off, end, "")
    if p.has("udp") and p.headers["udp"]["dst_port"] == VXLAN_UDP_PORT:
        off = _parse_vxlan(p, frame, off)
    p.payload_offset = off
    return p


def _extract(
    p: Parsed, frame: bytes, name: str, htype: HeaderType, off: int, end: int, reason: str
) -> int:
    if off + htype.byte_len > end:
        raise Malformed(reason)
    p.headers[name] = unpack(htype, frame, off)
    p.offsets[name] = off
    return off + htype.byte_len


def _parse_ipv4(p: Parsed, frame: bytes, off: int, end: int, prefix: str) -> int:
    """Parse IPv4 and its L4 header; returns the offset after the headers."""
    inner = "inner_" if prefix else ""
    name = f"{prefix}ipv4"
    l3_off = off
    off = _extract(p, frame, name, IPV4, off, end, f"truncated_{inner}ipv4")
    ip = p.headers[name]
    if ip["version"] != 4:
        raise Malformed(f"bad_{inner}ipv4_version")
    if ip["ihl"] < 5:
        raise Malformed(f"bad_{inner}ipv4_ihl")
    hdr_len = ip["ihl"] * 4
    if ip["total_len"] < hdr_len or l3_off + ip["total_len"] > end:
        raise Malformed(f"bad_{inner}ipv4_total_length")
    if hdr_len > 20:
        p.options[f"{prefix}ipv4_options"] = frame[off : l3_off + hdr_len]
        p.offsets[f"{prefix}ipv4_options"] = off
        off = l3_off + hdr_len
    if ip["flags"] & 1 or ip["frag_offset"]:
        raise Malformed(f"{inner}ipv4_fragment")
    l4_len = ip["total_len"] - hdr_len
    l4 = L4_TYPES.get(ip["protocol"])
    if l4 is None:
        return off
    l4_name, l4_type = l4
    if l4_len < l4_type.byte_len:
        raise Malformed(f"truncated_{inner}{l4_name}")
    off = _extract(p, frame, f"{prefix}{l4_name}", l4_type, off, end, f"truncated_{inner}{l4_name}")
    hdr = p.headers[f"{prefix}{l4_name}"]
    if l4_name == "tcp" and not 5 <= hdr["data_offset"] <= l4_len // 4:
        raise Malformed(f"bad_{inner}tcp_data_offset")
    if l4_name == "udp" and not 8 <= hdr["length"] <= l4_len:
        raise Malformed(f"bad_{inner}udp_length")
    return off


def _parse_vxlan(p: Parsed, frame: bytes, off: int) -> int:
    udp_end = p.offsets["udp"] + p.headers["udp"]["length"]
    off = _extract(p, frame, "vxlan", VXLAN, off, udp_end, "truncated_vxlan")
    if not p.headers["vxlan"]["flags"] & 0x08:
        raise Malformed("bad_vxlan_flags")
    off = _extract(p, frame, "inner_ethernet", ETHERNET, off, udp_end, "truncated_inner_ethernet")
    if p.headers["inner_ethernet"]["ether_type"] != ETHERTYPE_IPV4:
        return off
    return _parse_ipv4(p, frame, off, udp_end, "inner_")


def frame_metadata(frame: bytes, ingress_port: int = 0) -> dict[str, int] | None:
    """The lookup metadata the pipeline derives from a frame (tenant_id aside), or None for a
    frame it would not look up (malformed, not IPv4). FM reads punted frames with it."""
    try:
        p = parse(frame)
    except Malformed:
        return None
    prefix = effective_prefix(p)
    return None if prefix is None else lookup_metadata(p, prefix, ingress_port)


# Ethernet type .. the first 4 bytes after the L4 ports of an untagged IPv4 frame without options
_PLAIN = struct.Struct("!HBxH2xHxB2xIIHHH")
_TCP, _UDP = CONSTANTS["IP_PROTO_TCP"], CONSTANTS["IP_PROTO_UDP"]


def frame_flow(frame: bytes, ingress_port: int = 0) -> tuple[int, int, int, int, int, int] | None:
    """(vni, l3_proto, l3_src, l3_dst, l4_src, l4_dst) of `frame_metadata`, or None where it
    gives None. The frames FM sees most — untagged IPv4 without options, TCP or UDP (not
    VXLAN), well formed — are read with one struct; every other frame takes the parser."""
    if len(frame) >= 40:
        ether_type, ver_ihl, total, frag, proto, src, dst, sport, dport, udp_len = (
            _PLAIN.unpack_from(frame, 12)
        )
        if (ether_type == ETHERTYPE_IPV4 and ver_ihl == 0x45 and total >= 20
                and 14 + total <= len(frame) and not frag & 0x3FFF):  # fmt: skip
            l4_len = total - 20
            if proto == _TCP and l4_len >= 20 and 5 <= frame[46] >> 4 <= l4_len // 4:
                return 0, proto, src, dst, sport, dport
            if proto == _UDP and 8 <= udp_len <= l4_len and dport != VXLAN_UDP_PORT:
                return 0, proto, src, dst, sport, dport
    m = frame_metadata(frame, ingress_port)
    if m is None:
        return None
    return m["vni"], m["l3_proto"], m["l3_src"], m["l3_dst"], m["l4_src"], m["l4_dst"]


def effective_prefix(p: Parsed) -> str | None:
    """Which IPv4 the pipeline works on: the inner one of VXLAN, else the outer; None if neither."""
    if p.has("vxlan"):
        return "inner_" if p.has("inner_ipv4") else None
    return "" if p.has("ipv4") else None


def lookup_metadata(p: Parsed, prefix: str, ingress_port: int) -> dict[str, int]:
    ip = p.headers[f"{prefix}ipv4"]
    l4_src = l4_dst = 0
    if f"{prefix}tcp" in p.headers or f"{prefix}udp" in p.headers:
        l4 = p.headers.get(f"{prefix}tcp") or p.headers[f"{prefix}udp"]
        l4_src, l4_dst = l4["src_port"], l4["dst_port"]
    elif f"{prefix}icmp" in p.headers and p.headers[f"{prefix}icmp"]["type"] in ICMP_ECHO_TYPES:
        l4_src = l4_dst = p.headers[f"{prefix}icmp"]["identifier"]
    return {
        "ingress_port": ingress_port,
        "vni": p.headers["vxlan"]["vni"] if p.has("vxlan") else 0,
        "tenant_id": 0,
        "l3_src": ip["src_addr"],
        "l3_dst": ip["dst_addr"],
        "l3_proto": ip["protocol"],
        "l4_src": l4_src,
        "l4_dst": l4_dst,
        "nexthop_id": 0,
    }
