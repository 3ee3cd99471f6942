"""The binary forms on the hot paths: packed connections (moves, snapshots), chain updates with
blobs, and the in-place reply rules — each must say exactly what the plain form says."""

from __future__ import annotations

import pytest

from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import sc_pb2
from cyberstar.sc.flows import FlowKey, ShardId
from cyberstar.sc.replication import decode_ops, encode_ops
from cyberstar.sc.rules import fill_rule, rule_proto
from cyberstar.sc.state import (
    Connection,
    FlowRule,
    NodeState,
    Shard,
    StateError,
    pack_connections,
    unpack_connections,
)
from sc.helpers import ask, engine_from, tcp
from sc.test_nfs import FULL, SNAT

SHARD = ShardId(7, 0, 1024)
FW_ONLY = """
  - id: 3
    chain: [fw]
    forward_nexthop: 2
    return_nexthop: 1
    nfs:
      fw: {kind: firewall, rules: [{action: allow, src: [10.0.0.0/8]}]}
"""


def mixed_connections() -> list[Connection]:
    """Connections of every shape the NFs make, plus hand-made odd ones."""
    conns = []
    for tenants, tenant, dport in ((SNAT, 7, 443), (FULL, 9, 80), (FW_ONLY, 3, 22)):
        eng = engine_from(tenants)
        for i in range(3):
            assert ask(eng, tenant, tcp("10.0.0.1", 1000 + i, "198.51.100.10", dport)).code == 0
        for shard in eng.state.shards.values():
            conns += shard.connections()
    assert len(conns) == 9
    key = FlowKey(17, 1, 2, 3, 4)
    # no reverse rule, released bits set, two holdings of two pools, a big timeout
    conns.append(
        Connection(5, 1023, 1 << 62, FlowRule(key, "forward", (9,)), None, (("a", 7), ("b", 1)), 1)
    )
    return conns


def test_packed_connections_roundtrip_every_shape() -> None:
    conns = mixed_connections()
    back, fkeys, rkeys, rconns = unpack_connections(pack_connections(conns))
    assert sorted(c.wire() for c in back) == sorted(c.wire() for c in conns)
    assert fkeys == [c.forward.key for c in back]
    assert rkeys == [c.reverse.key for c in rconns]
    assert all(type(c.forward.key) is FlowKey and type(c.forward) is FlowRule for c in back)


def test_packed_released_bits_are_overridden_by_forward_key() -> None:
    conns = mixed_connections()
    bits = {c.forward.key: i % 4 for i, c in enumerate(conns)}
    back, *_ = unpack_connections(pack_connections(conns, bits))
    assert {c.forward.key: c.released for c in back} == bits


def test_insert_many_refuses_a_clash_and_garbage() -> None:
    conns = mixed_connections()
    shard = Shard(SHARD)
    shard.insert_many(pack_connections(conns))
    assert shard.count == len(conns)
    assert len(shard.conns) == sum(len(c.rule_keys()) for c in conns)
    with pytest.raises(StateError):
        shard.insert_many(pack_connections(conns[:1]))
    with pytest.raises(StateError):
        Shard(SHARD).insert_many(pack_connections(conns)[:-3])


def test_snapshot_with_blobs_restores_the_same_state() -> None:
    eng = engine_from(FULL)
    for i in range(50):
        ask(eng, 9, tcp("10.0.0.2", 2000 + i, "198.51.100.10", 80))
    data, blobs = encode_ops([eng.state.snapshot()])
    assert blobs, "connections travel as blobs"
    (snap,) = decode_ops(data, blobs)
    restored = NodeState.restore(snap)
    assert restored.snapshot() == eng.state.snapshot()


def test_ops_without_bytes_are_plain_json() -> None:
    ops = [["rel", "7:0-1024", [6, 1, 2, 3, 4]], ["create", "7:0-1024", {"nat/ports": [[], []]}]]
    data, blobs = encode_ops(ops)
    assert blobs == [] and decode_ops(data, blobs) == ops
    data, blobs = encode_ops([["merge_part", "7:0-1024", "op", {"part": 0, "conns": b"\x00x"}]])
    assert blobs == [b"\x00x"]
    assert decode_ops(data, blobs)[0][3] == {"part": 0, "conns": b"\x00x"}


@pytest.mark.parametrize("action", ["forward", "snat", "dnat", "nat", "flow_drop"])
def test_fill_rule_is_rule_proto(action: str) -> None:
    n = len(next(a for a in PIPELINE.actions if a.name == action).params)
    rule = FlowRule(FlowKey(6, 0x0A000001, 0xC6336401, 40000, 80), action, tuple(range(1, n + 1)))
    msg = sc_pb2.Rule()
    fill_rule(msg, 7, rule, 123)
    assert msg == rule_proto(7, rule, 123)
