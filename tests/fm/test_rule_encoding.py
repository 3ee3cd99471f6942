"""FM's per-connection encodings against the general ones they shortcut: SC's rules to table
entries (`flow_table_entry` vs `table_entry`) and entries to serialized P4Runtime Updates
(`ExactTableEncoder` vs `codec.update`, itself held to the P4Runtime spec by tests/pp)."""

from __future__ import annotations

import pytest
from finsy.proto import p4r
from hypothesis import given, settings
from hypothesis import strategies as st
from pp.test_exact_wire import entries as exact_wire_entries

from cyberstar.p4rt.codec import ExactTableEncoder, update, write_of, write_request_bytes
from cyberstar.p4rt.messages import write_request
from cyberstar.pipeline.entries import EntryError, TableEntry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import sc_pb2
from cyberstar.sc.flows import FlowKey
from cyberstar.sc.rules import fill_rule, flow_table_entry, packed_rules, table_entry
from cyberstar.sc.state import FlowRule

TABLE = PIPELINE.table("flow_table")
ACTIONS = [r.action for r in TABLE.actions if r.action != "punt_miss"]
ENCODER = ExactTableEncoder(PIPELINE, "flow_table")


def bits(width: int):
    return st.integers(0, (1 << width) - 1)


@st.composite
def entries(draw) -> TableEntry:
    match = {k.name: draw(bits(k.width)) for k in TABLE.key}
    action = draw(st.sampled_from(ACTIONS))
    params = {p.name: draw(bits(p.width)) for p in PIPELINE.action(action).params}
    idle = draw(st.sampled_from([0, 1, 30_000_000_000, (1 << 63) - 1]))
    metadata = draw(st.binary(max_size=200))
    return TableEntry("flow_table", match, action, params, 0, False, idle, metadata)


@settings(max_examples=300, deadline=None)
@given(entries(), st.sampled_from([p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE]))
def test_exact_encoder_equals_the_general_update(entry: TableEntry, kind: int) -> None:
    assert p4r.Update.FromString(ENCODER.update(kind, entry)) == update(kind, PIPELINE, entry)


@settings(max_examples=50, deadline=None)
@given(st.lists(entries(), max_size=5), st.integers(0, (1 << 128) - 1), st.integers(0, 1 << 40))
def test_write_request_bytes_equal_the_message(batch, election_id: int, device_id: int) -> None:
    raw = write_request_bytes(device_id, election_id, [ENCODER.update(1, e) for e in batch])
    expected = write_request(device_id, election_id, [update(1, PIPELINE, e) for e in batch])
    assert p4r.WriteRequest.FromString(raw) == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(entries(), st.booleans()), max_size=5), st.integers(0, (1 << 128) - 1))
def test_a_write_of_messages_and_bytes_equals_the_message(batch, election_id: int) -> None:
    """What the clients send (`write_of`): Updates given as messages or as bytes, in order."""
    given = [ENCODER.update(1, e) if as_bytes else update(1, PIPELINE, e) for e, as_bytes in batch]
    expected = write_request(3, election_id, [update(1, PIPELINE, e) for e, _ in batch])
    assert p4r.WriteRequest.FromString(write_of(3, election_id, given)) == expected


def test_the_encoder_refuses_a_table_with_non_exact_keys() -> None:
    with pytest.raises(ValueError, match="non-exact"):
        ExactTableEncoder(PIPELINE, "acl")


def _rule(action: str, params: tuple[int, ...]) -> sc_pb2.Rule:
    msg = sc_pb2.Rule()
    key = FlowKey(6, 0x0A010002, 0x0A020002, 40000, 80)
    fill_rule(msg, 7, FlowRule(key, action, params), 30_000_000_000)
    return msg


@settings(max_examples=200, deadline=None)
@given(entries())
def test_flow_table_entry_equals_table_entry(entry: TableEntry) -> None:
    msg = sc_pb2.Rule()
    key = FlowKey(*(entry.match[n] for n in ("protocol", "src_addr", "dst_addr", "src_port",
                                              "dst_port")))  # fmt: skip
    params = tuple(entry.params[p.name] for p in PIPELINE.action(entry.action).params)
    fill_rule(msg, entry.match["tenant_id"], FlowRule(key, entry.action, params), 5)
    general = table_entry(msg)
    fast = flow_table_entry(msg, b"cookie")
    assert fast == TableEntry(general.table, general.match, general.action, general.params,
                              general.priority, general.is_default, 5, b"cookie")  # fmt: skip


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: setattr(r.match[1], "value", 1 << 32),  # src_addr beyond 32 bits
        lambda r: r.params.__setitem__("src_port", 1 << 16),  # a parameter beyond its width
        lambda r: r.params.__setitem__("bogus", 1),  # a parameter the action has not
        lambda r: r.params.pop("nexthop_id"),  # a missing parameter
        lambda r: setattr(r, "action", "punt_miss"),  # a default-only action
        lambda r: setattr(r, "action", "no_such_action"),
        lambda r: setattr(r.match[0], "name", "vni"),  # a field the table has not
        lambda r: setattr(r, "table", "next_hop"),
    ],
)
def test_flow_table_entry_refuses_what_table_entry_refuses(mutate) -> None:
    msg = _rule("snat", (0xCB007109, 50000, 2))
    mutate(msg)
    with pytest.raises(EntryError):
        table_entry(msg)
    with pytest.raises(EntryError):
        flow_table_entry(msg, b"")


