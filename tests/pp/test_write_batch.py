"""A Write of flow-table INSERTs or DELETEs read whole from its bytes (`ExactWire.batch`,
`HashTable.write_request`): taken only when every Update is of the wire reader's shape, and then
the same results, table, metadata, counts and quotas as the same Updates written one by one.
Bytes it takes are bytes protobuf reads alike; garbage is refused without a crash."""

from __future__ import annotations

import pytest
from finsy.proto import p4r
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pp.quota import FlowQuota
from pp.scrape import metered_agent, metric

pytestmark = pytest.mark.root
INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
FLOWS = PIPELINE.table("flow_table")
NOW = 123_456_789_000


@pytest.fixture
def fresh(xdp_target):
    """A new device on the loaded program, with its maps emptied (and emptied after). The
    session's program outlives the devices: the tenants a quota marked full are unmarked, or
    later tests would see their misses dropped (`flow_quota`) instead of punted."""
    from cyberstar.pp.device import XdpDevice

    made = []

    def empty() -> None:
        xdp_target.prog.clear()
        for device in made:
            device.quota.clear()

    def make(quota: FlowQuota | None = None):
        empty()
        made.append(XdpDevice(xdp_target.prog, [], quota))
        return made[-1]

    yield make
    empty()


def flow(i: int, tenant: int = 7, cookie: bytes = b"", idle: int = 0, dnat: bool = False):
    match = {"tenant_id": tenant, "src_addr": 0x0B000000 + i, "dst_addr": 0x0A000005,
             "protocol": 6, "src_port": 1024 + i, "dst_port": 80}  # fmt: skip
    if dnat:
        action = ("dnat", {"dst_addr": 0x0A0000C8 + i, "dst_port": 8080, "nexthop_id": 3})
    else:
        action = ("snat", {"src_addr": 0xCB007109, "src_port": 2000 + i, "nexthop_id": 2})
    entry = TableEntry("flow_table", match, *action, metadata=cookie, idle_timeout_ns=idle)
    return entry


def request(updates: list[p4r.Update]) -> bytes:
    req = p4r.WriteRequest(device_id=1, atomicity=p4r.WriteRequest.CONTINUE_ON_ERROR)
    req.election_id.low = 5
    req.updates.extend(updates)
    return req.SerializeToString()


def codes(results) -> list[str]:
    return ["OK" if r is None else r.code.name for r in results]


def contents(device) -> dict:
    """Every flow entry as the device reads it back (last hit left out), and its metadata."""
    out = {}
    entity = p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOWS.id))
    for chunk in device.read(entity):
        for e in p4r.ReadResponse.FromString(chunk).entities:
            te = e.table_entry
            key = b"".join(m.SerializeToString() for m in te.match)
            out[key] = (te.action.SerializeToString(), te.idle_timeout_ns, te.metadata)
    return out


def written_both_ways(fresh, before: list, batch: list, quota=None):
    """(results, contents, count, held quota) after `before` then `batch`, once with `batch`
    read whole and once update by update; and whether the first took the whole path."""
    outcomes = []
    for whole in (True, False):
        device = fresh(FlowQuota(**quota) if quota else None)
        if before:
            assert device.write(before) == [None] * len(before)
        taken = device.stats["writes_read_whole"]
        results = device.write(batch, request(batch) if whole else None)
        table = device._hash["flow_table"]
        outcomes.append((codes(results), contents(device), table.count, dict(device.quota.held),
                         device.stats["writes_read_whole"] - taken))  # fmt: skip
    (*whole, took), (*single, _) = outcomes
    return whole, single, took


