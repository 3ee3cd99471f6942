"""The NF modules and their composition, in process: rules per case, checked against the
pipeline (every rule goes through `build_entry`) and pushed through the reference PP."""

from __future__ import annotations

import pytest

from cyberstar.proto import sc_pb2
from cyberstar.sc.flows import FlowKey, slot_of
from cyberstar.sc.nf.maglev import build_table
from sc.helpers import (
    CLIENT_PORT,
    NET_PORT,
    ask,
    engine_from,
    entries,
    frame,
    ip,
    key_of,
    pp_with,
    tcp,
)

SNAT = """
  - id: 7
    chain: [nat]
    forward_nexthop: 2
    return_nexthop: 1
    nfs:
      nat: {kind: snat, pool: ["203.0.113.1:5000-5003"], sources: [10.0.0.0/8]}
"""

FULL = """
  - id: 9
    chain: [fw, nat, web]
    forward_nexthop: 2
    return_nexthop: 1
    nfs:
      fw:
        kind: firewall
        sets: {clients: [10.0.0.0/8], bad: [10.66.0.0/16]}
        rules:
          - {action: deny, src: [bad]}
          - {action: allow, src: [clients], protocol: tcp, dst_ports: [80, "8000-8080"]}
        default: deny
      nat: {kind: snat, pool: ["203.0.113.7:20000-20999"]}
      web:
        kind: lb
        table_size: 251
        vips:
          - addr: 198.51.100.10
            port: 80
            protocol: tcp
            backends: [{to: "172.16.0.1:8080", weight: 2}, {to: "172.16.0.2:8080"}]
"""


def roundtrip(out, tenant: int, key: FlowKey) -> tuple[FlowKey, FlowKey]:
    """Send the first packet and a reply through a reference PP with the outcome's rules;
    return (the packet as it left, the reply as it reached the client)."""
    pp = pp_with(entries(out), tenant)
    sent = pp.process(frame(key), CLIENT_PORT)
    assert sent.verdict == "forward" and sent.port == NET_PORT, sent
    leaving = key_of(sent.output)
    back = pp.process(frame(leaving.reversed()), NET_PORT)
    assert back.verdict == "forward" and back.port == CLIENT_PORT, back
    return leaving, key_of(back.output)


def test_snat_maps_both_directions_and_reply_comes_back() -> None:
    eng = engine_from(SNAT)
    key = tcp("10.1.1.1", 40000, "93.184.216.34", 443)
    out = ask(eng, 7, key)
    assert out.code == sc_pb2.OK and [r.action for r in out.rules] == ["snat", "dnat"]
    leaving, reply = roundtrip(out, 7, key)
    assert (leaving.src_addr, leaving.src_port) == (ip("203.0.113.1"), 5000)
    assert reply == key.reversed()


def test_snat_never_hands_a_port_twice_and_exhaustion_drops_with_alarm() -> None:
    eng = engine_from(SNAT)
    ports = set()
    for i in range(4):
        out = ask(eng, 7, tcp("10.1.1.1", 40000 + i, "93.184.216.34", 443))
        ports.add(out.rules[0].params[1])
    assert ports == {5000, 5001, 5002, 5003}
    out = ask(eng, 7, tcp("10.1.1.1", 41000, "93.184.216.34", 443))
    assert out.code == sc_pb2.POOL_EXHAUSTED
    assert [r.action for r in out.rules] == ["flow_drop"] and out.timeout_ns == 1_000_000_000
    assert eng.counters["pool_exhausted"] == 1
    entries(out)  # a valid pipeline entry


def test_snat_release_returns_the_port_after_both_directions() -> None:
    eng = engine_from(SNAT)
    key = tcp("10.1.1.1", 40000, "93.184.216.34", 443)
    out = ask(eng, 7, key)
    rev = out.rules[1].key
    assert eng.release(7, key, out.slot, []) == "released"
    assert eng.release(7, key, out.slot, []) == "unknown"  # idempotent
    assert eng.release(7, rev, out.slot, []) == "freed"
    assert eng.release(7, rev, out.slot, []) == "unknown"
    shard = next(eng.shards())
    assert len(shard.pools["nat/ports"]) == 4 and shard.count == 0


def test_repeated_request_returns_the_same_mapping_and_revives_it() -> None:
    eng = engine_from(SNAT)
    key = tcp("10.1.1.1", 40000, "93.184.216.34", 443)
    first = ask(eng, 7, key)
    eng.release(7, key, first.slot, [])
    ops: list = []
    again = ask(eng, 7, key, ops)
    assert again.rules == first.rules and ops and ops[0][0] == "live"
    assert eng.release(7, first.rules[1].key, first.slot, []) == "released"  # not freed


def test_snat_leaves_other_sources_alone_and_drops_unsolicited_inbound() -> None:
    eng = engine_from(SNAT)
    out = ask(eng, 7, tcp("192.168.0.5", 1234, "93.184.216.34", 443))
    assert [r.action for r in out.rules] == ["forward", "forward"]
    out = ask(eng, 7, tcp("93.184.216.34", 443, "203.0.113.1", 5000))
    assert [r.action for r in out.rules] == ["flow_drop"] and out.code == sc_pb2.OK
    assert eng.counters["denied"] == 1


def test_snat_icmp_echo_translates_the_identifier() -> None:
    eng = engine_from(SNAT)
    key = FlowKey(1, ip("10.1.1.1"), ip("1.1.1.1"), 77, 77)
    out = ask(eng, 7, key)
    fwd, rev = out.rules
    assert fwd.action == "snat" and fwd.params[:2] == (ip("203.0.113.1"), 5000)
    assert rev.key == FlowKey(1, ip("1.1.1.1"), ip("203.0.113.1"), 5000, 5000)
    assert rev.action == "dnat" and rev.params[:2] == (ip("10.1.1.1"), 77)
    entries(out)


