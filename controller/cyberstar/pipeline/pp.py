"""The packet-processing (PP) pipeline of cyberstar, declared once (paper §3.2, §4.2).

parse → tenant_classify → acl → flow_table → next_hop → deparse.

* The *effective* L3/L4 headers are the inner ones of a VXLAN packet, else the outer ones; the
  lookup metadata (`l3_*`, `l4_*`) is read from them and rewrites apply to them.
* Frames that are not IPv4 (ARP, IPv6, ...) and IPv4 that no tenant claims go to the host stack
  (verdict `pass`). Malformed IPv4/L4 is dropped and counted per reason in `drop_reasons`.
* A flow-table miss for a classified tenant is punted to the controller (verdict `punt`).
* ICMP echo request/reply use the identifier as both L4 ports; other ICMP has ports 0.

Every id below is a P4Runtime id (prefix byte per object kind) and is emitted as `@id` into the
P4 source, so p4c's P4Info and ours agree.
"""

from __future__ import annotations

from cyberstar.pipeline.model import (
    Action,
    ActionRef,
    ActionScope,
    ControllerHeader,
    CounterUnit,
    DirectCounter,
    Drop,
    Field,
    Forward,
    ForwardVxlan,
    HeaderInstance,
    HeaderType,
    IndexedCounter,
    IndexedMeter,
    KeyField,
    MatchKind,
    MeterUnit,
    Param,
    Pass,
    Pipeline,
    Punt,
    Rewrite,
    SetMeta,
    SetNextHop,
    Table,
)

F = Field
EXACT, LPM, TERNARY = MatchKind.EXACT, MatchKind.LPM, MatchKind.TERNARY

ETHERNET = HeaderType("ethernet_t", (F("dst_addr", 48), F("src_addr", 48), F("ether_type", 16)))
VLAN = HeaderType("vlan_t", (F("pcp", 3), F("dei", 1), F("vid", 12), F("ether_type", 16)))
IPV4 = HeaderType(
    "ipv4_t",
    (
        F("version", 4),
        F("ihl", 4),
        F("diffserv", 8),
        F("total_len", 16),
        F("identification", 16),
        F("flags", 3),
        F("frag_offset", 13),
        F("ttl", 8),
        F("protocol", 8),
        F("hdr_checksum", 16),
        F("src_addr", 32),
        F("dst_addr", 32),
    ),
)
IPV4_OPTIONS = HeaderType("ipv4_options_t", varbit=F("options", 320))
TCP = HeaderType(
    "tcp_t",
    (
        F("src_port", 16),
        F("dst_port", 16),
        F("seq_no", 32),
        F("ack_no", 32),
        F("data_offset", 4),
        F("res", 4),
        F("flags", 8),
        F("window", 16),
        F("checksum", 16),
        F("urgent_ptr", 16),
    ),
)
UDP = HeaderType(
    "udp_t", (F("src_port", 16), F("dst_port", 16), F("length", 16), F("checksum", 16))
)
ICMP = HeaderType(
    "icmp_t",
    (F("type", 8), F("code", 8), F("checksum", 16), F("identifier", 16), F("sequence", 16)),
)
VXLAN = HeaderType("vxlan_t", (F("flags", 8), F("reserved", 24), F("vni", 24), F("reserved2", 8)))

H = HeaderInstance
# Deparse order. `encap_*` are built by ForwardVxlan in front of whatever is left of the packet.
HEADERS = (
    H("encap_ethernet", ETHERNET),
    H("encap_ipv4", IPV4),
    H("encap_udp", UDP),
    H("encap_vxlan", VXLAN),
    H("ethernet", ETHERNET),
    H("vlan", VLAN),
    H("ipv4", IPV4),
    H("ipv4_options", IPV4_OPTIONS),
    H("tcp", TCP),
    H("udp", UDP),
    H("icmp", ICMP),
    H("vxlan", VXLAN),
    H("inner_ethernet", ETHERNET),
    H("inner_ipv4", IPV4),
    H("inner_ipv4_options", IPV4_OPTIONS),
    H("inner_tcp", TCP),
    H("inner_udp", UDP),
    H("inner_icmp", ICMP),
)

