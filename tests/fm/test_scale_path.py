"""bench/scale.py's path at a size CI can afford: a PP node filled with FM-shaped rules through
P4Runtime reads every one of them back as written, in chunks, and an FM that takes over
rebuilds its cache from the node's table, every rule and connection."""

from __future__ import annotations

import grpc
import needs
import pytest
from finsy.proto import p4r

from cyberstar.lab.scale import etcd, flow_rule, fm_takeover, scale_node, write_requests
from cyberstar.p4rt.messages import decode_write_error

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
