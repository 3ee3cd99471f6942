"""Build well-formed frames from the spec's header layouts (for the demo and benchmarks).

Checksums are computed in full; tests use scapy as an independent builder instead.
"""

from __future__ import annotations

import ipaddress

from cyberstar.pipeline.checksum import internet_checksum
from cyberstar.pipeline.headers import ipv4_header, pack
from cyberstar.pipeline.pp import CONSTANTS, ETHERNET, TCP, UDP

TCP_SYN = 0x02


def _ip(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def _mac(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def ethernet(src: str, dst: str, ether_type: int) -> bytes:
    return pack(ETHERNET, {"dst_addr": _mac(dst), "src_addr": _mac(src), "ether_type": ether_type})


def ipv4(src: str, dst: str, protocol: int, payload_len: int, ttl: int = 64) -> bytes:
    return ipv4_header(_ip(src), _ip(dst), protocol, payload_len, ttl)


def _pseudo_header(src: str, dst: str, protocol: int, length: int) -> bytes:
    return (
        _ip(src).to_bytes(4, "big")
        + _ip(dst).to_bytes(4, "big")
        + bytes([0, protocol])
        + length.to_bytes(2, "big")
    )


def tcp_frame(
    src_mac: str,
    dst_mac: str,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    payload: bytes = b"",
    flags: int = TCP_SYN,
) -> bytes:
    fields = {
        "src_port": sport,
        "dst_port": dport,
        "seq_no": 1,
        "ack_no": 0,
        "data_offset": 5,
        "res": 0,
        "flags": flags,
        "window": 65535,
        "checksum": 0,
        "urgent_ptr": 0,
    }
    seg_len = TCP.byte_len + len(payload)
    proto = CONSTANTS["IP_PROTO_TCP"]
    fields["checksum"] = internet_checksum(
        _pseudo_header(src, dst, proto, seg_len) + pack(TCP, fields) + payload
    )
    return (
        ethernet(src_mac, dst_mac, CONSTANTS["ETHERTYPE_IPV4"])
        + ipv4(src, dst, proto, seg_len)
        + pack(TCP, fields)
        + payload
    )


def udp_frame(
    src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, payload: bytes = b""
) -> bytes:
    length = UDP.byte_len + len(payload)
    proto = CONSTANTS["IP_PROTO_UDP"]
    fields = {"src_port": sport, "dst_port": dport, "length": length, "checksum": 0}
    fields["checksum"] = (
        internet_checksum(_pseudo_header(src, dst, proto, length) + pack(UDP, fields) + payload)
        or 0xFFFF
    )
    return (
        ethernet(src_mac, dst_mac, CONSTANTS["ETHERTYPE_IPV4"])
        + ipv4(src, dst, proto, length)
        + pack(UDP, fields)
        + payload
    )


def arp_request(src_mac: str, src: str, target: str) -> bytes:
    body = (
        bytes.fromhex("0001080006040001")
        + _mac(src_mac).to_bytes(6, "big")
        + _ip(src).to_bytes(4, "big")
        + bytes(6)
        + _ip(target).to_bytes(4, "big")
    )
    return ethernet(src_mac, "ff:ff:ff:ff:ff:ff", 0x0806) + body