# What decapsulation removes: everything in front of the inner Ethernet header.
_names = [h.name for h in HEADERS]
OUTER_HEADERS = tuple(_names[_names.index("ethernet") : _names.index("inner_ethernet")])
del _names

# The lookup metadata: what tables match on and actions set.
METADATA = (
    F("ingress_port", 9),
    F("vni", 24),
    F("tenant_id", 16),
    F("l3_src", 32),
    F("l3_dst", 32),
    F("l3_proto", 8),
    F("l4_src", 16),
    F("l4_dst", 16),
    F("nexthop_id", 16),
)

# P4Runtime controller headers (their ids go on the header types as @id).
PACKET_IN = ControllerHeader(
    "packet_in", 0x04000001, (F("ingress_port", 16), F("reason", 8), F("tenant_id", 16))
)
PACKET_OUT = ControllerHeader(
    "packet_out",
    0x04000002,
    (F("egress_port", 16), F("ingress_port", 16), F("submit_to_ingress", 8)),
)

# Malformed input, found by the parser (P4: one `error` member each).
PARSER_DROP_REASONS = (
    "truncated_ethernet",
    "truncated_vlan",
    "truncated_ipv4",
    "bad_ipv4_version",
    "bad_ipv4_ihl",
    "bad_ipv4_total_length",
    "ipv4_fragment",
    "truncated_tcp",
    "bad_tcp_data_offset",
    "truncated_udp",
    "bad_udp_length",
    "truncated_icmp",
    "truncated_vxlan",
    "bad_vxlan_flags",
    "truncated_inner_ethernet",
    "truncated_inner_ipv4",
    "bad_inner_ipv4_version",
    "bad_inner_ipv4_ihl",
    "bad_inner_ipv4_total_length",
    "inner_ipv4_fragment",
    "truncated_inner_tcp",
    "bad_inner_tcp_data_offset",
    "truncated_inner_udp",
    "bad_inner_udp_length",
    "truncated_inner_icmp",
    "frame_too_long",  # longer than MAX_FRAME: checked first, before any header
)
DROP_REASONS = (
    *PARSER_DROP_REASONS,
    "acl_deny",
    "flow_drop",
    "no_next_hop",
    "port_down",  # XDP only: the egress port has no interface attached
    "flow_quota",  # XDP only: a flow-table miss of a tenant at its quota (pp serve --flow-quota)
    "rate_limited",  # over the tenant's rate (tenant_rate marked the packet red)
)
# Reasons a packet reaches the CPU port. "host" is bmv2's stand-in for the XDP `pass` verdict.
PUNT_REASONS = ("none", "miss", "host")
VERDICTS = ("forward", "drop", "punt", "pass")

CONSTANTS = {
    "CPU_PORT": 510,
    "MAX_PORTS": 512,
    "VXLAN_UDP_PORT": 4789,
    "ETHERTYPE_IPV4": 0x0800,
    "ETHERTYPE_VLAN": 0x8100,
    "IP_PROTO_ICMP": 1,
    "IP_PROTO_TCP": 6,
    "IP_PROTO_UDP": 17,
    "ENCAP_TTL": 64,
    # The longest frame the pipeline takes (bytes, from the Ethernet header on); longer ones are
    # dropped as frame_too_long, and a longer PacketOut is INVALID_ARGUMENT. XDP sees a frame in
    # one page: 4096 minus the headroom and the skb_shared_info the kernel keeps around it.
    "MAX_FRAME": 3520,
}

