"""A Write's exact entries read from their wire form (`p4rt/exact_wire.py`) give the same update
as reading them field by field, whatever the entry: every table kept in a hash map (the flow
table), every update kind, well-formed or with one thing wrong (a value empty, too wide or
with leading zeros, a field missing, repeated, out of order or of another match kind, a
priority, counter data, a negative timeout, long metadata). And bytes the wire reader accepts
are bytes a protobuf parser reads the same way: mutated entries it takes are parsed by protobuf
and checked against the field reader."""

from __future__ import annotations

import pytest
from finsy.proto import p4r
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyberstar.codegen.xdp_layout import TableKind, table_layout
from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE

pytestmark = pytest.mark.root
HASH_TABLES = sorted(
    t.name for t in PIPELINE.tables if table_layout(PIPELINE, t.name).kind is TableKind.HASH
)
KINDS = [p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE]
SETTINGS = settings(max_examples=600, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.fixture(scope="module")
def tables(xdp_target):
    from cyberstar.pp.device import XdpDevice

    tables = XdpDevice(xdp_target.prog, [])._hash
    assert sorted(tables) == HASH_TABLES
    return tables


def _canonical(width: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, (1 << width) - 1).map(
        lambda v: v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
    )


def _odd(width: int) -> st.SearchStrategy[bytes]:
    """Not a canonical value of `width` bits: empty, padded with zeros, or too wide."""
    n = (width + 7) // 8
    return st.one_of(
        st.just(b""),
        _canonical(width).map(lambda b: b"\x00" + b),
        st.integers(1 << width, (1 << (8 * n + 8)) - 1).map(
            lambda v: v.to_bytes((v.bit_length() + 7) // 8, "big")
        ),
    )


DEVIATIONS = [None] * 12 + [
    "table id", "field order", "field missing", "field repeated", "field id", "ternary",
    "value", "no action", "action id", "param order", "param missing", "param value",
    "priority", "counter data", "default action", "time since last hit", "long metadata",
]  # fmt: skip


@st.composite
def entries(draw, table_name: str) -> p4r.TableEntry:
    """A well-formed entry of `table_name`, or one with one thing wrong (most are well-formed,
    so that both readers are compared on the entries the wire reader takes)."""
    odd = draw(st.sampled_from(DEVIATIONS))
    table = PIPELINE.table(table_name)
    te = p4r.TableEntry(table_id=table.id + (odd == "table id"))
    fields = list(enumerate(table.key, start=1))
    if odd == "field order":
        fields = draw(st.permutations(fields))
    spoil = draw(st.integers(0, len(fields) - 1))  # the field a field deviation is about
    for at, (fid, key) in enumerate(fields):
        here = at == spoil
        if here and odd == "field missing":
            continue
        for _ in range(2 if here and odd == "field repeated" else 1):
            fm = te.match.add(field_id=fid + 40 if here and odd == "field id" else fid)
            value = draw(_odd(key.width) if here and odd == "value" else _canonical(key.width))
            if here and odd == "ternary":
                fm.ternary.value, fm.ternary.mask = value, b"\xff"
            else:
                fm.exact.value = value
    if odd != "no action":
        action = draw(st.sampled_from([PIPELINE.action(r.action) for r in table.actions]))
        a = te.action.action
        a.action_id = 0x01000999 if odd == "action id" else action.id
        params = list(enumerate(action.params, start=1))
        if odd == "param order":
            params = draw(st.permutations(params))
        spoil = draw(st.integers(0, max(0, len(params) - 1)))
        for at, (pid, p) in enumerate(params):
            here = at == spoil
            if here and odd == "param missing":
                continue
            bad = here and odd == "param value"
            a.params.add(param_id=pid, value=draw(_odd(p.width) if bad else _canonical(p.width)))
    te.priority = draw(st.integers(1, 100)) if odd == "priority" else 0
    te.idle_timeout_ns = draw(st.sampled_from([0, 30 * 10**9, 300_000_000, 1, 2**62, -5]))
    te.metadata = draw(st.binary(min_size=128, max_size=300) if odd == "long metadata"
                       else st.binary(max_size=40))  # fmt: skip
    if odd == "counter data":
        te.counter_data.packet_count = draw(st.integers(0, 5))
    te.is_default_action = odd == "default action"
    if odd == "time since last hit":
        te.time_since_last_hit.elapsed_ns = 5
    return te


@pytest.mark.parametrize("name", HASH_TABLES)
def test_the_wire_reader_and_the_field_reader_agree(tables, name: str) -> None:
    table = tables[name]

    @SETTINGS
    @given(te=entries(name), kind=st.sampled_from(KINDS))
    def check(te: p4r.TableEntry, kind: int) -> None:
        assert table.prepare(3, kind, te) == table.prepare_fields(3, kind, te)

    check()


def _fm_entry() -> p4r.TableEntry:
    """A connection's SNAT rule as FM writes it, with its cookie and idle timeout."""
    entry = build_entry(
        PIPELINE, "flow_table",
        {"tenant_id": 7, "src_addr": "10.1.0.100", "dst_addr": "10.2.0.2", "protocol": 6,
         "src_port": 40000, "dst_port": 80},
        "snat", {"src_addr": "203.0.113.64", "src_port": 1024, "nexthop_id": 2},
    )  # fmt: skip
    te = update(p4r.Update.INSERT, PIPELINE, entry).entity.table_entry
    te.idle_timeout_ns, te.metadata = 30 * 10**9, b"\x00\x01cookie"
    return te


def test_a_controllers_flow_entries_take_the_wire_path(tables) -> None:
    """FM's entries are read from the wire: the values are those written, and the map key is
    the flow table's key struct (addresses, tenant, ports, protocol; little-endian)."""
    raw = _fm_entry().SerializeToString()
    rest = (PIPELINE.action("snat").id, [0xCB007140, 1024, 2], 30 * 10**9, b"\x00\x01cookie")
    wire = tables["flow_table"]._wire
    assert wire.parse(raw) == ([7, 0x0A010064, 0x0A020002, 6, 40000, 80], *rest)
    key = (bytes([0x64, 0, 1, 10]) + bytes([2, 0, 2, 10]) + (7).to_bytes(2, "little")
           + (40000).to_bytes(2, "little") + (80).to_bytes(2, "little") + b"\x06\x00")  # fmt: skip
    assert wire.parse_key(raw) == (key, 7, *rest)


@st.composite
def mutated(draw, table_name: str) -> bytes:
    raw = bytearray(draw(entries(table_name)).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        what = draw(st.integers(0, 2))
        if what == 0 and raw:
            raw[at] = draw(st.integers(0, 255))
        elif what == 1:
            raw.insert(at, draw(st.integers(0, 255)))
        elif raw:
            del raw[at]
    return bytes(raw)


@pytest.mark.parametrize("name", HASH_TABLES)
def test_bytes_the_wire_reader_takes_are_read_alike_by_protobuf(tables, name: str) -> None:
    table = tables[name]

    @SETTINGS
    @given(raw=mutated(name), kind=st.sampled_from(KINDS))
    def check(raw: bytes, kind: int) -> None:
        parsed = table._wire.parse_key(raw)
        if parsed is None:
            return
        te = p4r.TableEntry.FromString(raw)  # must parse: the shape is protobuf's
        update = table._from_wire(3, kind, parsed)
        if update is not None:  # else `prepare` reads `te` field by field
            assert update == table.prepare_fields(3, kind, te)

    check()


def test_entry_bytes_off_by_one_are_refused_or_read_as_protobuf_reads_them(tables) -> None:
    """Each byte of a flow entry (tags, lengths, values), and each pair of bytes, one more and
    one less: the wire reader refuses the bytes, or protobuf parses them to an entry with the
    same update."""
    table = tables["flow_table"]
    te = _fm_entry()
    raw = te.SerializeToString()
    assert table._wire.parse_key(raw) is not None
    taken = 0
    changes = [((at,), d) for at in range(len(raw)) for d in (1, -1)]
    # and pairs: a length and the length around it, one more or less together
    changes += [((a, b), d) for a in range(len(raw)) for b in range(a + 1, len(raw))
                for d in (1, -1)]  # fmt: skip
    for where, delta in changes:
        changed = bytearray(raw)
        for at in where:
            changed[at] = (changed[at] + delta) % 256
        parsed = table._wire.parse_key(bytes(changed))
        if parsed is None:
            continue
        taken += 1  # value bytes: still a well-formed entry
        update = table._from_wire(3, p4r.Update.INSERT, parsed)
        other = p4r.TableEntry.FromString(bytes(changed))
        assert update == table.prepare_fields(3, p4r.Update.INSERT, other), where
    assert 0 < taken < len(changes)


def _odd_table_entry(key: list[bytes], params: list[bytes], idle: bytes = b"") -> bytes:
    """An entry of a table with 9- and 24-bit keys and a 9-bit param (table 5, action 3),
    written byte by byte from p4runtime.proto's field numbers."""
    raw = b"\x08\x05"
    for fid, v in enumerate(key, start=1):
        raw += bytes([0x12, len(v) + 6, 0x08, fid, 0x12, len(v) + 2, 0x0A, len(v)]) + v
    body = b"\x08\x03" + b"".join(
        bytes([0x22, len(v) + 4, 0x10, pid, 0x1A, len(v)]) + v
        for pid, v in enumerate(params, start=1)
    )
    return raw + bytes([0x1A, len(body) + 2, 0x0A, len(body)]) + body + idle


def test_values_wider_than_an_odd_width_field_are_refused() -> None:
    """A 9-bit field takes 0x01ff, not 0x0200 (two bytes either way); the same for params and
    24-bit fields. (The flow table's fields are all whole bytes.)"""
    from cyberstar.p4rt.exact_wire import ExactWire

    wire = ExactWire(5, [9, 24], {3: [9]}, (8, [(0, 2), (4, 4)], 0))
    ok = _odd_table_entry([b"\x01\xff", b"\xff\xff\xff"], [b"\x01\xff"])
    te = p4r.TableEntry.FromString(ok)
    assert [int.from_bytes(m.exact.value, "big") for m in te.match] == [0x1FF, 0xFFFFFF]
    assert wire.parse(ok) == ([0x1FF, 0xFFFFFF], 3, [0x1FF], 0, b"")
    assert wire.parse_key(ok) == (b"\xff\x01\x00\x00\xff\xff\xff\x00", 0x1FF, 3, [0x1FF], 0, b"")
    for bad in (
        _odd_table_entry([b"\x02\x00", b"\xff\xff\xff"], [b"\x01\xff"]),
        _odd_table_entry([b"\x01\xff", b"\x01\xff\xff\xff"], [b"\x01\xff"]),
        _odd_table_entry([b"\x01\xff", b"\xff\xff\xff"], [b"\x02\x00"]),
    ):
        p4r.TableEntry.FromString(bad)  # protobuf takes it: the width is P4Runtime's rule
        assert wire.parse(bad) is None and wire.parse_key(bad) is None


def test_an_idle_timeout_varint_is_read_up_to_its_ten_bytes() -> None:
    """A negative int64 is a 10-byte varint, read as its unsigned value (>= 2**63, which the
    table then refuses); an 11th byte is no varint at all, and protobuf refuses it too."""
    from cyberstar.p4rt.exact_wire import ExactWire

    wire = ExactWire(5, [9, 24], {3: [9]})
    entry = _odd_table_entry(
        [b"\x01", b"\x02"], [b"\x03"], b"\x48" + b"\xfb" + b"\xff" * 8 + b"\x01"
    )
    assert p4r.TableEntry.FromString(entry).idle_timeout_ns == -5
    assert wire.parse(entry) == ([1, 2], 3, [3], 2**64 - 5, b"")
    too_long = _odd_table_entry([b"\x01", b"\x02"], [b"\x03"], b"\x48" + b"\xff" * 10 + b"\x01")
    with pytest.raises(DecodeError):
        p4r.TableEntry.FromString(too_long)
    assert wire.parse(too_long) is None


def test_every_prefix_of_an_entry_is_refused_or_read_as_protobuf_reads_it(tables) -> None:
    """The reader never reads past the end: each cut of an FM entry is refused, or (cut
    between two fields) read as protobuf reads it."""
    table = tables["flow_table"]
    raw = _fm_entry().SerializeToString()
    taken = 0
    for cut in range(len(raw) + 1):
        parsed = table._wire.parse_key(raw[:cut])
        if parsed is None:
            continue
        taken += 1
        update = table._from_wire(3, p4r.Update.INSERT, parsed)
        other = p4r.TableEntry.FromString(raw[:cut])
        assert update == table.prepare_fields(3, p4r.Update.INSERT, other), cut
    assert taken == 4  # cut after the match, the action, the idle timeout; and whole


@pytest.mark.parametrize("name", HASH_TABLES)
def test_an_updates_wire_form_reads_as_its_entry(tables, name: str) -> None:
    """A whole Update read from its bytes: what the entry's reader gives, with the Update's
    kind; an unspecified or unknown kind is left to the general path."""
    table = tables[name]

    @SETTINGS
    @given(te=entries(name), kind=st.sampled_from([0, *KINDS, 4, 300]))
    def check(te: p4r.TableEntry, kind: int) -> None:
        got = table.prepare_update(3, p4r.Update(type=kind, entity=p4r.Entity(table_entry=te)))
        if kind not in KINDS:
            assert got is None
            return
        parsed = table._wire.parse_key(te.SerializeToString())
        assert got == (table._from_wire(3, kind, parsed) if parsed is not None else None)
        if got is not None:
            assert got == table.prepare_fields(3, kind, te)

    check()


def test_update_bytes_off_by_one_are_refused_or_read_as_protobuf_reads_them(tables) -> None:
    """Each byte of an FM Update, one more and one less (its kind, the Entity's tags and
    lengths, the entry): refused, or read as protobuf reads the changed bytes."""
    table = tables["flow_table"]
    raw = p4r.Update(type=p4r.Update.INSERT,
                     entity=p4r.Entity(table_entry=_fm_entry())).SerializeToString()  # fmt: skip
    assert table._wire.parse_update(raw) is not None
    taken = 0
    for at in range(len(raw)):
        for delta in (1, -1):
            changed = bytearray(raw)
            changed[at] = (changed[at] + delta) % 256
            parsed = table._wire.parse_update(bytes(changed))
            if parsed is None:
                continue
            taken += 1
            upd = p4r.Update.FromString(bytes(changed))
            assert parsed[0] == upd.type
            update = table._from_wire(3, parsed[0], parsed[1:])
            assert update == table.prepare_fields(3, upd.type, upd.entity.table_entry), at
    assert 0 < taken < 2 * len(raw)
