"""Fuzzing the P4Runtime server with random and mutated request bytes (hypothesis).

Whatever arrives, the agent stays up and answers: a gRPC status, per-update errors, a stream
error or the end of the stream, never a hang or a crash. A request that the server refuses
changes nothing; a write whose updates it reports applied may change the tables (then the test
puts them back). The primary holds the highest election id there is, so no fuzzed arbitration
can take its place.
"""

from __future__ import annotations

import queue
import threading

import grpc
import pytest
from finsy.proto import p4r, rpc_code, rpc_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cyberstar.codegen.p4info import build_p4info
from cyberstar.p4rt.codec import update
from cyberstar.p4rt.messages import arbitration_request, packet_out_request, write_request
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE

pytestmark = pytest.mark.root
TOP_ID = (1 << 128) - 1  # no election id is higher
INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BASELINE = [
    build_entry(PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0,
                "dst_addr": "10.0.0.0/8"}, "set_tenant", {"tenant_id": 7}),
    build_entry(PIPELINE, "acl", {"dst_port": {"value": 22, "mask": 0xFFFF}}, "acl_deny", {}, 5),
    build_entry(PIPELINE, "flow_table", {"tenant_id": 7, "src_addr": "192.168.1.2",
                "dst_addr": "10.0.0.5", "protocol": 6, "src_port": 1000, "dst_port": 80},
                "snat", {"src_addr": "203.0.113.9", "src_port": 50000, "nexthop_id": 2}),
    build_entry(PIPELINE, "next_hop", {"nexthop_id": 2}, "set_next_hop",
                {"port": 2, "smac": "02:00:00:00:00:01", "dmac": "02:00:00:00:00:02"}),
]  # fmt: skip
SEEDS = [  # valid requests to mutate: every table, every update kind, a default action
    [update(INSERT, PIPELINE, build_entry(
        PIPELINE, "flow_table", {"tenant_id": 7, "src_addr": "192.168.1.3", "dst_addr":
        "10.0.0.5", "protocol": 17, "src_port": 53, "dst_port": 53}, "dnat",
        {"dst_addr": "172.16.0.7", "dst_port": 8053, "nexthop_id": 2}))],
    [update(MODIFY, PIPELINE, BASELINE[2]), update(DELETE, PIPELINE, BASELINE[1])],
    [update(INSERT, PIPELINE, build_entry(
        PIPELINE, "acl", {"src_addr": {"value": "10.0.0.0", "mask": "255.0.0.0"},
        "protocol": {"value": 6, "mask": 255}}, "acl_permit", {}, 9))],
    [update(INSERT, PIPELINE, build_entry(
        PIPELINE, "tenant_classify", {"ingress_port": 2, "vni": 5000, "dst_addr":
        "10.1.0.0/16"}, "set_tenant", {"tenant_id": 8}))],
    [update(MODIFY, PIPELINE, build_entry(PIPELINE, "flow_table", {}, "flow_drop", {},
                                          is_default=True))],
]  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_node(shared_pp_node):
    primary = shared_pp_node.client(election_id=TOP_ID)
    primary.timeout = 20
    reset(primary)
    yield shared_pp_node, primary
    primary.close()
    shared_pp_node.clients.remove(primary)


def reset(primary) -> None:
    primary.set_pipeline(build_p4info(PIPELINE), b"")  # empties the tables
    primary.write([update(INSERT, PIPELINE, e) for e in BASELINE])


def snapshot(primary) -> list[bytes]:
    """Every entry, default actions included, in canonical serialized form."""
    entities = primary.read([p4r.Entity(table_entry=p4r.TableEntry())])
    entities += primary.read([
        p4r.Entity(table_entry=p4r.TableEntry(table_id=t.id, is_default_action=True))
        for t in PIPELINE.tables
    ])  # fmt: skip
    return sorted(e.SerializeToString(deterministic=True) for e in entities)


