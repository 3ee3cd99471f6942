"""`cyberstar.xdp.batch` on a real kernel hash map: what each refused entry's errno is (bpf(2):
EEXIST for BPF_NOEXIST on a present key, ENOENT for BPF_EXIST on a missing one, E2BIG when the
map is full), that the accepted entries are written, and that a short buffer is refused before
any system call."""

from __future__ import annotations

import errno
import struct

import pytest

from cyberstar.xdp import batch

pytestmark = pytest.mark.root

KEY, VALUE = struct.Struct("<QQ"), struct.Struct("<8Q")


@pytest.fixture(scope="module")
def table():
    from bcc import BPF

    bpf = BPF(text=b"""
        struct key { u64 a; u64 b; };
        struct value { u64 x[8]; };
        BPF_F_TABLE("hash", struct key, struct value, flows, 4, BPF_F_NO_PREALLOC);
    """)  # fmt: skip
    yield bpf[b"flows"]
    bpf.cleanup()


def packed(keys: list[int]) -> tuple[bytes, bytes]:
    return (b"".join(KEY.pack(k, ~k & 0xFFFF) for k in keys),
            b"".join(VALUE.pack(*(k * 10 + i for i in range(8))) for k in keys))  # fmt: skip


def contents(table) -> dict[int, tuple[int, ...]]:
    return {k.a: tuple(v.x) for k, v in table.items()}


def test_each_refused_entry_is_named_with_its_errno_and_the_others_are_written(table) -> None:
    table.clear()
    keys, values = packed([1, 2, 3])
    assert batch.update(table.get_fd(), keys, values, 16, 64, 3, batch.BPF_NOEXIST) == []
    keys, values = packed([2, 4, 5, 1])  # 2 and 1 present; 4 fills the map; 5 does not fit
    refused = batch.update(table.get_fd(), keys, values, 16, 64, 4, batch.BPF_NOEXIST)
    assert refused == [(0, errno.EEXIST), (2, errno.E2BIG), (3, errno.EEXIST)]
    assert contents(table) == {k: tuple(k * 10 + i for i in range(8)) for k in (1, 2, 3, 4)}

    table.clear()
    keys, values = packed([7])
    batch.update(table.get_fd(), keys, values, 16, 64, 1, batch.BPF_NOEXIST)
    changed = b"".join(VALUE.pack(*range(100, 108)) for _ in range(2))
    keys, _ = packed([8, 7])
    refused = batch.update(table.get_fd(), keys, changed, 16, 64, 2, batch.BPF_EXIST)
    assert refused == [(0, errno.ENOENT)]
    assert contents(table) == {7: tuple(range(100, 108))}


def test_a_buffer_shorter_than_its_count_is_refused_before_writing(table) -> None:
    table.clear()
    keys, values = packed([1, 2])
    with pytest.raises(ValueError, match="3 entries of 16 \\+ 64 bytes: expected 48 key and "
                                         "192 value bytes, found 32 and 128"):  # fmt: skip
        batch.update(table.get_fd(), keys, values, 16, 64, 3, batch.BPF_NOEXIST)
    with pytest.raises(ValueError, match="key size 0"):
        batch.update(table.get_fd(), keys, values, 0, 64, 1, batch.BPF_NOEXIST)
    assert contents(table) == {}
    assert batch.update(-1, keys, values, 16, 64, 1, batch.BPF_NOEXIST) == [(0, errno.EBADF)]
