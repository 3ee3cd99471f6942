"""FM's pieces on their own: the rule cache's packing, FM.yaml errors, fabric next hops, and
PacketIns FM cannot use."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from conformance.cases import client_tcp
from finsy.proto import p4r

from cyberstar.fm.cache import (
    CachedRule,
    Connection,
    RuleCache,
    connection_cookie,
    entry_key,
    parse_cookie,
)
from cyberstar.fm.config import OffloadConfig, parse_fm_config
from cyberstar.fm.master import fabric_entries
from cyberstar.fm.offload import Offloader
from cyberstar.fm.slowpath import SlowPath
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.yamlconf import ConfigError


def flow(sport: int, action: str, params: dict, src: str = "10.1.0.2") -> CachedRule:
    e = build_entry(
        PIPELINE, "flow_table",
        {"tenant_id": 7, "src_addr": src, "dst_addr": "10.2.0.2", "protocol": 6,
         "src_port": sport, "dst_port": 8080},
        action, params, idle_timeout_ns=30_000_000_000,
    )  # fmt: skip
    return CachedRule(entry_key(e), 0b101, e)


def two_rule_connection() -> Connection:
    """Connection 42 in slot 777: an SNAT rule and a NAT rule, each on PPs 0 and 2."""
    return Connection(
        42, 777,
        [flow(40000, "snat", {"src_addr": "203.0.113.9", "src_port": 20000, "nexthop_id": 2}),
         flow(40001, "nat", {"src_addr": "203.0.113.9", "src_port": 20001,
                             "dst_addr": "10.2.0.3", "dst_port": 8080, "nexthop_id": 2})],
    )  # fmt: skip


def test_cache_packs_and_unpacks_connections() -> None:
    cache = RuleCache(PIPELINE)
    conn = two_rule_connection()
    cache.put(conn)
    assert len(cache) == 2 and cache.connections == 1
    back = cache.get(conn.rules[1].key)
    assert back is not None and back.conn_id == 42 and back.slot == 777
    for got, want in zip(back.rules, conn.rules, strict=True):
        assert got.key == want.key and got.installed == want.installed
        assert (got.entry.action, got.entry.params, got.entry.match) == (
            want.entry.action, want.entry.params, want.entry.match)  # fmt: skip
        assert got.entry.idle_timeout_ns == want.entry.idle_timeout_ns
        assert parse_cookie(got.entry.metadata) == (42, 777)
    cache.remove(back)
    assert len(cache) == 0 and cache.connections == 0
    assert parse_cookie(b"junk") is None
    assert parse_cookie(connection_cookie(1, 2)) == (1, 2)


def test_cache_marks_a_pp_bit_in_the_packed_record() -> None:
    cache = RuleCache(PIPELINE)
    conn = two_rule_connection()
    cache.put(conn)  # both rules installed on PPs 0 and 2 (0b101)
    assert cache.mark(conn, 0b010, True) == 0b111
    assert cache.mark(conn, 0b001, False) == 0b110
    for key in conn.rule_keys():  # both keys see the change, and nothing else moved
        back = cache.get(key)
        assert back is not None and (back.conn_id, back.slot) == (42, 777)
        assert [r.installed for r in back.rules] == [0b110, 0b110]
        assert [(r.key, r.entry.action, r.entry.params) for r in back.rules] == [
            (r.key, r.entry.action, r.entry.params) for r in conn.rules]  # fmt: skip
    assert cache.mark(Connection(43, 777, conn.rules), 0b001, True) is None  # another's
    other = Connection(
        42,
        777,
        [flow(40002, "snat", {"src_addr": "203.0.113.9", "src_port": 20002, "nexthop_id": 2})],
    )
    assert cache.mark(other, 0b001, True) is None  # not cached
    assert cache.mark(conn, 0b110, False) == 0
    assert len(cache) == 2 and cache.connections == 1


# The first three lines of every FM.yaml below: plaintext on loopback, a local etcd.
BASE = "fm_id: fm1\nplaintext: true\netcd: {endpoints: [127.0.0.1:2379], plaintext: true}\n"


def test_fm_config_errors_name_the_line(tmp_path) -> None:
    good = BASE + "pp_nodes:\n  - id: pp1\n    address: 127.0.0.1:9559\n"
    cfg = parse_fm_config(good, "fm.yaml")
    assert cfg.pp_nodes[0].address == "127.0.0.1:9559"
    assert cfg.max_in_flight == 2
    assert parse_fm_config(good + "batch: {max_in_flight: 1}\n").max_in_flight == 1
    cases = [
        (BASE + "batch: {max_in_flight: 0}\n", "fm.yaml:4", "max_in_flight"),
        # A PP takes at most 256 PacketOuts in one StreamWrite: a larger batch would be refused.
        (BASE + "batch: {max_packets: 257}\n", "fm.yaml:4",
         "max_packets: expected an integer in 1..256, found 257"),
        (BASE + "pp_nodes:\n  - id: pp1\n    adress: x\n", "fm.yaml:5", "missing"),
        (BASE + "batchh: {}\n", "fm.yaml:4", "unknown key"),
        (BASE.replace("[127.0.0.1:2379]", "[nohost]"), "fm.yaml:3", "expected host:port"),
        (BASE.replace("[127.0.0.1:2379]", "[]"), "fm.yaml:3", "at least one endpoint"),
        (BASE.replace("{endpoints", "[127.0.0.1:2379]\nx: {endpoints"), "fm.yaml:3",
         "bare list"),
        (BASE + "pp_nodes:\n  - {id: a, address: x}\n  - {id: a, address: unix:y}\n",
         "fm.yaml:5", "not local"),
        (BASE + "pp_nodes:\n  - {id: a, address: unix:x}\n  - {id: a, address: unix:y}\n",
         "fm.yaml:6", "listed twice"),
        (BASE + "fabric:\n  vni: 5\n  nodes:\n    - {id: a, port: 1, mac: nope,"
         " address: 1.2.3.4, gateway_mac: '02:00:00:00:00:01'}\n", "fm.yaml:7", "nope"),
        ("fm_id: [\n", "fm.yaml:2", "not valid YAML"),
        ("fm_id: fm1\netcd: {endpoints: [127.0.0.1:2379], plaintext: true}\n", "fm.yaml:1",
         "missing key 'tls'"),
        (BASE.replace("plaintext: true}", "tls: {ca: a, cert: b, key: c}}").replace(
            "etcd: {endpoints: [127.0.0.1:2379]", "etcd: {endpoints: [10.0.0.1:2379]", 1
         ) + "http: {listen: 0.0.0.0:9300, token_file: t}\n", "fm.yaml:4", "not local"),
    ]  # fmt: skip
    for text, where, what in cases:
        with pytest.raises(ConfigError) as err:
            parse_fm_config(text, "fm.yaml")
        assert str(err.value).startswith(where), str(err.value)
        assert what in str(err.value)
    rules = tmp_path / "bad.json"
    rules.write_text(json.dumps([{"table": "nope", "action": "x"}]))
    with pytest.raises(ConfigError, match="entry 0: unknown table 'nope'"):
        parse_fm_config(
            BASE + "pp_nodes:\n  - {id: a, address: unix:x, rules: bad.json}\n",
            "fm.yaml",
            tmp_path,
        )


def test_fm_admin_token_is_required_and_long_enough(tmp_path) -> None:
    http = "http: {listen: 127.0.0.1:9300, token_file: t}\n"
    with pytest.raises(ConfigError, match="cannot read"):
        parse_fm_config(BASE + http, "fm.yaml", tmp_path)
    (tmp_path / "t").write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        parse_fm_config(BASE + http, "fm.yaml", tmp_path)
    (tmp_path / "t").write_text("0123456789abcdef0123\n")
    cfg = parse_fm_config(BASE + http, "fm.yaml", tmp_path)
    assert cfg.http is not None and cfg.http.token == "0123456789abcdef0123"
    with pytest.raises(ConfigError, match="missing required key 'token_file'"):
        parse_fm_config(BASE + "http: {listen: 127.0.0.1:9300}\n", "fm.yaml", tmp_path)


def test_fabric_is_a_full_mesh_of_vxlan_next_hops() -> None:
    cfg = parse_fm_config(
        BASE
        + "fabric:\n  vni: 9000\n  nexthop_base: 1000\n  nodes:\n"
        + "".join(
            f"    - {{id: pp{i}, port: 2, mac: '02:00:00:00:00:0{i}', address: 198.51.100.{i},"
            f" gateway_mac: '02:00:00:00:00:fe'}}\n"
            for i in (1, 2, 3)
        ),
        "fm.yaml",
    )
    assert cfg.fabric is not None
    entries = fabric_entries(cfg.fabric, "pp2")
    assert [e.match["nexthop_id"] for e in entries] == [1000, 1002]
    assert {e.params["dst_addr"] for e in entries} == {0xC6336401, 0xC6336403}
    assert all(e.action == "set_next_hop_vxlan" and e.params["vni"] == 9000 for e in entries)
    assert fabric_entries(cfg.fabric, "not-a-fabric-node") == []


class _NoRouter:
    map = None


def test_packet_ins_fm_cannot_use_are_counted() -> None:
    slow = SlowPath(RuleCache(PIPELINE), _NoRouter(), 16, 0.001)
    no_meta = p4r.PacketIn(payload=b"\x00" * 60)
    assert slow._classify(None, no_meta, 0.0) == (None, None)
    assert slow.stats["packet_in_without_metadata"] == 1
    garbage = p4r.PacketIn(payload=b"\x00" * 10)
    garbage.metadata.add(metadata_id=1, value=b"\x01")
    garbage.metadata.add(metadata_id=3, value=b"\x07")
    assert slow._classify(None, garbage, 0.0) == (None, None)
    assert slow.stats["packet_in_unparsable"] == 1
    # bmv2 hands what XDP passes to the host stack to the CPU port, reason "host": not a flow.
    host = p4r.PacketIn(payload=bytes(client_tcp()))
    fields = [f.name for f in PIPELINE.packet_in.fields]
    for name, value in (("ingress_port", 1), ("reason", 2), ("tenant_id", 0)):
        host.metadata.add(metadata_id=fields.index(name) + 1, value=bytes([value]))
    assert PIPELINE.punt_reasons[2] == "host"
    assert slow._classify(None, host, 0.0) == (None, None)
    assert slow.stats["packet_in_host"] == 1


def test_a_bmv2_node_gets_its_device_config_from_the_file_named(tmp_path) -> None:
    (tmp_path / "pp.json").write_bytes(b'{"program": "pp.p4"}')
    cfg = parse_fm_config(
        BASE + "pp_nodes:\n  - {id: a, address: unix:x, device_config: pp.json}\n"
        "  - {id: b, address: unix:y}\n",
        "fm.yaml",
        tmp_path,
    )
    assert [n.device_config for n in cfg.pp_nodes] == [b'{"program": "pp.p4"}', b""]
    with pytest.raises(ConfigError, match=r"fm.yaml:5.*cannot read .*missing.json"):
        parse_fm_config(
            BASE + "pp_nodes:\n  - {id: a, address: unix:x, device_config: missing.json}\n",
            "fm.yaml",
            tmp_path,
        )


def test_offload_config_names_its_nodes_and_a_threshold() -> None:
    nodes = (
        BASE + 'pp_nodes:\n  - {id: pp1, address: "unix:x"}\n  - {id: dpu1, address: "unix:y"}\n'
    )
    cfg = parse_fm_config(nodes + "offload:\n  pairs: [{host: pp1, dpu: dpu1}]\n", "fm.yaml")
    assert cfg.offload is not None
    assert cfg.offload.pairs == (("pp1", "dpu1"),)
    assert (cfg.offload.min_packets_per_s, cfg.offload.interval_s) == (1000, 0.5)
    cases = [
        ("offload:\n  pairs: [{host: pp1, dpu: dpu9}]\n", "fm.yaml:8", "not one of pp_nodes"),
        ("offload:\n  pairs: [{host: pp1, dpu: pp1}]\n", "fm.yaml:8", "already in another"),
        ("offload:\n  pairs: []\n", "fm.yaml:8", "at least one"),
        ("offload:\n  pairs: [{host: pp1, dpu: dpu1}]\n  min_packets_per_s: 0\n",
         "fm.yaml:9", "nothing would ever be an elephant"),
        ("offload:\n  pairs: [{host: pp1, dpu: dpu1}]\n  interval_ms: 1\n", "fm.yaml:9",
         "interval_ms"),
    ]  # fmt: skip
    for text, where, what in cases:
        with pytest.raises(ConfigError) as err:
            parse_fm_config(nodes + text, "fm.yaml")
        assert str(err.value).startswith(where), str(err.value)
        assert what in str(err.value)


class _FakeDpu:
    """A DPU session whose table takes only the first `room` rules of a write."""

    def __init__(self, index: int, room: int) -> None:
        self.name, self.index, self.room = "dpu1", index, room
        self.written: list = []

    async def write(self, updates: list) -> None:
        self.written += updates[: self.room]
        if len(updates) > self.room:
            errors = [(i, "RESOURCE_EXHAUSTED", "table full")
                      for i in range(self.room, len(updates))]  # fmt: skip
            raise P4RuntimeError(grpc.StatusCode.UNKNOWN, "Write failed", errors)


@pytest.mark.parametrize("room", [2, 1, 0])
def test_offload_records_exactly_the_rules_the_dpu_took(room: int) -> None:
    cache = RuleCache(PIPELINE)
    conn = Connection(
        9, 3,
        [flow(40000, "snat", {"src_addr": "203.0.113.9", "src_port": 20000, "nexthop_id": 2}),
         flow(8080, "dnat", {"dst_addr": "10.1.0.2", "dst_port": 40000, "nexthop_id": 1},
              src="10.2.0.2")],
    )  # fmt: skip
    for rule in conn.rules:
        rule.installed = 0b1  # on the host only
    cache.put(conn)
    dpu = _FakeDpu(index=1, room=room)
    config = OffloadConfig((("pp1", "dpu1"),), 100, 0, 0.5, 2.0)
    offloader = Offloader(config, cache, {"pp1": None, "dpu1": dpu}, asyncio.Event())
    asyncio.run(offloader._offload(dpu, [cache.get(conn.rules[0].key)]))
    back = cache.get(conn.rules[0].key)
    assert [bool(r.installed & 0b10) for r in back.rules] == [i < room for i in range(2)]
    assert all(r.installed & 0b1 for r in back.rules), "the host keeps its rules"
    assert all(u.entity.table_entry.idle_timeout_ns == 2_000_000_000 for u in dpu.written)
    assert offloader.stats["offloads"] == (1 if room == 2 else 0)
    assert offloader.stats["offloaded_rules"] == room
    assert offloader.stats["offload_write_errors"] == (0 if room == 2 else 1)


def test_cache_rebuilt_rule_by_rule_from_pp_tables() -> None:
    """A new leader reads the PP nodes' flow tables in whatever order they come (hash order,
    node by node) and gets back the connections, each rule's nodes included."""
    import random

    from cyberstar.fm.cache import CacheBuilder
    from cyberstar.p4rt.codec import table_entry_to_proto
    from cyberstar.p4rt.decode import PipelineDecoder

    conns = []
    for c in range(200):
        fwd = flow(20000 + c, "snat", {"src_addr": "203.0.113.9", "src_port": 30000 + c,
                                       "nexthop_id": 2})  # fmt: skip
        back = flow(40000 + c, "dnat", {"dst_addr": "10.1.0.2", "dst_port": 20000 + c,
                                        "nexthop_id": 1}, src="10.2.0.9")  # fmt: skip
        conns.append(Connection(c, c % 7, [fwd, back]))
    # node 0 holds every rule, node 2 the forward rules of even connections
    held = [(conn, r, 0) for conn in conns for r in conn.rules]
    held += [(conn, conn.rules[0], 2) for conn in conns if conn.conn_id % 2 == 0]
    random.Random(5).shuffle(held)
    cache = RuleCache(PIPELINE)
    decoder = PipelineDecoder(PIPELINE).table(PIPELINE.table("flow_table").id)
    builder = CacheBuilder(cache, decoder)
    for conn, rule, node in held:
        te = table_entry_to_proto(PIPELINE, rule.entry)
        te.metadata = connection_cookie(conn.conn_id, conn.slot)
        builder.add(te, node)
    foreign = table_entry_to_proto(PIPELINE, conns[0].rules[0].entry)  # no cookie: not FM's
    builder.add(foreign, 0)
    assert builder.finish() == 200 and builder.rules == 500 and builder.skipped == 1
    assert cache.connections == 200 and len(cache) == 400
    for conn in conns:
        for rule in conn.rules:
            got = cache.get(rule.key)
            assert got is not None and (got.conn_id, got.slot) == (conn.conn_id, conn.slot)
            assert [r.key for r in sorted(got.rules, key=lambda r: r.key)] == sorted(
                r.key for r in conn.rules)  # fmt: skip
            by_key = {r.key: r for r in got.rules}
            on_node_2 = rule is conn.rules[0] and conn.conn_id % 2 == 0
            assert by_key[rule.key].installed == 0b001 | (0b100 if on_node_2 else 0)
            assert by_key[rule.key].entry.params == rule.entry.params
            assert by_key[rule.key].entry.idle_timeout_ns == rule.entry.idle_timeout_ns
