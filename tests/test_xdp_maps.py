"""The XDP program's table maps, held to the reference model on random rule sets.

What the maps do beyond one entry per key (`cyberstar.codegen.xdp_layout`): an LPM table is a
hash probed once per prefix length in use, longest first, with a per-CPU cache of recent
results; the ACL is kept as one list per tenant; flow entries carry the ACL's result for their
key; the caches expire when their table changes. Each property below feeds random rules and
packets, and changes to the rules between packets, to the XDP program and the reference model,
which must agree on every outcome. The tests of the counters and the hit clock compare with
hand counts and the kernel's clock.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyberstar import packets
from cyberstar.codegen.xdp_layout import PORT_SLOTS, table_layout
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pp.device import coarse_now_ns
from cyberstar.ref.tables import RefTable
from cyberstar.targets.ref import RefTarget

pytestmark = pytest.mark.root

CLIENT_MAC, PP_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:01"
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def frame(src: str, dst: str, sport: int = 40000, dport: int = 80) -> bytes:
    return packets.tcp_frame(CLIENT_MAC, PP_MAC, src, dst, sport, dport, b"x" * 6)


def next_hops(ports: range) -> list[TableEntry]:
    """Next hop n sends out of port n: the egress port tells which flow entry matched."""
    return [
        build_entry(PIPELINE, "next_hop", {"nexthop_id": n}, "set_next_hop",
                    {"port": n, "smac": PP_MAC, "dmac": "02:00:00:00:00:02"})
        for n in ports
    ]  # fmt: skip


def flow(tenant: int, src: str, dst: str, nexthop: int, dport: int = 80) -> TableEntry:
    return build_entry(
        PIPELINE, "flow_table",
        {"tenant_id": tenant, "src_addr": src, "dst_addr": dst, "protocol": 6,
         "src_port": 40000, "dst_port": dport},
        "forward", {"nexthop_id": nexthop},
    )  # fmt: skip


class Both:
    """The XDP target and the reference model, fed the same entries and packets."""

    def __init__(self, xdp_target) -> None:
        self.xdp = xdp_target
        self.xdp.prog.clear()
        self.ref = RefTarget()

    def install(self, entries: list[TableEntry]) -> None:
        self.xdp.install(entries)
        self.ref.install(entries)

    def check(self, data: bytes) -> str:
        got, want = self.xdp.process(data, 1), self.ref.process(data, 1)
        assert got == want
        return got.verdict


# ---- LPM tables: hash probes per prefix length, longest first; the per-CPU cache ----------

ADDRS = [f"10.{a}.{b}.{c}" for a in (1, 2) for b in (0, 7) for c in (1, 200)]


@st.composite
def prefixes(draw: st.DrawFn) -> tuple[int, str, int]:
    """A tenant_classify entry (tenant, prefix, length) covering some of ADDRS."""
    addr = draw(st.sampled_from(ADDRS))
    length = draw(st.sampled_from([0, 1, 8, 9, 16, 23, 24, 31, 32]))
    value = int.from_bytes(bytes(int(x) for x in addr.split(".")), "big")
    value &= ((1 << length) - 1) << (32 - length) if length else 0
    return draw(st.integers(1, 6)), ".".join(str(value >> s & 255) for s in (24, 16, 8, 0)), length


@SETTINGS
@given(rules=st.lists(prefixes(), min_size=1, max_size=8), drop=st.integers(0, 7))
def test_lpm_agrees_with_ref_before_and_after_a_delete(xdp_target, rules, drop) -> None:
    both = Both(xdp_target)
    classify = {}
    for tenant, prefix, length in rules:  # one entry per prefix: the last tenant given wins
        classify[(prefix, length)] = build_entry(
            PIPELINE, "tenant_classify",
            {"ingress_port": 1, "vni": 0, "dst_addr": f"{prefix}/{length}"},
            "set_tenant", {"tenant_id": tenant},
        )  # fmt: skip
    flows = [flow(t, "192.168.0.1", a, t) for t in range(1, 7) for a in ADDRS]
    both.install([*next_hops(range(1, 7)), *flows, *classify.values()])
    for addr in ADDRS:
        both.check(frame("192.168.0.1", addr))
        both.check(frame("192.168.0.1", addr))  # the second from the per-CPU cache
    # delete one entry: packets it classified fall back to a shorter prefix, or to no tenant
    gone = list(classify.values())[drop % len(classify)]
    rest = [e for e in classify.values() if e is not gone]
    both = Both(xdp_target)
    both.install([*next_hops(range(1, 7)), *flows, *rest])
    for addr in ADDRS:
        both.check(frame("192.168.0.1", addr))


def test_a_deleted_prefix_stops_matching_at_once(xdp_target) -> None:
    """The per-CPU cache holds the last result per address; deleting the entry it came from
    (through the same calls the P4Runtime device makes) expires it."""
    prog = xdp_target.prog
    prog.clear()
    wide = build_entry(PIPELINE, "tenant_classify",
                       {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"},
                       "set_tenant", {"tenant_id": 1})  # fmt: skip
    narrow = build_entry(PIPELINE, "tenant_classify",
                         {"ingress_port": 1, "vni": 0, "dst_addr": "10.1.0.0/16"},
                         "set_tenant", {"tenant_id": 2})  # fmt: skip
    xdp_target.install([*next_hops(range(1, 3)), wide, narrow,
                        flow(1, "192.168.0.1", "10.1.0.5", 1),
                        flow(2, "192.168.0.1", "10.1.0.5", 2)])  # fmt: skip
    data = frame("192.168.0.1", "10.1.0.5")
    assert [xdp_target.process(data, 1).port for _ in range(2)] == [2, 2]
    from cyberstar.xdp.maps import encode_key

    prog.delete_raw("tenant_classify", encode_key(PIPELINE, narrow), 1)
    assert xdp_target.process(data, 1).port == 1
    prog.delete_raw("tenant_classify", encode_key(PIPELINE, wide), 1)
    assert xdp_target.process(data, 1).verdict == "pass"  # no tenant: to the host


# ---- the ACL: per-tenant lists, results carried by flow entries --------------------------

TENANTS = (1, 2, 3)
PORTS = (22, 80, 443)


@st.composite
def acl_rules(draw: st.DrawFn) -> dict:
    match: dict = {}
    tenant = draw(st.sampled_from(["any", "exact", "partial"]))
    if tenant == "exact":
        match["tenant_id"] = {"value": draw(st.sampled_from(TENANTS)), "mask": 0xFFFF}
    elif tenant == "partial":  # tenants 2 and 3 share bit 1
        match["tenant_id"] = {"value": 2, "mask": 2}
    if draw(st.booleans()):
        match["dst_port"] = {"value": draw(st.sampled_from(PORTS)), "mask": 0xFFFF}
    if draw(st.booleans()):
        match["src_addr"] = {"value": "192.168.0.0", "mask": "255.255.255.0"}
    return {"table": "acl", "match": match,
            "action": draw(st.sampled_from(["acl_deny", "acl_permit"]))}  # fmt: skip


def acl_entries(rules: list[dict]) -> list[TableEntry]:
    from cyberstar.pipeline.rules import parse_rules

    # distinct priorities: equal ones resolve in installation order on XDP only
    return parse_rules([{**r, "priority": 1000 - i} for i, r in enumerate(rules)], PIPELINE)


def acl_world(both: Both) -> list[bytes]:
    """Tenant t owns 10.t.0.0/16; a flow per tenant, source and port; the packets of all."""
    entries = [*next_hops(range(1, 4))]
    frames = []
    for t in TENANTS:
        entries.append(build_entry(PIPELINE, "tenant_classify",
                                   {"ingress_port": 1, "vni": 0, "dst_addr": f"10.{t}.0.0/16"},
                                   "set_tenant", {"tenant_id": t}))  # fmt: skip
        for src in ("192.168.0.1", "172.16.0.1"):
            for port in PORTS:
                entries.append(flow(t, src, f"10.{t}.0.5", t, port))
                frames.append(frame(src, f"10.{t}.0.5", dport=port))
    both.install(entries)
    return frames


@SETTINGS
@given(first=st.lists(acl_rules(), max_size=6), second=st.lists(acl_rules(), max_size=6))
def test_acl_agrees_with_ref_and_a_new_acl_applies_to_established_flows(
    xdp_target, first, second
) -> None:
    both = Both(xdp_target)
    frames = acl_world(both)
    both.install(acl_entries(first))
    for data in frames * 2:  # the second round hits the results cached in the flow entries
        both.check(data)
    # a new ACL: the same flows' packets see it at once
    xdp_target.prog.publish_ternary("acl", acl_entries(second))
    both.ref.model.tables["acl"] = RefTable(PIPELINE.table("acl"))
    both.ref.install(acl_entries(second))
    for data in frames:
        both.check(data)


def test_a_new_deny_drops_an_established_flow(xdp_target) -> None:
    both = Both(xdp_target)
    frames = acl_world(both)
    assert both.check(frames[0]) == "forward"
    both.install(acl_entries([{"table": "acl", "match": {"dst_port": {"value": 22,
                                                                      "mask": 0xFFFF}},
                               "action": "acl_deny"}]))  # fmt: skip
    assert both.check(frames[0]) == "drop"  # frames[0] is tenant 1, port 22
    assert both.check(frames[1]) == "forward"


def test_acl_lists_beyond_their_room_fall_back_to_one_list(xdp_target) -> None:
    """More tenant lists than the array holds: one list of every entry, same answers."""
    both = Both(xdp_target)
    frames = acl_world(both)
    lay = table_layout(PIPELINE, "acl")
    shared = [{"table": "acl", "match": {"dst_port": {"value": 1000 + i, "mask": 0xFFFF}},
               "action": "acl_deny"} for i in range(lay.table.size // 2)]  # fmt: skip
    own = [{"table": "acl", "match": {"tenant_id": {"value": 100 + i, "mask": 0xFFFF}},
            "action": "acl_deny"} for i in range(lay.table.size // 2 - 1)]  # fmt: skip
    last = [{"table": "acl", "match": {"tenant_id": {"value": 2, "mask": 0xFFFF},
                                       "dst_port": {"value": 443, "mask": 0xFFFF}},
             "action": "acl_deny"}]  # fmt: skip
    rules = acl_entries([*shared, *own, *last])
    assert len(rules) * (len(own) + 2) > lay.list_capacity  # the lists do not fit
    both.install(rules)
    verdicts = [both.check(data) for data in frames]
    assert verdicts.count("drop") == 2  # tenant 2's port-443 flows, from both sources


# ---- direct counters kept per CPU, read back as the P4Runtime device does ------------------


def counts(prog, table: str, raw: bytes) -> tuple[int, int]:
    head = table_layout(PIPELINE, table).value_head.unpack(raw)
    return head["packets"], head["bytes"]


def test_per_cpu_direct_counters_read_back_and_survive_republishing(xdp_target) -> None:
    from cyberstar.xdp.maps import encode_key, encode_value

    prog = xdp_target.prog
    both = Both(xdp_target)
    frames = acl_world(both)
    permit = acl_entries([{"table": "acl", "match": {"dst_port": {"value": 80, "mask": 0xFFFF}},
                           "action": "acl_permit"}])  # fmt: skip
    prog.publish_ternary("acl", permit)
    port80 = [d for d in frames if d[36:38] == (80).to_bytes(2, "big")]
    for data in port80 * 3:
        assert xdp_target.process(data, 1).verdict == "forward"
    acl_raw = prog.ternary_raw("acl")[0][prog.ternary_value_offset("acl") :]
    assert counts(prog, "acl", acl_raw) == (18, 18 * len(port80[0]))
    # republishing with one more entry keeps the first one's counts
    extra = acl_entries([{"table": "acl", "match": {"dst_port": {"value": 9, "mask": 0xFFFF}},
                          "action": "acl_deny"}])  # fmt: skip
    prog.publish_ternary("acl", [*permit, *extra])
    raws = prog.ternary_raw("acl")
    assert counts(prog, "acl", raws[0][prog.ternary_value_offset("acl") :])[0] == 18
    assert counts(prog, "acl", raws[1][prog.ternary_value_offset("acl") :])[0] == 0
    # tenant 1's classification entry saw every tenant-1 packet: 6 port-80 packets + setup
    t1 = build_entry(PIPELINE, "tenant_classify",
                     {"ingress_port": 1, "vni": 0, "dst_addr": "10.1.0.0/16"},
                     "set_tenant", {"tenant_id": 1})  # fmt: skip
    key = encode_key(PIPELINE, t1)
    assert counts(prog, "tenant_classify", prog.lookup_raw("tenant_classify", key))[0] == 6
    # an entry written with counter values (P4Runtime counter_data, MODIFY keeping them)
    prog.write_raw("tenant_classify", key, encode_value(PIPELINE, t1, 1000, 64000), 1)
    xdp_target.process(port80[0], 1)
    assert counts(prog, "tenant_classify", prog.lookup_raw("tenant_classify", key)) == (
        1001,
        64000 + len(port80[0]),
    )


# ---- last-hit times, the interface port map ----------------------------------------------


def test_last_hit_is_the_coarse_monotonic_clock_to_a_tick(xdp_target) -> None:
    from cyberstar.xdp.maps import encode_key

    both = Both(xdp_target)
    frames = acl_world(both)
    entry = flow(1, "192.168.0.1", "10.1.0.5", 1, PORTS[0])
    key = encode_key(PIPELINE, entry)
    lay = table_layout(PIPELINE, "flow_table")
    for _ in range(3):
        xdp_target.process(frames[0], 1)
        now = coarse_now_ns()
        hit = lay.value_head.unpack(xdp_target.prog.lookup_raw("flow_table", key))["last_hit_ns"]
        assert now - 10_000_000 <= hit <= now + 10_000_000  # a tick is at most 10 ms
        time.sleep(0.05)


def test_an_interface_whose_port_slot_is_taken_is_found_in_the_spill_map(xdp_target) -> None:
    prog = xdp_target.prog
    both = Both(xdp_target)
    frames = acl_world(both)
    taken = 1 + PORT_SLOTS  # the loopback's slot, held by another interface
    saved = dict(prog._port_slots)
    try:
        prog._port_slots.pop(1 % PORT_SLOTS, None)
        prog.set_ingress_port(taken, 9)
        prog.set_ingress_port(1, 1)  # the loopback, where test runs arrive, must spill
        spill = prog._map("ports_spill")
        assert spill[spill.Key(1)].value == 1
        assert xdp_target.process(frames[0], 1).verdict == "forward"
    finally:
        prog._port_slots.clear()
        prog._port_slots.update(saved)
        spill = prog._map("ports_spill")
        del spill[spill.Key(1)]
        prog.set_ingress_port(1, 1)