def still_serving(node, primary) -> None:
    assert node.proc.poll() is None, "the agent died"
    assert primary.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=10).p4runtime_api_version


def mutate(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)


MUTATIONS = [
    "type",
    "table",
    "field_id",
    "value",
    "kind",
    "action",
    "param",
    "priority",
    "idle",
    "counter",
    "meta",
    "default",
    "const",
    "extra_match",
    "extra_update",
]


def mutate_fields(draw, req: p4r.WriteRequest) -> p4r.WriteRequest:
    """Well-formed protobuf with values a controller should not send: ids, widths, kinds."""
    req = p4r.WriteRequest.FromString(req.SerializeToString())
    small = st.integers(0, 5) | st.sampled_from([0x02000003, 0x01000006, 0x7FFFFFFF, 2**32 - 1])
    value = st.binary(max_size=20)
    for _ in range(draw(st.integers(1, 4))):
        u = draw(st.sampled_from(list(req.updates)))
        te = u.entity.table_entry
        target = draw(st.sampled_from(MUTATIONS))
        if target == "type":
            u.type = draw(st.integers(0, 5))
        elif target == "table":
            te.table_id = draw(small)
        elif target == "field_id" and te.match:
            draw(st.sampled_from(list(te.match))).field_id = draw(small)
        elif target == "value" and te.match:
            fm = draw(st.sampled_from(list(te.match)))
            kind = fm.WhichOneof("field_match_type")
            if kind and kind != "range":
                getattr(fm, kind).value = draw(value)
        elif target == "kind" and te.match:
            fm = draw(st.sampled_from(list(te.match)))
            choice = draw(st.sampled_from(["exact", "lpm", "ternary", "range", "optional"]))
            if choice == "range":
                fm.range.low = draw(value)
            else:
                getattr(fm, choice).value = draw(value)
        elif target == "action":
            te.action.action.action_id = draw(small)
        elif target == "param":
            te.action.action.params.add(param_id=draw(small), value=draw(value))
        elif target == "priority":
            te.priority = draw(st.integers(-(2**31), 2**31 - 1))
        elif target == "idle":
            te.idle_timeout_ns = draw(st.integers(-(2**63), 2**63 - 1))
        elif target == "counter":
            te.counter_data.packet_count = draw(st.integers(0, 2**63 - 1))  # an int64
        elif target == "meta":
            te.metadata = draw(st.binary(max_size=64))
        elif target == "default":
            te.is_default_action = not te.is_default_action
        elif target == "const":
            te.is_const = True
        elif target == "extra_match":
            te.match.add(field_id=draw(small)).exact.value = draw(value)
        else:
            req.updates.append(draw(st.sampled_from(list(req.updates))))
    return req


def raw_write(channel: grpc.Channel, payload: bytes) -> tuple[grpc.StatusCode, list[int]]:
    """Send request bytes as a Write; the status and each update's code (if it reported them)."""
    call = channel.unary_unary("/p4.v1.P4Runtime/Write")
    try:
        call(payload, timeout=20)
    except grpc.RpcError as exc:
        codes = []
        raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
        if raw:
            for detail in rpc_status.Status.FromString(raw).details:
                err = p4r.Error()
                detail.Unpack(err)
                codes.append(err.canonical_code)
        return exc.code(), codes
    return grpc.StatusCode.OK, []