def test_dnat_is_static_and_stateless() -> None:
    eng = engine_from("""
  - id: 3
    chain: [pub]
    forward_nexthop: 2
    return_nexthop: 1
    nfs:
      pub:
        kind: dnat
        forwards: [{protocol: tcp, addr: 198.51.100.1, port: 80, to: "10.1.0.5:8080"}]
""")
    key = tcp("192.0.2.10", 5555, "198.51.100.1", 80)
    ops: list = []
    out = ask(eng, 3, key, ops)
    assert [r.action for r in out.rules] == ["dnat", "snat"] and not ops
    leaving, reply = roundtrip(out, 3, key)
    assert (leaving.dst_addr, leaving.dst_port) == (ip("10.1.0.5"), 8080)
    assert reply == key.reversed()
    other = ask(eng, 3, tcp("192.0.2.10", 5555, "198.51.100.1", 22))
    assert other.rules[0].action == "forward"


def test_firewall_order_sets_and_sessions() -> None:
    eng = engine_from(FULL)
    denied = ask(eng, 9, tcp("10.66.1.1", 1000, "198.51.100.10", 80))
    assert [r.action for r in denied.rules] == ["flow_drop"]
    assert ask(eng, 9, tcp("10.1.1.1", 1000, "198.51.100.10", 22)).rules[0].action == "flow_drop"
    assert ask(eng, 9, tcp("192.0.2.1", 1000, "198.51.100.10", 80)).rules[0].action == "flow_drop"
    assert next(eng.shards()).count == 0  # denials keep no state


def test_firewall_alone_lets_the_reply_through_from_the_session() -> None:
    eng = engine_from("""
  - id: 4
    chain: [fw]
    forward_nexthop: 2
    return_nexthop: 1
    nfs:
      fw: {kind: firewall, rules: [{action: allow, src: [10.0.0.0/8]}], default: deny}
""")
    key = tcp("10.1.1.1", 1000, "192.0.2.80", 80)
    out = ask(eng, 4, key)
    assert [r.action for r in out.rules] == ["forward", "forward"]
    assert out.rules[1].key == key.reversed() and out.rules[1].params == (1,)
    assert slot_of(4, key) == slot_of(4, key.reversed())  # both directions, one shard
    reply = ask(eng, 4, key.reversed())  # the default would deny it; the session allows it
    assert reply.rules == out.rules and eng.counters["cache_hits"] == 1


def test_chain_fw_snat_lb_composes_one_full_nat_rule_per_direction() -> None:
    eng = engine_from(FULL)
    key = tcp("10.1.1.1", 40000, "198.51.100.10", 80)
    out = ask(eng, 9, key)
    assert [r.action for r in out.rules] == ["nat", "nat"]
    leaving, reply = roundtrip(out, 9, key)
    assert leaving.src_addr == ip("203.0.113.7") and 20000 <= leaving.src_port <= 20999
    assert (leaving.dst_addr, leaving.dst_port) in {
        (ip("172.16.0.1"), 8080),
        (ip("172.16.0.2"), 8080),
    }
    assert reply == key.reversed()


def test_lb_weights_and_affinity() -> None:
    eng = engine_from(FULL)
    backends = []
    for i in range(600):
        out = ask(eng, 9, tcp("10.1.1.1", 30000 + i, "198.51.100.10", 80))
        backends.append(out.rules[0].params[2])
    share = backends.count(ip("172.16.0.1")) / len(backends)
    assert 0.58 < share < 0.75  # weight 2 of 3
    # Affinity: change the backends; a known connection keeps its backend.
    key = tcp("10.1.1.1", 30000, "198.51.100.10", 80)
    lb = eng.config.tenants[9].chain[2]
    lb.vips[0] = lb.vips[0].__class__(**{**lb.vips[0].__dict__, "table": tuple([1] * 251)})
    assert ask(eng, 9, key).rules[0].params[2] == backends[0]


@pytest.mark.parametrize("n", [5, 10])
def test_maglev_moves_few_flows_when_a_backend_changes(n: int) -> None:
    size = 65537
    names = [(f"10.0.0.{i}:80", 1) for i in range(n)]
    before = build_table(names, size)
    after_add = build_table([*names, ("10.0.0.99:80", 1)], size)
    # Entries are indices; compare backend names so the added backend's index does not matter.
    moved = sum(
        1 for a, b in zip(before, after_add, strict=True) if names[a][0] != [*names, ("x", 1)][b][0]
    )
    assert moved / size < 1.6 / (n + 1)  # ideal: 1/(n+1) of the entries go to the new backend
    removed = build_table(names[1:], size)
    moved = sum(
        1 for a, b in zip(before, removed, strict=True) if a != 0 and names[a] != names[1:][b]
    )
    assert moved / size < 0.6 / n  # flows of surviving backends barely move
    counts = [before.count(i) for i in range(n)]
    assert max(counts) - min(counts) <= size // n // 50 + 2


def test_unknown_tenant_is_an_error_status_and_counted() -> None:
    eng = engine_from(SNAT)
    out = ask(eng, 99, tcp("10.1.1.1", 1, "1.1.1.1", 1))
    assert out.code == sc_pb2.UNKNOWN_TENANT and not out.rules
    assert eng.counters["unknown_tenant"] == 1
