"""The differential conformance cases: one table, run on every target (ref, xdp, bmv2).

Each case gives the input frame, the rules, the expected verdict and port, and, for forwarded
frames, the expected output built independently with scapy (checksums computed from scratch,
which equal the incremental updates because the inputs carry valid checksums).
"""

from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from cyberstar.pipeline.checksum import internet_checksum
from cyberstar.ref.model import vxlan_source_port

IN_PORT = 1
CLIENT_MAC, PP_MAC, GW_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01", "02:00:00:00:00:02"
PEER_PP_MAC = "02:00:00:00:00:03"
CLIENT, VIP, PUBLIC, BACKEND = "192.168.1.2", "10.0.0.5", "203.0.113.9", "172.16.0.7"
PP_IP, PEER_PP_IP = "198.51.100.1", "198.51.100.2"
TENANT, VNI_IN, VNI_OUT = 7, 5000, 6000
LONGEST_FRAME = 3520  # what XDP sees in a 4 KiB page: the pipeline's documented MAX_FRAME

BASE_RULES: list[dict] = [
    {
        "table": "tenant_classify",
        "match": {"ingress_port": IN_PORT, "vni": 0, "dst_addr": "10.0.0.0/8"},
        "action": "set_tenant",
        "params": {"tenant_id": TENANT},
    },
    {
        "table": "tenant_classify",
        "match": {"ingress_port": IN_PORT, "vni": VNI_IN, "dst_addr": "10.0.0.0/8"},
        "action": "set_tenant",
        "params": {"tenant_id": TENANT},
    },
    {
        "table": "next_hop",
        "match": {"nexthop_id": 3},
        "action": "set_next_hop",
        "params": {"port": 2, "smac": PP_MAC, "dmac": GW_MAC},
    },
    {
        "table": "next_hop",
        "match": {"nexthop_id": 4},
        "action": "set_next_hop_vxlan",
        "params": {
            "port": 3,
            "smac": PP_MAC,
            "dmac": PEER_PP_MAC,
            "src_addr": PP_IP,
            "dst_addr": PEER_PP_IP,
            "vni": VNI_OUT,
        },
    },
]


def flow(
    action: str,
    params: dict,
    proto: int = 6,
    sport: int = 40001,
    dport: int = 80,
    src: str = CLIENT,
    dst: str = VIP,
) -> dict:
    return {
        "table": "flow_table",
        "match": {
            "tenant_id": TENANT,
            "src_addr": src,
            "dst_addr": dst,
            "protocol": proto,
            "src_port": sport,
            "dst_port": dport,
        },
        "action": action,
        "params": params,
    }


SNAT = flow("snat", {"src_addr": PUBLIC, "src_port": 50000, "nexthop_id": 3})
SNAT_UDP = flow(
    "snat", {"src_addr": PUBLIC, "src_port": 50000, "nexthop_id": 3}, proto=17, dport=53
)
DNAT = flow("dnat", {"dst_addr": BACKEND, "dst_port": 8080, "nexthop_id": 3})
FULLNAT = flow(
    "nat",
    {"src_addr": PUBLIC, "src_port": 50001, "dst_addr": BACKEND, "dst_port": 8443, "nexthop_id": 3},
    dport=443,
)
FORWARD_TUNNEL = flow("forward", {"nexthop_id": 4})
SNAT_TUNNEL = flow("snat", {"src_addr": PUBLIC, "src_port": 50000, "nexthop_id": 4})
PING_SNAT = flow(
    "snat",
    {"src_addr": PUBLIC, "src_port": 777, "nexthop_id": 3},
    proto=1,
    sport=0x1234,
    dport=0x1234,
)


def client_tcp(payload: bytes = b"GET / HTTP/1.1\r\n\r\n", **ip) -> Ether:
    return (
        Ether(src=CLIENT_MAC, dst=PP_MAC)
        / IP(src=CLIENT, dst=VIP, **ip)
        / TCP(sport=40001, dport=80, flags="S", seq=1000)
        / payload
    )


