"""The XDP device's own bookkeeping against the kernel's maps, with a kernel write that fails:
the agent's view and the kernel's stay the same."""

from __future__ import annotations

import pytest
from finsy.proto import p4r

from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE

pytestmark = pytest.mark.root
INSERT = p4r.Update.INSERT
ACL = PIPELINE.table("acl")


@pytest.fixture
def device(xdp_target):
    from cyberstar.pp.device import XdpDevice

    xdp_target.prog.clear()
    yield XdpDevice(xdp_target.prog, [])
    xdp_target.prog.clear()


def acl(priority: int, port: int):
    return build_entry(
        PIPELINE, "acl", {"dst_port": {"value": port, "mask": 0xFFFF}}, "acl_deny", {}, priority
    )


def acl_ports(device) -> list[int]:
    """The acl entries the agent reads back, by destination port."""
    out = []
    for chunk in device.read(p4r.Entity(table_entry=p4r.TableEntry(table_id=ACL.id))):
        entities = p4r.ReadResponse.FromString(chunk).entities
        out += [int.from_bytes(e.table_entry.match[0].ternary.value, "big") for e in entities]
    return out


def test_a_failed_ternary_publish_changes_nothing(device, monkeypatch) -> None:
    """The ternary store was changed before the kernel write: when the write failed, the agent
    read back an entry the data plane did not have, and refused to insert it again."""
    assert device.write([update(INSERT, PIPELINE, acl(5, 22))]) == [None]

    def broken(*_args, **_kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(device.prog, "publish_ternary", broken)
    (result,) = device.write([update(INSERT, PIPELINE, acl(9, 23))])
    assert result is not None and result.code.name == "INTERNAL"
    monkeypatch.undo()
    assert acl_ports(device) == [22]
    assert [e.match["dst_port"].value for e in device.prog.ternary_entries("acl")] == [22]
    assert device.write([update(INSERT, PIPELINE, acl(9, 23))]) == [None]
    assert sorted(acl_ports(device)) == [22, 23]


def test_a_write_on_the_event_loop_never_waits_for_a_busy_device(device) -> None:
    """The P4Runtime server runs a small Write on its event loop only when no other thread
    holds the device (a Read, an idle scan): then it is done at once; otherwise the server is
    told to hand it to a thread, and nothing is written."""
    import threading

    held, release = threading.Event(), threading.Event()

    def reader() -> None:
        with device._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=reader)
    t.start()
    held.wait(10)
    try:
        assert device.write_if_idle([update(INSERT, PIPELINE, acl(5, 22))]) is None
    finally:
        release.set()
        t.join(10)
    assert acl_ports(device) == []  # nothing was written
    assert device.write_if_idle([update(INSERT, PIPELINE, acl(5, 22))]) == [None]
    assert acl_ports(device) == [22]
