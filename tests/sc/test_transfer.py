"""A Transfer that fails changes nothing (issue 8): its payload is checked before any state
changes, and an operation that cannot apply leaves no trace, so a head never differs from its
replicas; finished scale operations are not kept for ever."""

from __future__ import annotations

import pytest

from cyberstar.proto import sc_pb2
from cyberstar.sc.replication import encode_ops
from cyberstar.sc.scale import FINISHED_OPS_KEPT, ScaleDriver, ScaleOp, _transfer_op
from cyberstar.sc.state import NodeState, StateError

POOL = {"ports": [[[13323780472832, 13323780538368]], []]}  # 203.0.113.1:1024-65535... as ranges
Kind = sc_pb2.TransferRequest


def state_with_tenant_7() -> NodeState:
    state = NodeState()
    state.apply(["create", "7:0-1024", POOL])
    return state


def test_a_seed_that_cannot_apply_leaves_no_trace() -> None:
    """The unhardened seed_in recorded the transfer before adding the shard, which raised:
    the head kept the record, its replicas (which never got the op) did not."""
    state = state_with_tenant_7()
    before = encode_ops([state.snapshot()])
    with pytest.raises(StateError, match="overlaps"):
        state.apply(["seed_in", "7:512-1024", "op1", POOL])
    assert encode_ops([state.snapshot()]) == before
    assert state.transfers == {}


def test_a_part_that_cannot_apply_leaves_no_trace() -> None:
    state = state_with_tenant_7()
    with pytest.raises(StateError):
        state.apply(["merge_part", "7:0-1024", "op1", {"part": 0, "conns": b"\x00\x00\x00\x09[]"}])
    assert state.transfers == {}


@pytest.mark.parametrize(
    "request_",
    [
        Kind(op_id="a", kind=Kind.SEED, shard="9:0-1024", payload=b"{"),
        Kind(op_id="a", kind=Kind.SEED, shard="9:0-1024", payload=b"[1, 2]"),
        Kind(op_id="a", kind=Kind.SEED, shard="9:0-1024", payload=b'{"ports": [1]}'),
        Kind(op_id="a", kind=Kind.PART, shard="9:0-1024", payload=b"\xff" * 40),
        Kind(op_id="a", kind=Kind.MERGE, shard="9:0-1024", payload=b'{"conns": [1], "pools": {}}'),
        Kind(op_id="a", kind=Kind.MERGE, shard="9:0-1024", payload=b"{}", coalesce_with="x"),
        Kind(op_id="", kind=Kind.SEED, shard="9:0-1024", payload=b"{}"),
        Kind(op_id="a", kind=7, shard="9:0-1024", payload=b"{}"),
    ],
)
def test_bad_transfer_payloads_are_refused_before_anything_applies(request_) -> None:
    with pytest.raises((ValueError, TypeError, KeyError, StateError)):
        _transfer_op(request_)


def test_finished_scale_ops_are_not_kept_for_ever() -> None:
    driver = ScaleDriver(node=None)  # type: ignore[arg-type]
    for i in range(FINISHED_OPS_KEPT + 100):
        op = ScaleOp(f"op{i}", 0, "7:0-1024", "scg2")
        op.done.set()
        driver.ops[op.op_id] = op
    running = ScaleOp("running", 0, "7:0-1024", "scg2")
    driver.ops["running"] = running
    driver._forget_finished()
    assert len(driver.ops) == FINISHED_OPS_KEPT + 1
    assert "running" in driver.ops and f"op{FINISHED_OPS_KEPT + 99}" in driver.ops