def rebuild(pkt: Ether) -> bytes:
    """Serialize with lengths and checksums recomputed by scapy (independent of our
    arithmetic); a zero UDP checksum stays zero."""
    p = pkt.copy()
    layer = p
    while layer:
        if isinstance(layer, IP | TCP | ICMP):
            del layer.chksum
        if isinstance(layer, UDP) and layer.chksum != 0:
            del layer.chksum
        if isinstance(layer, IP | UDP):
            del layer.len
        layer = layer.payload
    return bytes(p)


def cut(
    frame: bytes, keep: int, ip_offsets: tuple[int, ...] = (14,), udp_offset: int | None = None
) -> bytes:
    """Truncate a frame to `keep` bytes and make the enclosing IPv4 total lengths (and header
    checksums) and UDP length agree with the cut, so the truncation is inside the next header."""
    b = bytearray(frame[:keep])
    for off in ip_offsets:
        b[off + 2 : off + 4] = (keep - off).to_bytes(2, "big")
        b[off + 10 : off + 12] = b"\0\0"
        ihl = (b[off] & 0xF) * 4
        b[off + 10 : off + 12] = internet_checksum(bytes(b[off : off + ihl])).to_bytes(2, "big")
    if udp_offset is not None:
        b[udp_offset + 4 : udp_offset + 6] = (keep - udp_offset).to_bytes(2, "big")
        b[udp_offset + 6 : udp_offset + 8] = b"\0\0"
    return bytes(b)


def vxlan_sport(src: str, dst: str, proto: int, sport: int, dport: int) -> int:
    def ip(a: str) -> int:
        return int.from_bytes(bytes(int(x) for x in a.split(".")), "big")

    return vxlan_source_port(
        {"l3_src": ip(src), "l3_dst": ip(dst), "l3_proto": proto, "l4_src": sport, "l4_dst": dport}
    )


def tunnel(inner: Ether, vni: int, src: str, dst: str, smac: str, dmac: str, sport: int) -> Ether:
    return (
        Ether(src=smac, dst=dmac)
        / IP(src=src, dst=dst, flags="DF", ttl=64, id=0)
        / UDP(sport=sport, dport=4789, chksum=0)
        / VXLAN(flags=0x08, vni=vni)
        / inner
    )


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    rules: list[dict]
    verdict: str
    port: int | None = None
    expected: bytes | None = None  # exact output of a forward
    drop_reason: str | None = None


def _snat_expected(pkt: Ether) -> bytes:
    out = pkt.copy()
    out[Ether].src, out[Ether].dst = PP_MAC, GW_MAC
    out[IP].src = PUBLIC
    out[TCP].sport = 50000
    return rebuild(out)