def test_inserts_read_whole_give_what_they_give_one_by_one(fresh) -> None:
    """An INSERT of an entry present fails (ALREADY_EXISTS) and keeps the present entry's action
    and metadata; the others are written with their params, idle timeouts and metadata."""
    before = [update(INSERT, PIPELINE, flow(1, cookie=b"first"))]
    batch = [update(INSERT, PIPELINE, e) for e in (
        flow(0), flow(1, cookie=b"second", dnat=True), flow(2, cookie=b"c2", idle=30 * 10**9),
        flow(3, tenant=9, dnat=True), flow(4, cookie=b"\x00" * 14),
    )]  # fmt: skip
    whole, single, took = written_both_ways(fresh, before, batch)
    assert took == 1
    assert whole == single
    results, table, count, held = whole
    assert results == ["OK", "ALREADY_EXISTS", "OK", "OK", "OK"]
    assert count == 5 and held == {7: 4, 9: 1}
    by_cookie = {meta: (action, idle) for action, idle, meta in table.values()}
    assert set(by_cookie) == {b"first", b"", b"c2", b"\x00" * 14}
    first = update(INSERT, PIPELINE, flow(1)).entity.table_entry.action.SerializeToString()
    assert by_cookie[b"first"] == (first, 0)  # the present entry's, not the refused one's
    assert by_cookie[b"c2"][1] == 30 * 10**9


def test_deletes_read_whole_give_what_they_give_one_by_one(fresh) -> None:
    before = [update(INSERT, PIPELINE, flow(i, cookie=bytes([i]) * 3)) for i in range(4)]
    batch = [update(DELETE, PIPELINE, flow(i)) for i in (0, 9, 2)]
    whole, single, took = written_both_ways(fresh, before, batch)
    assert took == 1
    assert whole == single
    results, table, count, held = whole
    assert results == ["OK", "NOT_FOUND", "OK"]
    assert count == 2 and held == {7: 2}
    assert sorted(meta for _, _, meta in table.values()) == [b"\x01" * 3, b"\x03" * 3]


def test_quotas_and_a_full_table_refuse_the_same_inserts(fresh) -> None:
    batch = [update(INSERT, PIPELINE, flow(i, tenant=7 if i % 2 else 8)) for i in range(6)]
    whole, single, took = written_both_ways(fresh, [], batch, quota={"tenants": {7: 1}})
    assert took == 1
    assert whole == single
    assert whole[0] == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED", "OK", "RESOURCE_EXHAUSTED"]
    assert whole[2] == 4 and whole[3] == {7: 1, 8: 3}

    device = fresh()
    table = device._hash["flow_table"]
    table.count = table.kmap.capacity - 2  # as if the table held that many
    results = device.write(batch[:4], request(batch[:4]))
    assert codes(results) == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    assert "is full" in results[2].message
    assert table.count == table.kmap.capacity


@pytest.mark.parametrize("odd", [
    "a modify", "inserts and deletes", "a key twice", "another table", "no action",
    "a negative idle timeout", "a priority", "counter data", "no updates",
])  # fmt: skip
def test_other_writes_are_read_update_by_update_with_the_same_results(fresh, odd: str) -> None:
    batch = [update(INSERT, PIPELINE, flow(i)) for i in range(3)]
    before = [update(INSERT, PIPELINE, flow(0))]
    if odd == "a modify":
        batch[1] = update(MODIFY, PIPELINE, flow(0, dnat=True))
    elif odd == "inserts and deletes":
        batch[1] = update(DELETE, PIPELINE, flow(0))
    elif odd == "a key twice":
        batch[2] = update(INSERT, PIPELINE, flow(1, dnat=True))
    elif odd == "another table":
        deny = build_entry(PIPELINE, "acl", {"dst_port": {"value": 23, "mask": 0xFFFF}},
                           "acl_deny", {}, 5)  # fmt: skip
        batch[1] = update(INSERT, PIPELINE, deny)
    elif odd == "no action":
        batch[1].entity.table_entry.ClearField("action")
    elif odd == "a negative idle timeout":
        batch[1].entity.table_entry.idle_timeout_ns = -1
    elif odd == "a priority":
        batch[1].entity.table_entry.priority = 3
    elif odd == "counter data":
        batch[1].entity.table_entry.counter_data.packet_count = 4
    elif odd == "no updates":
        batch = []
    whole, single, took = written_both_ways(fresh, before, batch)
    assert took == 0
    assert whole == single