@settings(max_examples=800, deadline=None)
@given(te=exact_wire_entries("flow_table"))
def test_fm_reads_a_rule_from_its_wire_form_as_from_its_fields(te: p4r.TableEntry) -> None:
    """A new leader's cache rebuild reads each rule a PP node holds from its wire form when it
    can (`RuleCodec.rule_bytes_wire`): the same key, packed rule and cookie as from the
    message's fields, on entries well-formed or with one thing wrong."""
    from cyberstar.fm.cache import RuleCodec
    from cyberstar.p4rt.decode import PipelineDecoder

    codec = RuleCodec(PIPELINE)
    decoder = PipelineDecoder(PIPELINE).table(PIPELINE.table("flow_table").id)
    parsed = codec.wire.parse(te.SerializeToString())
    if parsed is None:
        return

    def outcome(read, *args) -> object:
        try:
            return read(*args)
        except Exception as exc:  # an idle timeout beyond the cache's 32-bit milliseconds
            return type(exc)

    packed = outcome(codec.rule_bytes_wire, parsed, 5)
    if packed is None:
        return  # read field by field, as before
    assert packed == outcome(codec.rule_bytes, te, 5, decoder)
    assert parsed[4] == te.metadata


# ---- packed rules: what SC answers FM with when FM asks (`pipeline/flow_records.py`) ---------


def _flow_rule(entry: TableEntry) -> FlowRule:
    key = FlowKey(*(entry.match[n] for n in ("protocol", "src_addr", "dst_addr", "src_port",
                                              "dst_port")))  # fmt: skip
    params = tuple(entry.params[p.name] for p in PIPELINE.action(entry.action).params)
    return FlowRule(key, entry.action, params)


def _packed_and_general(batch: list[TableEntry], idle_ns: int, conn_id: int, slot: int
                        ) -> tuple[bytes, list[TableEntry]]:  # fmt: skip
    """SC's packed rules for the entries of `batch` (the first one's tenant for all: one
    connection's rules), and the entries the general parser reads from the protobuf rules SC
    sends otherwise, with FM's cookie for connection `conn_id`."""
    from cyberstar.fm.cache import connection_cookie

    tenant = batch[0].match["tenant_id"]
    rules = [_flow_rule(e) for e in batch]
    packed = packed_rules(tenant, rules, idle_ns)
    assert packed is not None
    cookie = connection_cookie(conn_id, slot)
    expected = []
    for rule in rules:
        msg = sc_pb2.Rule()
        fill_rule(msg, tenant, rule, idle_ns)
        general = table_entry(msg)
        expected.append(TableEntry(general.table, general.match, general.action, general.params,
                                   0, False, idle_ns, cookie))  # fmt: skip
    return packed, expected


@settings(max_examples=300, deadline=None)
@given(st.lists(entries(), min_size=1, max_size=3),
       st.sampled_from([0, 1_000_000, 30_000_000_000, 4_294_967_295_000_000]),
       st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF))  # fmt: skip
def test_packed_rules_read_back_as_the_protobuf_rules(
    batch: list[TableEntry], idle_ns: int, conn_id: int, slot: int
) -> None:
    """FM's connection from SC's packed rules equals the one the general parser builds from
    the protobuf rules SC sends otherwise (same tenant for all: one connection's rules)."""
    from cyberstar.fm.cache import RuleCodec

    packed, expected = _packed_and_general(batch, idle_ns, conn_id, slot)
    conn = RuleCodec(PIPELINE).from_packed(conn_id, slot, packed)
    assert (conn.conn_id, conn.slot) == (conn_id, slot)
    assert [r.entry for r in conn.rules] == expected
    assert all(r.installed == 0 for r in conn.rules)


@settings(max_examples=200, deadline=None)
@given(st.lists(entries(), min_size=1, max_size=3),
       st.sampled_from([0, 1_000_000, 30_000_000_000, 4_294_967_295_000_000]),
       st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF),
       st.integers(0, (1 << 64) - 1))  # fmt: skip
