"""Fuzzing what we read from etcd (issue 8): any value under our prefix either parses into what
it claims to be or is refused with ValueError (logged once, skipped); nothing else escapes, and
the readers keep every good value next to any number of bad ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import SimpleNamespace

import needs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyberstar.lab.certs import LabCerts
from cyberstar.lab.sc import LocalEtcd
from cyberstar.sc import coord
from cyberstar.sc.flows import ShardId
from cyberstar.sc.routing import ShardMap

FUZZ = settings(max_examples=500, deadline=None, derandomize=True)
GOOD_CHAIN = json.dumps(
    {
        "epoch": 3,
        "nodes": [
            {"id": "a", "address": "127.0.0.1:1", "incarnation": "x", "chain": "127.0.0.1:2"}
        ],
    }
).encode()
GOOD_MEMBER = b'{"scg": "scg1", "address": "127.0.0.1:1", "incarnation": "x", "chain": ""}'


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 5))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))])

    return st.one_of(build(), st.binary(max_size=200), st.from_type(str).map(str.encode))


@FUZZ
@given(raw=mutated(GOOD_CHAIN))
def test_chain_values(raw: bytes) -> None:
    try:
        chain = coord.parse_chain("scg1", raw)
    except ValueError:
        return
    assert isinstance(chain.epoch, int) and all(isinstance(n.id, str) for n in chain.nodes)


@FUZZ
@given(raw=mutated(GOOD_MEMBER))
def test_member_values(raw: bytes) -> None:
    try:
        member = coord.parse_member(raw)
    except ValueError:
        return
    assert isinstance(member["scg"], str) and isinstance(member["incarnation"], str)


@FUZZ
@given(raw=mutated(b'{"scg": "scg1"}'), key=mutated(b"/cyberstar/shards/7/0-512"))
def test_shard_keys_and_values(raw: bytes, key: bytes) -> None:
    keys = coord.Keys()
    try:
        sid = keys.shard_of_key(key)
    except ValueError:
        sid = None
    if sid is not None:
        assert isinstance(sid, ShardId) and 0 <= sid.lo < sid.hi
    with contextlib.suppress(ValueError):
        assert isinstance(coord.parse_owner(raw), str)


@FUZZ
@given(raw=st.binary(max_size=100), revision=st.integers(0, 2**63))
def test_a_bad_value_is_counted_once_per_revision(raw: bytes, revision: int) -> None:
    bad = coord.BadValues()
    kv = SimpleNamespace(key=b"/cyberstar/shards/1/0-1", value=raw, mod_revision=revision)
    for _ in range(3):
        bad.skip(kv, "fuzz")
    assert bad.count == 1


@pytest.mark.slow
@settings(max_examples=1, deadline=None, derandomize=True)
@given(values=st.lists(st.tuples(st.sampled_from(["shards/7/", "scg/", "shards/"]),
                                 st.binary(max_size=12), st.binary(max_size=60)),
                       min_size=30, max_size=30))  # fmt: skip
def test_a_shard_map_loads_next_to_random_values(values, tmp_path_factory) -> None:
    needs.etcd()
    tmp = tmp_path_factory.mktemp("etcd")
    etcd = LocalEtcd(tmp, LabCerts(tmp / "certs"))

    async def go() -> None:
        client = await coord.connect(etcd.config("admin", "t"), "test")
        for where, key, value in values:
            await client.put(b"/cyberstar/" + where.encode() + key, value)
        await client.put(b"/cyberstar/shards/7/0-512", b'{"scg": "scg1"}')
        smap = ShardMap(etcd.config("admin", "t"))
        await asyncio.wait_for(smap.start(), 10)
        try:
            assert smap.shards.get(ShardId(7, 0, 512)) == "scg1"
        finally:
            await smap.close()
            await client.close()

    try:
        asyncio.run(go())
    finally:
        etcd.close()