@st.composite
def mutated_requests(draw) -> bytes:
    n = draw(st.integers(1, 4))
    kind = draw(st.sampled_from([INSERT, DELETE]))
    raw = bytearray(request([
        update(kind, PIPELINE, flow(i, cookie=draw(st.binary(max_size=20)),
                                    idle=draw(st.sampled_from([0, 10**9]))))
        for i in range(n)
    ]))  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(raw) - 1))
        what = draw(st.integers(0, 2))
        if what == 0:
            raw[at] = draw(st.integers(0, 255))
        elif what == 1:
            raw.insert(at, draw(st.integers(0, 255)))
        else:
            del raw[at]
    return bytes(raw)


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(raw=mutated_requests())
def test_request_bytes_read_whole_are_refused_or_read_as_protobuf_reads_them(xdp_target, raw):
    """Changed, inserted and dropped bytes anywhere (tags, lengths, the request's own fields):
    the whole reader refuses them, or reads each Update as the reader of one Update reads what
    protobuf parses (keys, kinds, values, metadata). The server parses every request before the
    device sees it, so bytes protobuf refuses never reach the reader; here they must not crash
    it (the request's other fields, such as the election id, it skips unread)."""
    from cyberstar.pp.device import XdpDevice

    table = XdpDevice(xdp_target.prog, [])._hash["flow_table"]
    got = table._wire.batch(raw, NOW)
    try:
        updates = p4r.WriteRequest.FromString(raw).updates
    except DecodeError:
        return  # answered INVALID_ARGUMENT by the server
    if got is None:
        return
    assert got.count == len(updates)
    ks = table.kmap.key_size
    metas = dict(zip(got.meta_positions, got.meta_values, strict=True))
    for i, upd in enumerate(updates):
        one = table.prepare_update(i, upd)
        assert one is not None and one.kind == got.kind
        assert got.keys[i * ks : (i + 1) * ks] == one.key
        if got.kind == INSERT:
            assert metas.get(i, b"") == one.metadata
            vs = table.kmap.value_size
            assert got.values[i * vs : (i + 1) * vs] == table._value(one, 0, 0, NOW)


def test_every_prefix_of_a_request_is_refused_or_read_as_protobuf_reads_it(xdp_target) -> None:
    from cyberstar.pp.device import XdpDevice

    table = XdpDevice(xdp_target.prog, [])._hash["flow_table"]
    raw = request([update(INSERT, PIPELINE, flow(i, cookie=b"ck", idle=10**9)) for i in range(3)])
    taken = []
    for cut in range(len(raw) + 1):
        got = table._wire.batch(raw[:cut], NOW)
        if got is not None:
            assert got.count == len(p4r.WriteRequest.FromString(raw[:cut]).updates)
            taken.append(got.count)
    assert taken == [1, 2, 3]  # cut after each whole Update (the request's head comes first)


def test_a_write_through_grpc_is_read_whole() -> None:
    """The server hands the device the request's bytes: a client's batch of flow INSERTs takes
    the whole path (the agent's metric says so) and reads back as written."""
    with metered_agent("whole") as (node, port):
        client = node.primary_with_pipeline()
        entries = [flow(100 + i, cookie=b"fm") for i in range(50)]
        client.write([update(INSERT, PIPELINE, e) for e in entries])
        everything = [p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOWS.id))]
        read = client.read(everything)
        assert len(read) == 50 and {e.table_entry.metadata for e in read} == {b"fm"}
        assert metric(port, node.tls, "cyberstar_pp_writes_read_whole_total") == 1
        client.write([update(DELETE, PIPELINE, e) for e in entries])
        assert client.read(everything) == []
        assert metric(port, node.tls, "cyberstar_pp_writes_read_whole_total") == 2
