"""In-process helpers for the SC unit tests: an engine from a YAML snippet, flows, the PP."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.sc.config import parse_config
from cyberstar.sc.engine import Engine, Outcome
from cyberstar.sc.flows import FlowKey, Packet
from cyberstar.sc.rules import rule_proto, table_entry
from cyberstar.targets.ref import RefTarget

CLIENT_PORT, NET_PORT = 1, 2
# The node part of an SC.yaml for in-process tests (no process listens: plaintext on loopback).
PLAIN_NODE = """\
node_id: t
listen: 127.0.0.1:1
plaintext: true
etcd: {endpoints: [127.0.0.1:2379], plaintext: true}
scg: a
"""
PP_MAC, CLIENT_MAC, GW_MAC = "02:00:00:00:00:01", "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def engine_from(tenants_yaml: str) -> Engine:
    """An engine owning the whole of every tenant (as a chain head that claimed them)."""
    config = parse_config(f"{PLAIN_NODE}tenants:\n{tenants_yaml}")
    eng = Engine(config)
    for tid in config.tenants:
        shard = eng.initial_shard(tid)
        pools = {n: p.encode() for n, p in shard.pools.items()}
        eng.state.apply(["create", str(shard.id), pools])
    return eng


def tcp(src: str, sport: int, dst: str, dport: int) -> FlowKey:
    return FlowKey(6, ip(src), ip(dst), sport, dport)


def ask(eng: Engine, tenant: int, key: FlowKey, ops: list | None = None) -> Outcome:
    return eng.compute(Packet(tenant, CLIENT_PORT, 0, key), [] if ops is None else ops)


def entries(out: Outcome) -> list:
    """The outcome's rules through the wire format and the pipeline's validation."""
    return [table_entry(rule_proto(out.tenant_id, r, out.timeout_ns)) for r in out.rules]


def pp_with(rules: list, tenant: int) -> RefTarget:
    """A reference PP: tenant classification on both ports, next hops 1 (clients) and 2
    (internet / servers), plus the given flow rules."""
    base = [
        build_entry(
            PIPELINE,
            "tenant_classify",
            {"ingress_port": port, "vni": 0, "dst_addr": "0.0.0.0/0"},
            "set_tenant",
            {"tenant_id": tenant},
        )
        for port in (CLIENT_PORT, NET_PORT)
    ] + [
        build_entry(
            PIPELINE,
            "next_hop",
            {"nexthop_id": nh},
            "set_next_hop",
            {"port": port, "smac": PP_MAC, "dmac": mac},
        )
        for nh, port, mac in ((1, CLIENT_PORT, CLIENT_MAC), (2, NET_PORT, GW_MAC))
    ]
    target = RefTarget()
    target.install(base + rules)
    return target


def frame(key: FlowKey) -> bytes:
    l4 = (
        TCP(sport=key.src_port, dport=key.dst_port, flags="S")
        if key.protocol == 6
        else UDP(sport=key.src_port, dport=key.dst_port)
    )
    src, dst = str(ipaddress.IPv4Address(key.src_addr)), str(ipaddress.IPv4Address(key.dst_addr))
    return bytes(Ether(src=CLIENT_MAC, dst=PP_MAC) / IP(src=src, dst=dst) / l4)


def key_of(data: bytes) -> FlowKey:
    pkt = Ether(data)
    l4 = pkt[IP].payload
    return FlowKey(pkt[IP].proto, ip(pkt[IP].src), ip(pkt[IP].dst), l4.sport, l4.dport)
