"""No P4Runtime client can block another: idle streams, a Read nobody consumes, too many
streams. Each case is what a careless or hostile client did to the node before it was fixed."""

from __future__ import annotations

import os
import queue
import stat
import threading
import time

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc

from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE

pytestmark = pytest.mark.root
INSERT = p4r.Update.INSERT
FLOW = PIPELINE.table("flow_table")
MAX_STREAMS = 32  # the limit the server documents (p4rt/server.py)


def flow(i: int) -> TableEntry:
    return TableEntry(
        "flow_table",
        {"tenant_id": 3, "src_addr": 0x0B000000 + i, "dst_addr": 0x0A000005, "protocol": 6,
         "src_port": 1024 + i % 60000, "dst_port": 80},
        "snat", {"src_addr": 0xCB007109, "src_port": 1024 + i % 60000, "nexthop_id": 2},
    )  # fmt: skip


class RawStream:
    """A StreamChannel on a connection of its own that sends only what it is told to."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.requests: queue.Queue = queue.Queue()
        self.call = p4r_grpc.P4RuntimeStub(self.channel).StreamChannel(
            iter(self.requests.get, None)
        )
        self.received: queue.Queue = queue.Queue()
        self.ended: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.received.put(msg)
            self.ended.put(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            self.ended.put(exc.code())

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def test_idle_streams_do_not_starve_other_calls(pp_node) -> None:
    """Eight streams that never send a message took all eight worker threads: Capabilities
    timed out. Now they cost no thread, and are closed when they do not arbitrate."""
    idle = [RawStream(pp_node.address) for _ in range(8)]
    try:
        time.sleep(0.5)  # let the server start handling all of them
        stub = p4r_grpc.P4RuntimeStub(pp_node.client(arbitrate=False).channel)
        assert stub.Capabilities(p4r.CapabilitiesRequest(), timeout=3).p4runtime_api_version
        primary = pp_node.primary_with_pipeline(election_id=10)
        primary.write([update(INSERT, PIPELINE, flow(1))])
        # a stream that never arbitrates is told so and closed (after 10 s)
        for s in idle:
            assert s.ended.get(timeout=20) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        for s in idle:
            s.close()


def test_streams_beyond_the_limit_are_resource_exhausted(pp_node) -> None:
    streams = [RawStream(pp_node.address) for _ in range(MAX_STREAMS + 1)]
    try:
        time.sleep(3)  # well within the 10 s the others have to arbitrate
        codes = [None if s.ended.empty() else s.ended.get() for s in streams]
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1, codes
        assert codes.count(None) == MAX_STREAMS
    finally:
        for s in streams:
            s.close()


def test_a_read_nobody_consumes_does_not_block_writes(pp_node) -> None:
    """A Read whose client stopped taking responses held the device lock: the primary's
    writes failed with DEADLINE_EXCEEDED after 5 s."""
    primary = pp_node.primary_with_pipeline(election_id=10)
    total = 60_000  # several MB of responses: more than the flow-control windows hold
    for start in range(0, total, 1000):
        primary.write([update(INSERT, PIPELINE, flow(i)) for i in range(start, start + 1000)])
    reader = pp_node.client(election_id=5)
    stalled = reader.stub.Read(
        p4r.ReadRequest(device_id=1, entities=[p4r.Entity(table_entry=p4r.TableEntry())]),
        timeout=120,
    )
    first = next(stalled)  # then take nothing more
    assert len(first.entities) > 0
    time.sleep(2)  # the server has filled the windows and waits for the client
    t0 = time.monotonic()
    primary.timeout = 5
    primary.write([update(INSERT, PIPELINE, flow(total + 1))])
    assert time.monotonic() - t0 < 5
    primary.timeout = 60
    assert (
        len(primary.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))])) == total + 1
    )
    stalled.cancel()


def test_the_unix_socket_is_for_its_owner_only(pp_node) -> None:
    """On a unix socket every client is the same peer to gRPC: the file mode keeps others out."""
    mode = os.stat(pp_node.address.removeprefix("unix:")).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
