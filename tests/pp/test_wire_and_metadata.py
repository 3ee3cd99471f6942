"""The two pieces the PP node serves millions of entries with: table entries written as
protobuf bytes (held to the generated protobuf classes), and the metadata store (held to a
dict by random operations)."""

from __future__ import annotations

import random

import pytest
from finsy.proto import p4r
from hypothesis import given, settings
from hypothesis import strategies as st

from cyberstar.p4rt import wire
from cyberstar.p4rt.codec import table_entry_to_proto
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pp.metadata import INLINE, MetadataStore

FLOW = PIPELINE.table("flow_table")


def writer() -> wire.ExactEntryWriter:
    actions = {}
    for ref in FLOW.actions:
        action = PIPELINE.action(ref.action)
        actions[action.id] = list(range(1, len(action.params) + 1))
    return wire.ExactEntryWriter(FLOW.id, list(range(1, len(FLOW.key) + 1)), actions)


u = st.integers
FLOWS = st.tuples(u(0, 2**16 - 1), u(0, 2**32 - 1), u(0, 2**32 - 1), u(0, 255), u(0, 2**16 - 1),
                  u(0, 2**16 - 1))  # fmt: skip


@settings(max_examples=300, deadline=None)  # a shared, loaded machine: no timing
@given(match=FLOWS, params=st.tuples(u(0, 2**32 - 1), u(0, 2**16 - 1), u(0, 2**16 - 1)),
       idle=u(0, 2**62), meta=st.binary(max_size=40),
       counters=st.none() | st.tuples(u(0, 2**63 - 1), u(0, 2**63 - 1)),
       elapsed=st.none() | u(0, 2**62))  # fmt: skip
def test_written_entries_parse_as_the_protobuf_classes_build_them(
    match, params, idle, meta, counters, elapsed
) -> None:
    names = [k.name for k in FLOW.key]
    entry = TableEntry("flow_table", dict(zip(names, match, strict=True)), "snat",
                       {"src_addr": params[0], "src_port": params[1], "nexthop_id": params[2]},
                       idle_timeout_ns=idle, metadata=meta)  # fmt: skip
    expected = p4r.Entity(table_entry=table_entry_to_proto(PIPELINE, entry))
    if counters is not None:
        expected.table_entry.counter_data.packet_count = counters[0]
        expected.table_entry.counter_data.byte_count = counters[1]
    if elapsed is not None:
        expected.table_entry.time_since_last_hit.elapsed_ns = elapsed
    raw = writer().entity(match, PIPELINE.action("snat").id, params, idle, meta, counters, elapsed)
    assert p4r.Entity.FromString(raw) == expected
    response = p4r.ReadResponse.FromString(wire.read_response([raw, raw]))
    assert list(response.entities) == [expected, expected]
    note = p4r.StreamMessageResponse.FromString(wire.idle_timeout_notification([raw], 7))
    assert list(note.idle_timeout_notification.table_entry) == [expected.table_entry]
    assert note.idle_timeout_notification.timestamp == 7


KEYS = st.binary(min_size=20, max_size=20)
OPS = st.lists(
    st.tuples(st.sampled_from(["put", "remove", "get"]),
              st.lists(st.tuples(st.sampled_from([bytes([i]) * 20 for i in range(40)]) | KEYS,
                                 st.binary(max_size=INLINE + 4)), max_size=60)),
    max_size=40,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_metadata_store_behaves_as_a_dict(ops) -> None:
    store, model = MetadataStore(20), {}
    for op, pairs in ops:
        pairs = list(dict(pairs).items())  # distinct keys in one call
        keys = [k for k, _ in pairs]
        if op == "put":
            store.put(keys, [v for _, v in pairs])
            for k, v in pairs:
                if v:
                    model[k] = v
                else:
                    model.pop(k, None)
        elif op == "remove":
            store.remove(keys)
            for k in keys:
                model.pop(k, None)
        assert store.get(keys) == [model.get(k, b"") for k in keys]
        assert len(store) == len(model)
    everything = list(model)
    assert store.get(everything) == [model[k] for k in everything]


def test_metadata_store_grows_and_keeps_everything() -> None:
    store = MetadataStore(16)
    keys = [i.to_bytes(16, "little") for i in range(50_000)]
    for i in range(0, len(keys), 1000):
        store.put(keys[i : i + 1000], [b"m" + k[:3] for k in keys[i : i + 1000]])
    store.remove(keys[::2])
    assert len(store) == 25_000
    assert store.get(keys[:6]) == [b"", b"m" + keys[1][:3], b"", b"m" + keys[3][:3], b"",
                                   b"m" + keys[5][:3]]  # fmt: skip
    assert store.nbytes / len(store) <= 34 / 0.375 * 2  # deleted slots not yet reclaimed


def test_metadata_store_under_churn_matches_a_dict() -> None:
    """Long runs of puts and removes over a small key space: probe paths through removed
    slots, their reuse, and the rebuilds that drop them and grow or keep the table."""
    rng = random.Random(7)
    space = [rng.randbytes(13) for _ in range(3000)]  # 13 bytes: a key of two partial words
    store, model = MetadataStore(13), {}
    for step in range(3000):
        keys = rng.sample(space, rng.choice((1, 2, 7, 60, 400)))
        if rng.random() < 0.5:
            values = [rng.randbytes(rng.choice((0, 1, 14, INLINE, INLINE + 1, 30)))
                      for _ in keys]  # fmt: skip
            store.put(keys, values)
            for k, v in zip(keys, values, strict=True):
                if v:
                    model[k] = v
                else:
                    model.pop(k, None)
        else:
            store.remove(keys)
            for k in keys:
                model.pop(k, None)
        assert len(store) == len(model), step
    assert store.get(space) == [model.get(k, b"") for k in space]
    store.clear()
    assert len(store) == 0 and store.get(space[:3]) == [b"", b"", b""]


def test_metadata_store_refuses_a_wrong_key_and_changes_nothing() -> None:
    store = MetadataStore(16)
    store.put([b"k" * 16], [b"one"])
    with pytest.raises(ValueError, match=r"key 1: expected 16 bytes, found b'short'"):
        store.put([b"j" * 16, b"short"], [b"two", b"three"])
    with pytest.raises(TypeError, match="value 0: expected bytes"):
        store.put([b"j" * 16], ["text"])
    with pytest.raises(ValueError, match="1 keys but 2 values"):
        store.put([b"j" * 16], [b"a", b"b"])
    with pytest.raises(ValueError, match="key 0: expected 16 bytes"):
        store.remove([b"k" * 17])
    assert store.get([b"k" * 16, b"j" * 16]) == [b"one", b""] and len(store) == 1