P = Param
ACTIONS = (
    Action(
        "set_tenant",
        0x01000001,
        (P("tenant_id", 16),),
        (SetMeta("tenant_id", "tenant_id"),),
        "The packet belongs to a tenant: continue to the ACL and the flow table.",
    ),
    Action("unclassified", 0x01000002, (), (Pass(),), "No tenant: hand to the host stack."),
    Action("acl_permit", 0x01000003, (), (), "Continue to the flow table."),
    Action("acl_deny", 0x01000004, (), (Drop("acl_deny"),), "Drop and count."),
    Action(
        "forward",
        0x01000005,
        (P("nexthop_id", 16),),
        (SetNextHop("nexthop_id"),),
        "Forward unchanged to a next hop.",
    ),
    Action(
        "snat",
        0x01000006,
        (P("src_addr", 32), P("src_port", 16), P("nexthop_id", 16)),
        (Rewrite("l3_src", "src_addr"), Rewrite("l4_src", "src_port"), SetNextHop("nexthop_id")),
        "Source NAT: rewrite the source address and port.",
    ),
    Action(
        "dnat",
        0x01000007,
        (P("dst_addr", 32), P("dst_port", 16), P("nexthop_id", 16)),
        (Rewrite("l3_dst", "dst_addr"), Rewrite("l4_dst", "dst_port"), SetNextHop("nexthop_id")),
        "Destination NAT / load-balancer backend: rewrite the destination address and port.",
    ),
    Action(
        "nat",
        0x01000008,
        (
            P("src_addr", 32),
            P("src_port", 16),
            P("dst_addr", 32),
            P("dst_port", 16),
            P("nexthop_id", 16),
        ),
        (
            Rewrite("l3_src", "src_addr"),
            Rewrite("l3_dst", "dst_addr"),
            Rewrite("l4_src", "src_port"),
            Rewrite("l4_dst", "dst_port"),
            SetNextHop("nexthop_id"),
        ),
        "Full NAT (both directions' addresses and ports), e.g. a full-proxy load balancer.",
    ),
    Action("flow_drop", 0x01000009, (), (Drop("flow_drop"),), "Drop the flow and count."),
    Action(
        "punt_miss",
        0x0100000A,
        (),
        (Punt("miss"),),
        "No rule for this flow: send the first packet to the controller.",
    ),
    Action(
        "set_next_hop",
        0x0100000B,
        (P("port", 9), P("smac", 48), P("dmac", 48)),
        (Forward("port", "smac", "dmac"),),
        "Send out of a port with new MACs (decapsulating VXLAN if the packet had it).",
    ),
    Action(
        "set_next_hop_vxlan",
        0x0100000C,
        (
            P("port", 9),
            P("smac", 48),
            P("dmac", 48),
            P("src_addr", 32),
            P("dst_addr", 32),
            P("vni", 24),
        ),
        (ForwardVxlan("port", "smac", "dmac", "src_addr", "dst_addr", "vni"),),
        "Send out of a port inside a VXLAN tunnel to another PP node (fabric, §5.2).",
    ),
    Action("no_next_hop", 0x0100000D, (), (Drop("no_next_hop"),), "Unknown next hop: drop."),
)

TABLE_ONLY = ActionScope.TABLE_ONLY
DEFAULT_ONLY = ActionScope.DEFAULT_ONLY