def test_a_connection_from_packed_rules_is_written_and_cached_without_its_entries(
    batch: list[TableEntry], idle_ns: int, conn_id: int, slot: int, installed: int
) -> None:
    """FM writes and caches a new connection from SC's packed rules without building their
    table entries: each INSERT it writes is the general encoder's for the entry the protobuf
    rules give, and its cache record (the installed bits changed) is the one the entries
    pack into."""
    from cyberstar.fm.cache import CachedRule, Connection, RuleCodec

    packed, expected = _packed_and_general(batch, idle_ns, conn_id, slot)
    codec = RuleCodec(PIPELINE)
    conn = codec.from_packed(conn_id, slot, packed)
    written = [p4r.Update.FromString(codec.insert_update(r)) for r in conn.rules]
    assert written == [update(p4r.Update.INSERT, PIPELINE, e) for e in expected]
    for r in conn.rules:
        r.installed = installed
    pairs = zip(conn.rules, expected, strict=True)
    eager = Connection(conn_id, slot, [CachedRule(r.key, installed, e) for r, e in pairs])
    assert codec.pack(conn) == codec.pack(eager)
    assert codec.unpack(codec.pack(conn)) == eager


def test_a_packed_rule_byte_by_byte() -> None:
    """The layout written out by hand from the module's description and the pipeline spec:
    snat is the flow table's second action (index 1); its parameters src_addr (32 bits),
    src_port (16) and nexthop_id (16) take 4, 2 and 2 bytes."""
    key = FlowKey(6, 0x0A010002, 0x0A020002, 40000, 80)
    packed = packed_rules(7, [FlowRule(key, "snat", (0xCB007109, 50000, 2))], 30_000_000_000)
    assert packed == bytes.fromhex(
        "0007" "0a010002" "0a020002" "06" "9c40" "0050"  # tenant, src, dst, proto, ports
        "0000000000000000"  # installed on no PP yet
        "00007530"  # idle timeout: 30 000 ms
        "01"  # snat
        "cb007109" "c350" "0002"  # src_addr, src_port 50 000, nexthop 2
    )  # fmt: skip


def test_rules_that_do_not_fit_the_layout_go_as_protobuf() -> None:
    key = FlowKey(6, 0x0A010002, 0x0A020002, 40000, 80)
    rule = FlowRule(key, "snat", (0xCB007109, 50000, 2))
    assert packed_rules(7, [rule], 1_500_000) is None  # not whole milliseconds
    assert packed_rules(7, [rule], (1 << 32) * 1_000_000) is None  # beyond 32-bit milliseconds
    assert packed_rules(7, [rule._replace(params=(1 << 32, 50000, 2))], 0) is None
    assert packed_rules(7, [rule._replace(action="no_such_action")], 0) is None
    assert packed_rules(1 << 16, [rule], 0) is None  # a tenant beyond 16 bits


def _snat(tenant: int = 7) -> bytes:
    key = FlowKey(6, 0x0A010002, 0x0A020002, 40000, 80)
    packed = packed_rules(tenant, [FlowRule(key, "snat", (0xCB007109, 50000, 2))], 0)
    assert packed is not None
    return packed


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda b: b[:-1], "parameters are cut short"),
        (lambda b: b + b"\x00", "1 bytes left"),
        (lambda b: b[:27] + bytes([6]) + b[28:], "action index 6"),  # the table has 6
        (lambda b: b[:27] + bytes([5]) + b[28:], "punt_miss is the table's default only"),
    ],
)
def test_fm_refuses_packed_rules_that_break_the_layout(damage, said: str) -> None:
    from cyberstar.fm.cache import RuleCodec

    codec = RuleCodec(PIPELINE)
    assert len(codec.from_packed(1, 2, _snat() + _snat(8)).rules) == 2
    with pytest.raises(ValueError, match=said):
        codec.from_packed(1, 2, damage(_snat()))


def test_the_layout_digest_names_the_pipeline() -> None:
    """Another flow table (here: one parameter wider) has another digest, so an SC node of
    another pipeline answers FM with protobuf rules rather than records FM misreads."""
    import copy

    from cyberstar.pipeline.flow_records import FlowLayout

    other = copy.deepcopy(PIPELINE)
    param = other.action("snat").params[1]
    object.__setattr__(param, "width", 24)
    assert FlowLayout(other).digest != FlowLayout(PIPELINE).digest
    assert FlowLayout(copy.deepcopy(PIPELINE)).digest == FlowLayout(PIPELINE).digest != 0
    # ... and reads its own widths: a 24-bit parameter takes 4 bytes, and 2**24 does not fit.
    key = bytes.fromhex("0007" "0a010002" "0a020002" "06" "9c40" "0050")  # fmt: skip
    wide = FlowLayout(other)
    fits = wide.pack_rule(key, 0, "snat", (1, (1 << 24) - 1, 2))
    assert wide.count_checked(fits) == 1
    with pytest.raises(ValueError, match=r"snat src_port=16777216 does not fit in 24 bits"):
        wide.count_checked(wide.pack_rule(key, 0, "snat", (1, 1 << 24, 2)))