@FUZZ
@given(data=st.data())
def test_fuzzed_writes_change_nothing_they_are_refused(fuzz_node, data) -> None:
    node, primary = fuzz_node
    how = data.draw(st.sampled_from(["random", "bytes", "fields"]))
    seed = write_request(1, TOP_ID, data.draw(st.sampled_from(SEEDS)))
    if how == "random":
        payload = data.draw(st.binary(max_size=300), label="random bytes")
    elif how == "bytes":
        payload = mutate(data.draw, seed.SerializeToString())
    else:
        payload = mutate_fields(data.draw, seed).SerializeToString()
    before = snapshot(primary)
    code, per_update = raw_write(primary.channel, payload)  # on the primary's connection
    still_serving(node, primary)
    expected = expected_refusal(payload)
    if expected is not None:
        assert code == expected, f"expected {expected}, the server answered {code}"
    applied = code == grpc.StatusCode.OK or rpc_code.OK in per_update
    event(f"{code.name}, {'applied' if applied else 'refused'}")
    if not applied:
        assert snapshot(primary) == before, f"refused ({code}) yet the tables changed"
    elif snapshot(primary) != before:
        reset(primary)


TABLE_IDS = {t.id for t in PIPELINE.tables}


def expected_refusal(payload: bytes) -> grpc.StatusCode | None:
    """What the specification (§12) says of a request, where it can tell without the device:
    unreadable bytes, another device, not the primary's election id, an unsupported atomicity,
    an update of a table the P4Info does not have. None: the device decides."""
    try:
        req = p4r.WriteRequest.FromString(payload)
    except Exception:
        return grpc.StatusCode.INVALID_ARGUMENT
    if req.device_id != 1:
        return grpc.StatusCode.NOT_FOUND
    if not req.HasField("election_id") or (req.election_id.high, req.election_id.low) != (
        TOP_ID >> 64,
        TOP_ID & ((1 << 64) - 1),
    ):
        return grpc.StatusCode.PERMISSION_DENIED
    if req.role:
        return None  # roles are not served: the code is the server's choice
    if req.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
        return grpc.StatusCode.UNIMPLEMENTED
    for u in req.updates:
        if (
            u.entity.WhichOneof("entity") == "table_entry"
            and u.entity.table_entry.table_id not in TABLE_IDS
        ):
            return grpc.StatusCode.UNKNOWN  # that update fails with INVALID_ARGUMENT
    return None


def open_raw_stream(channel: grpc.Channel):
    """A StreamChannel sending request bytes as given; returns (send, answers)."""
    requests: queue.Queue = queue.Queue()
    answers: queue.Queue = queue.Queue()
    call = channel.stream_stream("/p4.v1.P4Runtime/StreamChannel")(iter(requests.get, None))

    def read() -> None:
        try:
            for msg in call:
                answers.put(msg)
            answers.put(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            answers.put(exc.code())

    threading.Thread(target=read, daemon=True).start()
    return requests, answers, call


STREAM_SEEDS = [
    arbitration_request(1, 5).SerializeToString(),
    arbitration_request(1, TOP_ID).SerializeToString(),  # a duplicate of the primary's
    packet_out_request(b"\x02" * 64, [(1, b"\x01")]).SerializeToString(),
    packet_out_request(b"\x02" * 64, [(2, b"\x01"), (3, b"\x01")]).SerializeToString(),
]


@FUZZ
@given(data=st.data())
def test_fuzzed_stream_messages_get_an_answer(fuzz_node, data) -> None:
    node, primary = fuzz_node
    before = snapshot(primary)
    requests, answers, call = open_raw_stream(grpc.insecure_channel(
        node.address, options=[("grpc.use_local_subchannel_pool", 1)]))  # fmt: skip
    try:
        for _ in range(data.draw(st.integers(1, 3))):
            if data.draw(st.booleans()):
                payload = data.draw(st.binary(max_size=200), label="random bytes")
            else:
                payload = mutate(data.draw, data.draw(st.sampled_from(STREAM_SEEDS)))
            requests.put(payload)
        # an answer (arbitration, stream error) or the stream's end with a status, promptly
        first = answers.get(timeout=15)
        assert first is not None
    finally:
        requests.put(None)
        call.cancel()
    still_serving(node, primary)
    assert snapshot(primary) == before
    # the primary is still the primary: it may write
    primary.write([update(MODIFY, PIPELINE, BASELINE[3])])