TABLES = (
    Table(
        "tenant_classify",
        0x02000001,
        (
            KeyField("ingress_port", 9, EXACT, "ingress_port"),
            KeyField("vni", 24, EXACT, "vni"),
            KeyField("dst_addr", 32, LPM, "l3_dst"),
        ),
        (ActionRef("set_tenant", TABLE_ONLY), ActionRef("unclassified", DEFAULT_ONLY)),
        "unclassified",
        1024,
        DirectCounter("tenant_classify_counter", 0x13000001),
        doc="Ingress port, VNI (0 without VXLAN) and destination VIP prefix → tenant.",
    ),
    Table(
        "acl",
        0x02000002,
        (
            KeyField("tenant_id", 16, TERNARY, "tenant_id"),
            KeyField("src_addr", 32, TERNARY, "l3_src"),
            KeyField("dst_addr", 32, TERNARY, "l3_dst"),
            KeyField("protocol", 8, TERNARY, "l3_proto"),
            KeyField("src_port", 16, TERNARY, "l4_src"),
            KeyField("dst_port", 16, TERNARY, "l4_dst"),
        ),
        (ActionRef("acl_permit"), ActionRef("acl_deny")),
        "acl_permit",
        256,
        DirectCounter("acl_counter", 0x13000002),
        doc="Per-tenant ACL, highest priority wins.",
    ),
    Table(
        "flow_table",
        0x02000003,
        (
            KeyField("tenant_id", 16, EXACT, "tenant_id"),
            KeyField("src_addr", 32, EXACT, "l3_src"),
            KeyField("dst_addr", 32, EXACT, "l3_dst"),
            KeyField("protocol", 8, EXACT, "l3_proto"),
            KeyField("src_port", 16, EXACT, "l4_src"),
            KeyField("dst_port", 16, EXACT, "l4_dst"),
        ),
        (
            ActionRef("forward", TABLE_ONLY),
            ActionRef("snat", TABLE_ONLY),
            ActionRef("dnat", TABLE_ONLY),
            ActionRef("nat", TABLE_ONLY),
            ActionRef("flow_drop"),
            ActionRef("punt_miss", DEFAULT_ONLY),
        ),
        "punt_miss",
        1 << 20,
        DirectCounter("flow_counter", 0x13000003),
        idle_timeout=True,
        doc="The rule cache: tenant + 5-tuple → rewrite and next hop; a miss punts.",
    ),
    Table(
        "next_hop",
        0x02000004,
        (KeyField("nexthop_id", 16, EXACT, "nexthop_id"),),
        (
            ActionRef("set_next_hop", TABLE_ONLY),
            ActionRef("set_next_hop_vxlan", TABLE_ONLY),
            ActionRef("no_next_hop", DEFAULT_ONLY),
        ),
        "no_next_hop",
        4096,
        doc="Next hop: a local port, or another PP node through a VXLAN tunnel (fabric).",
    ),
)

COUNTERS = (
    IndexedCounter(
        "drop_reasons",
        0x12000001,
        len(DROP_REASONS),
        CounterUnit.BOTH,
        DROP_REASONS,
        "Dropped packets, by reason (malformed input, ACL, flow rule, missing next hop).",
    ),
    IndexedCounter(
        "verdicts",
        0x12000002,
        len(VERDICTS),
        CounterUnit.BOTH,
        VERDICTS,
        "Every packet's verdict: forward, drop, punt, pass.",
    ),
    IndexedCounter(
        "port_tx",
        0x12000003,
        CONSTANTS["MAX_PORTS"],
        CounterUnit.BOTH,
        (),
        "Forwarded packets by egress port.",
    ),
    IndexedCounter(
        "tenant_packets",
        0x12000004,
        1 << 16,
        CounterUnit.BOTH,
        (),
        "Classified packets per tenant (the arrival rate the agent's rate policy reads).",
    ),
    IndexedCounter(
        "tenant_rate_drops",
        0x12000005,
        1 << 16,
        CounterUnit.BOTH,
        (),
        "Packets per tenant dropped over its rate (tenant_rate marked them red).",
    ),
)

# Per-tenant rate management (§7.2): the agent's credit policy sets each tenant's rate.
METERS = (
    IndexedMeter(
        "tenant_rate",
        0x14000001,
        1 << 16,
        MeterUnit.PACKETS,
        "tenant_id",
        "rate_limited",
        "tenant_packets",
        "tenant_rate_drops",
        "Each tenant's current rate and burst, in packets; red packets are dropped.",
    ),
)

PIPELINE = Pipeline(
    name="pp",
    headers=HEADERS,
    metadata=METADATA,
    packet_in=PACKET_IN,
    packet_out=PACKET_OUT,
    actions=ACTIONS,
    tables=TABLES,
    counters=COUNTERS,
    drop_reasons=DROP_REASONS,
    parser_drop_reasons=PARSER_DROP_REASONS,
    punt_reasons=PUNT_REASONS,
    verdicts=VERDICTS,
    constants=CONSTANTS,
    meters=METERS,
)
