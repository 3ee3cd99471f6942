"""bench/scale.py's path at a size CI can afford: a PP node filled with FM-shaped rules through
P4Runtime reads every one of them back as written, in chunks, and an FM that takes over
rebuilds its cache from the node's table, every rule and connection; a Read's deadline is per
response."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import needs
import pytest
from finsy.proto import p4r

from cyberstar.lab.scale import etcd, flow_rule, fm_takeover, scale_node, write_requests
from cyberstar.p4rt.aio_client import AioP4RuntimeClient
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.messages import decode_write_error
from cyberstar.pipeline.pp import PIPELINE

pytestmark = [pytest.mark.root, pytest.mark.slow]
IDLE_NS = 3600 * 10**9


def _needs_root_and_etcd() -> None:
    needs.root()
    needs.etcd()


def test_every_rule_read_back_and_fm_rebuilds_its_cache() -> None:
    _needs_root_and_etcd()
    n = 20_000
    with etcd() as store, scale_node(n + 100) as sn:
        sn.fill(n, IDLE_NS)
        expected = sorted(
            p4r.Entity.FromString(flow_rule(i, IDLE_NS)).SerializeToString(deterministic=True)
            for i in range(n)
        )
        assert sorted(sn.read_back()) == expected
        takeover = fm_takeover(sn.node, store, "fm-ci")
        assert (takeover.connections, takeover.rules) == (n // 2, n)


def test_a_full_flow_table_is_resource_exhausted_per_entry() -> None:
    _needs_root_and_etcd()
    with scale_node(1000) as sn:
        sn.fill(1000, IDLE_NS)
        (request,) = write_requests(1000, 2, sn.client.election_id, IDLE_NS)
        with pytest.raises(grpc.RpcError) as err:
            sn.client.channel.unary_unary("/p4.v1.P4Runtime/Write")(request, timeout=30)
        failed = decode_write_error(err.value)
        assert [(i, code) for i, code, _ in failed.errors] == [
            (0, "RESOURCE_EXHAUSTED"), (1, "RESOURCE_EXHAUSTED")]  # fmt: skip
        assert "table flow_table is full (1000 entries" in failed.errors[0][2]
        assert sn.read_all()[0] == 1000


FILLED = 20_000  # 20 responses of 1 000 entities


def test_a_reads_deadline_is_per_response_not_for_the_whole_table() -> None:
    """A Read longer in total than the client's timeout completes while every response comes
    in time (a 10M-entry table takes minutes); a node that stops answering mid-Read fails it
    with DEADLINE_EXCEEDED after one timeout, not never. Both clients: the blocking one (tools,
    bench) and FM's asyncio one (its cache rebuild)."""
    _needs_root_and_etcd()
    entity = p4r.Entity(table_entry=p4r.TableEntry(table_id=PIPELINE.table("flow_table").id))
    with scale_node(FILLED + 100) as sn:
        sn.fill(FILLED, IDLE_NS)
        sn.client.timeout = 1.0
        t0, got = time.monotonic(), 0
        for resp in sn.client.read_stream([entity]):
            got += len(resp.entities)
            time.sleep(0.1)  # a slow consumer: the Read lasts ~2 s, twice the timeout
        assert got == FILLED and time.monotonic() - t0 > 2 * sn.client.timeout

        responses = sn.client.read_stream([entity])
        assert len(next(responses).entities) == 1000
        os.kill(sn.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(P4RuntimeError) as err:
                for _ in responses:  # gRPC's buffer may hold a few; then nothing comes
                    pass
            assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 10 * sn.client.timeout
        finally:
            os.kill(sn.pid, signal.SIGCONT)

        async def aio() -> None:
            client = AioP4RuntimeClient(sn.node.address, sn.node.device_id, 1, timeout=1.0,
                                        tls=sn.node.tls)  # fmt: skip
            try:
                t0, got = time.monotonic(), 0
                async for resp in client.read_stream([entity]):
                    got += len(resp.entities)
                    await asyncio.sleep(0.1)
                assert got == FILLED and time.monotonic() - t0 > 2 * client.timeout
                stream = client.read_stream([entity])
                assert len((await anext(stream)).entities) == 1000
                os.kill(sn.pid, signal.SIGSTOP)
                try:
                    t0 = time.monotonic()
                    with pytest.raises(P4RuntimeError) as err:
                        async for _ in stream:
                            pass
                    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
                    assert time.monotonic() - t0 < 10 * client.timeout
                finally:
                    os.kill(sn.pid, signal.SIGCONT)
            finally:
                await client.close()

        asyncio.run(aio())
