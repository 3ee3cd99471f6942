"""FM's half of a connection's teardown (`SlowPath._expire`): a PP node reports rules idle; FM
deletes them from that node and, once no PP node holds any rule of the connection, releases
each of its flow keys in SC with the connection's slot. Expected messages are built here with
protobuf from the entries' fields, not by the code under test."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import pytest
from finsy.proto import p4r

from cyberstar.fm.cache import CachedRule, Connection, RuleCache, connection_cookie, entry_key
from cyberstar.fm.slowpath import SlowPath
from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.sc.client import ReleaseKey
from cyberstar.sc.flows import FlowKey

TENANT, SLOT, CONN_ID = 7, 5, 0x1234
CLIENT, SERVER, PUBLIC = 0x0A010002, 0x0A020002, 0xCB007109
FORWARD = FlowKey(6, CLIENT, SERVER, 40000, 80)
RETURN = FlowKey(6, SERVER, PUBLIC, 80, 50000)


def rule(key: FlowKey, action: str, params: dict, installed: int) -> CachedRule:
    match = {"tenant_id": TENANT, **key._asdict()}  # FlowKey's fields are the table's names
    entry = build_entry(PIPELINE, "flow_table", match, action, params, idle_timeout_ns=30 * 10**9)
    entry = dataclasses.replace(entry, metadata=connection_cookie(CONN_ID, SLOT))
    return CachedRule(entry_key(entry), installed, entry)


def connection(installed: int) -> Connection:
    return Connection(CONN_ID, SLOT, [
        rule(FORWARD, "snat", {"src_addr": PUBLIC, "src_port": 50000, "nexthop_id": 2}, installed),
        rule(RETURN, "dnat", {"dst_addr": CLIENT, "dst_port": 40000, "nexthop_id": 1}, installed),
    ])  # fmt: skip


def reported(conn: Connection) -> list[p4r.TableEntry]:
    """The rules as a PP node's idle notification carries them: whole table entries."""
    return [update(p4r.Update.INSERT, PIPELINE, r.entry).entity.table_entry for r in conn.rules]


class Router:
    map = None

    def __init__(self) -> None:
        self.released: list[ReleaseKey] = []

    async def release(self, keys):
        self.released += keys
        return SimpleNamespace(failed=[], reply=None)


class Session:
    def __init__(self, index: int) -> None:
        self.index = index
        self.written: list[p4r.Update] = []

    async def write(self, updates) -> None:
        for u in updates:
            self.written.append(p4r.Update.FromString(u) if isinstance(u, bytes) else u)


def deletes_of(entries: list[p4r.TableEntry]) -> list[p4r.Update]:
    return [p4r.Update(type=p4r.Update.DELETE, entity=p4r.Entity(table_entry=te)) for te in entries]


RELEASES = [ReleaseKey(TENANT, FORWARD, SLOT), ReleaseKey(TENANT, RETURN, SLOT)]


@pytest.mark.parametrize("behind_dpu", [False, True], ids=["host", "dpu-path"])
def test_idle_rules_are_deleted_then_the_connection_released(behind_dpu):
    cache, router = RuleCache(PIPELINE), Router()
    slow = SlowPath(cache, router, 16, 0.001)
    if behind_dpu:  # the offload-aware path: PP 0 has a DPU (index 5) in front of it
        slow.dpu_of = {0: 5}
    conn = connection(installed=0b1)
    cache.put(conn)
    pp = Session(0)
    forward, back = reported(conn)

    asyncio.run(slow._expire(pp, [forward]))
    assert pp.written == deletes_of([forward])
    assert router.released == []  # the return rule is still on PP 0
    assert [r.installed for r in cache.get(conn.rules[1].key).rules] == [0, 1]

    asyncio.run(slow._expire(pp, [back]))
    assert pp.written == deletes_of([forward, back])
    assert router.released == RELEASES
    assert cache.get(conn.rules[0].key) is None and cache.connections == 0
    assert slow.stats["rules_expired"] == 2 and slow.stats["sc_releases"] == 2


def test_a_connection_another_node_still_holds_is_not_released():
    cache, router = RuleCache(PIPELINE), Router()
    slow = SlowPath(cache, router, 16, 0.001)
    conn = connection(installed=0b11)  # both rules on PP 0 and PP 1
    cache.put(conn)
    asyncio.run(slow._expire(Session(0), reported(conn)))
    assert router.released == []
    assert [r.installed for r in cache.get(conn.rules[0].key).rules] == [0b10, 0b10]
    asyncio.run(slow._expire(Session(1), reported(conn)))
    assert router.released == RELEASES and cache.connections == 0


def test_an_idle_rule_fm_never_cached_is_deleted_and_nothing_released():
    router = Router()
    slow = SlowPath(RuleCache(PIPELINE), router, 16, 0.001)
    entries = reported(connection(installed=1))
    pp = Session(0)
    asyncio.run(slow._expire(pp, entries))
    assert pp.written == deletes_of(entries) and router.released == []