def _cases() -> list[Case]:
    syn = client_tcp()
    cases = [
        Case(
            "snat rewrites source address and port",
            bytes(syn),
            [*BASE_RULES, SNAT],
            "forward",
            2,
            _snat_expected(syn),
        ),
    ]
    longest = client_tcp(b"x" * (LONGEST_FRAME - 54))  # Ethernet 14 + IPv4 20 + TCP 20
    assert len(longest) == LONGEST_FRAME
    cases.append(
        Case(
            "a frame of the longest size the pipeline takes is forwarded",
            bytes(longest),
            [*BASE_RULES, SNAT],
            "forward",
            2,
            _snat_expected(longest),
        )
    )
    too_long = client_tcp(b"x" * (LONGEST_FRAME + 1 - 54))
    cases.append(
        Case(
            "a frame one byte longer is dropped",
            bytes(too_long),
            [*BASE_RULES, SNAT],
            "drop",
            drop_reason="frame_too_long",
        )
    )
    udp = (
        Ether(src=CLIENT_MAC, dst=PP_MAC)
        / IP(src=CLIENT, dst=VIP)
        / UDP(sport=40001, dport=53)
        / (b"q" * 30)
    )
    udp_out = udp.copy()
    udp_out[Ether].src, udp_out[Ether].dst = PP_MAC, GW_MAC
    udp_out[IP].src, udp_out[UDP].sport = PUBLIC, 50000
    cases.append(
        Case(
            "snat of udp updates the udp checksum",
            bytes(udp),
            [*BASE_RULES, SNAT_UDP],
            "forward",
            2,
            rebuild(udp_out),
        )
    )
    udp0 = udp.copy()
    udp0[UDP].chksum = 0
    udp0_out = udp_out.copy()
    udp0_out[UDP].chksum = 0
    cases.append(
        Case(
            "snat keeps a zero udp checksum zero",
            bytes(Ether(bytes(udp0))),
            [*BASE_RULES, SNAT_UDP],
            "forward",
            2,
            rebuild(udp0_out),
        )
    )
    dnat_out = syn.copy()
    dnat_out[Ether].src, dnat_out[Ether].dst = PP_MAC, GW_MAC
    dnat_out[IP].dst, dnat_out[TCP].dport = BACKEND, 8080
    cases.append(
        Case(
            "dnat rewrites destination address and port",
            bytes(syn),
            [*BASE_RULES, DNAT],
            "forward",
            2,
            rebuild(dnat_out),
        )
    )
    lb_in = client_tcp()
    lb_in[TCP].dport = 443
    lb_out = lb_in.copy()
    lb_out[Ether].src, lb_out[Ether].dst = PP_MAC, GW_MAC
    lb_out[IP].src, lb_out[TCP].sport = PUBLIC, 50001
    lb_out[IP].dst, lb_out[TCP].dport = BACKEND, 8443
    cases.append(
        Case(
            "load balancer full nat to a backend",
            bytes(Ether(bytes(lb_in))),
            [*BASE_RULES, FULLNAT],
            "forward",
            2,
            rebuild(lb_out),
        )
    )
    ping = (
        Ether(src=CLIENT_MAC, dst=PP_MAC)
        / IP(src=CLIENT, dst=VIP)
        / ICMP(type=8, id=0x1234, seq=1)
        / (b"x" * 16)
    )
    ping_out = ping.copy()
    ping_out[Ether].src, ping_out[Ether].dst = PP_MAC, GW_MAC
    ping_out[IP].src, ping_out[ICMP].id = PUBLIC, 777
    cases.append(
        Case(
            "icmp echo snat rewrites the identifier",
            bytes(ping),
            [*BASE_RULES, PING_SNAT],
            "forward",
            2,
            rebuild(ping_out),
        )
    )
    opts = client_tcp(options=[IPOption_Router_Alert()])
    opts_out = opts.copy()
    opts_out[Ether].src, opts_out[Ether].dst = PP_MAC, GW_MAC
    opts_out[IP].src, opts_out[TCP].sport = PUBLIC, 50000
    cases.append(
        Case(
            "ipv4 options are kept and skipped",
            bytes(Ether(bytes(opts))),
            [*BASE_RULES, SNAT],
            "forward",
            2,
            rebuild(opts_out),
        )
    )
    tagged = (
        Ether(src=CLIENT_MAC, dst=PP_MAC)
        / Dot1Q(vlan=42)
        / IP(src=CLIENT, dst=VIP)
        / TCP(sport=40001, dport=80)
    )
    tagged_out = tagged.copy()
    tagged_out[Ether].src, tagged_out[Ether].dst = PP_MAC, GW_MAC
    tagged_out[IP].src, tagged_out[TCP].sport = PUBLIC, 50000
    cases.append(
        Case(
            "802.1q tagged snat keeps the tag",
            bytes(tagged),
            [*BASE_RULES, SNAT],
            "forward",
            2,
            rebuild(tagged_out),
        )
    )

    acl_deny_ssh = {
        "table": "acl",
        "match": {"dst_port": {"value": 80, "mask": 0xFFFF}},
        "action": "acl_deny",
        "priority": 10,
    }
    acl_permit_client = {
        "table": "acl",
        "match": {"src_addr": {"value": CLIENT, "mask": "255.255.255.255"}},
        "action": "acl_permit",
        "priority": 20,
    }
    cases.append(
        Case(
            "acl deny drops",
            bytes(syn),
            [*BASE_RULES, SNAT, acl_deny_ssh],
            "drop",
            drop_reason="acl_deny",
        )
    )
    cases.append(
        Case(
            "acl higher-priority permit wins over deny",
            bytes(syn),
            [*BASE_RULES, SNAT, acl_deny_ssh, acl_permit_client],
            "forward",
            2,
            _snat_expected(syn),
        )
    )
    low_permit = dict(acl_permit_client, priority=5)
    cases.append(
        Case(
            "acl higher-priority deny wins over permit",
            bytes(syn),
            [*BASE_RULES, SNAT, acl_deny_ssh, low_permit],
            "drop",
            drop_reason="acl_deny",
        )
    )
    cases.append(Case("flow miss punts the original frame", bytes(syn), list(BASE_RULES), "punt"))
    cases.append(
        Case(
            "flow drop action drops",
            bytes(syn),
            [*BASE_RULES, flow("flow_drop", {})],
            "drop",
            drop_reason="flow_drop",
        )
    )
    cases.append(
        Case(
            "default action changed to drop",
            bytes(syn),
            [*BASE_RULES, {"table": "flow_table", "default": True, "action": "flow_drop"}],
            "drop",
            drop_reason="flow_drop",
        )
    )
    cases.append(
        Case(
            "unknown next hop drops",
            bytes(syn),
            [*BASE_RULES, flow("forward", {"nexthop_id": 99})],
            "drop",
            drop_reason="no_next_hop",
        )
    )
    other = client_tcp()
    other[IP].dst = "8.8.8.8"
    cases.append(
        Case(
            "ipv4 of no tenant passes to the host",
            bytes(Ether(bytes(other))),
            list(BASE_RULES),
            "pass",
        )
    )
    cases.append(
        Case(
            "wrong ingress port is no tenant",
            bytes(syn),
            [
                dict(BASE_RULES[0], match={"ingress_port": 9, "vni": 0, "dst_addr": "10.0.0.0/8"}),
                *BASE_RULES[2:],
                SNAT,
            ],
            "pass",
        )
    )
    cases.append(
        Case(
            "arp passes to the host",
            bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP)),
            list(BASE_RULES),
            "pass",
        )
    )
    cases.append(
        Case(
            "ipv6 passes to the host",
            bytes(Ether(src=CLIENT_MAC, dst=PP_MAC, type=0x86DD) / (b"\x60" + b"\x00" * 39)),
            list(BASE_RULES),
            "pass",
        )
    )

    # VXLAN
    inner = (
        Ether(src=CLIENT_MAC, dst=PP_MAC)
        / IP(src=CLIENT, dst=VIP)
        / TCP(sport=40001, dport=80, flags="S")
        / b"hi"
    )
    vx_in = tunnel(inner, VNI_IN, PEER_PP_IP, PP_IP, PEER_PP_MAC, PP_MAC, 51234)
    decap_out = inner.copy()
    decap_out[Ether].src, decap_out[Ether].dst = PP_MAC, GW_MAC
    decap_out[IP].src, decap_out[TCP].sport = PUBLIC, 50000
    cases.append(
        Case(
            "vxlan decap with snat of the inner packet",
            bytes(vx_in),
            [*BASE_RULES, SNAT],
            "forward",
            2,
            rebuild(decap_out),
        )
    )
    sport = vxlan_sport(CLIENT, VIP, 6, 40001, 80)
    encap_out = tunnel(syn.copy(), VNI_OUT, PP_IP, PEER_PP_IP, PP_MAC, PEER_PP_MAC, sport)
    cases.append(
        Case(
            "vxlan encap to a peer pp (fabric)",
            bytes(syn),
            [*BASE_RULES, FORWARD_TUNNEL],
            "forward",
            3,
            rebuild(encap_out),
        )
    )
    reencap_inner = inner.copy()
    reencap_inner[IP].src, reencap_inner[TCP].sport = PUBLIC, 50000
    reencap_out = tunnel(reencap_inner, VNI_OUT, PP_IP, PEER_PP_IP, PP_MAC, PEER_PP_MAC, sport)
    cases.append(
        Case(
            "vxlan in, snat, vxlan out replaces the envelope",
            bytes(vx_in),
            [*BASE_RULES, SNAT_TUNNEL],
            "forward",
            3,
            rebuild(reencap_out),
        )
    )
    tagged_encap_out = tunnel(
        Ether(src=CLIENT_MAC, dst=PP_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=40001, dport=80),
        VNI_OUT,
        PP_IP,
        PEER_PP_IP,
        PP_MAC,
        PEER_PP_MAC,
        sport,
    )
    cases.append(
        Case(
            "vxlan encap drops the 802.1q tag",
            bytes(tagged),
            [*BASE_RULES, FORWARD_TUNNEL],
            "forward",
            3,
            rebuild(tagged_encap_out),
        )
    )
    cases.append(Case("vxlan miss punts", bytes(vx_in), list(BASE_RULES), "punt"))
    vx_arp = tunnel(
        Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP),
        VNI_IN,
        PEER_PP_IP,
        PP_IP,
        PEER_PP_MAC,
        PP_MAC,
        51234,
    )
    cases.append(Case("vxlan with non-ip inner passes", bytes(vx_arp), list(BASE_RULES), "pass"))
    cases += _malformed_cases(syn, vx_in)
    return cases


def _malformed_cases(syn: Ether, vx_in: Ether) -> list[Case]:
    rules = [*BASE_RULES, SNAT]
    raw_syn = bytes(syn)
    c: list[Case] = []

    def drop(name: str, frame: bytes, reason: str) -> None:
        c.append(Case(name, frame, rules, "drop", drop_reason=reason))

    drop("runt: 14-byte frame announcing ipv4", raw_syn[:14], "truncated_ipv4")
    drop("runt: 20-byte frame", raw_syn[:20], "truncated_ipv4")
    drop("truncated ethernet header", raw_syn[:13], "truncated_ethernet")
    drop(
        "frame cut inside the tcp header, lengths unchanged", raw_syn[:40], "bad_ipv4_total_length"
    )
    drop("ipv4 cut by the frame", cut(raw_syn, 14 + 12, ip_offsets=()), "truncated_ipv4")
    tagged = bytes(
        Ether(src=CLIENT_MAC, dst=PP_MAC) / Dot1Q(vlan=42) / IP(src=CLIENT, dst=VIP) / TCP()
    )
    drop("truncated 802.1q tag", tagged[:16], "truncated_vlan")
    bad_version = bytearray(raw_syn)
    bad_version[14] = (6 << 4) | 5
    drop("ip version 6 in an ipv4 frame", bytes(bad_version), "bad_ipv4_version")
    for ihl in (0, 4):
        b = bytearray(raw_syn)
        b[14] = (4 << 4) | ihl
        drop(f"bad ihl {ihl}", bytes(b), "bad_ipv4_ihl")
    long_ihl = bytearray(raw_syn)
    long_ihl[14] = (4 << 4) | 15  # 60-byte header, but total length says 40 + payload
    long_ihl[16:18] = (50).to_bytes(2, "big")
    drop("ihl beyond total length", bytes(long_ihl), "bad_ipv4_total_length")
    lying = bytearray(raw_syn)
    lying[16:18] = (len(raw_syn) - 14 + 100).to_bytes(2, "big")
    drop("total length larger than the frame", bytes(lying), "bad_ipv4_total_length")
    short_total = bytearray(raw_syn)
    short_total[16:18] = (19).to_bytes(2, "big")
    drop("total length below the header", bytes(short_total), "bad_ipv4_total_length")
    drop("first fragment (more fragments set)", bytes(client_tcp(flags="MF")), "ipv4_fragment")
    drop("later fragment (offset set)", bytes(client_tcp(frag=10)), "ipv4_fragment")
    drop("tcp header cut by total length", cut(raw_syn, 14 + 20 + 12), "truncated_tcp")
    bad_off = bytearray(raw_syn)
    bad_off[14 + 20 + 12] = 4 << 4
    drop("tcp data offset below 5", bytes(bad_off), "bad_tcp_data_offset")
    big_off = bytearray(raw_syn)
    big_off[14 + 20 + 12] = 15 << 4
    drop("tcp data offset beyond the segment", bytes(big_off), "bad_tcp_data_offset")
    udp = bytes(
        Ether(src=CLIENT_MAC, dst=PP_MAC)
        / IP(src=CLIENT, dst=VIP)
        / UDP(sport=1, dport=53)
        / (b"q" * 10)
    )
    bad_ulen = bytearray(udp)
    bad_ulen[14 + 20 + 4 : 14 + 20 + 6] = (200).to_bytes(2, "big")
    drop("udp length beyond the datagram", bytes(bad_ulen), "bad_udp_length")
    small_ulen = bytearray(udp)
    small_ulen[14 + 20 + 4 : 14 + 20 + 6] = (4).to_bytes(2, "big")
    drop("udp length below 8", bytes(small_ulen), "bad_udp_length")
    drop(
        "udp header cut by total length",
        bytes(
            Ether(src=CLIENT_MAC, dst=PP_MAC) / IP(src=CLIENT, dst=VIP, proto=17) / (b"\x00" * 5)
        ),
        "truncated_udp",
    )
    drop(
        "icmp header cut by total length",
        bytes(Ether(src=CLIENT_MAC, dst=PP_MAC) / IP(src=CLIENT, dst=VIP, proto=1) / (b"\x08" * 4)),
        "truncated_icmp",
    )
    raw_vx = bytes(vx_in)
    outer = 14 + 20 + 8
    inner_ip = outer + 8 + 14

    def vx_cut(keep: int) -> bytes:
        return cut(raw_vx, keep, ip_offsets=(14,), udp_offset=14 + 20)

    drop("vxlan header cut", vx_cut(outer + 4), "truncated_vxlan")
    no_i = bytearray(raw_vx)
    no_i[outer] = 0
    drop("vxlan without the I flag", bytes(no_i), "bad_vxlan_flags")
    drop("inner ethernet cut", vx_cut(outer + 8 + 10), "truncated_inner_ethernet")
    drop("inner ipv4 cut", vx_cut(inner_ip + 10), "truncated_inner_ipv4")
    drop(
        "outer frame cut inside the inner packet", raw_vx[: inner_ip + 30], "bad_ipv4_total_length"
    )
    inner_tcp_cut = cut(raw_vx, inner_ip + 20 + 10, ip_offsets=(14, inner_ip), udp_offset=14 + 20)
    drop("inner tcp cut", inner_tcp_cut, "truncated_inner_tcp")
    inner_ihl = bytearray(raw_vx)
    inner_ihl[outer + 8 + 14] = (4 << 4) | 3
    drop("inner bad ihl", bytes(inner_ihl), "bad_inner_ipv4_ihl")
    inner_ver = bytearray(raw_vx)
    inner_ver[outer + 8 + 14] = (5 << 4) | 5
    drop("inner bad version", bytes(inner_ver), "bad_inner_ipv4_version")
    inner_len = bytearray(raw_vx)
    inner_len[outer + 8 + 14 + 2 : outer + 8 + 14 + 4] = (500).to_bytes(2, "big")
    drop(
        "inner total length beyond the udp datagram",
        bytes(inner_len),
        "bad_inner_ipv4_total_length",
    )
    inner_frag = bytearray(raw_vx)
    inner_frag[outer + 8 + 14 + 6] = 0x20  # more fragments
    drop("inner fragment", bytes(inner_frag), "inner_ipv4_fragment")
    inner_tcp = bytearray(raw_vx)
    inner_tcp[outer + 8 + 14 + 20 + 12] = 2 << 4
    drop("inner tcp data offset", bytes(inner_tcp), "bad_inner_tcp_data_offset")
    return c


CASES = _cases()
