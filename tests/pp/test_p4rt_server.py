"""The XDP PP node's P4Runtime service, driven by a real client over gRPC: pipeline config,
writes and reads with the specification's status codes, counters, arbitration."""

from __future__ import annotations

import socket
import time

import grpc
import pytest
from finsy import p4client as finsy_p4client
from finsy.proto import p4i, p4r, rpc_code

from cyberstar import netns
from cyberstar.codegen.p4info import build_p4info
from cyberstar.lab.wait import wait_until
from cyberstar.p4rt.arbitration import election_int
from cyberstar.p4rt.client import P4RuntimeClient, P4RuntimeError
from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE

pytestmark = pytest.mark.root
INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
FLOW = PIPELINE.table("flow_table")


def flow_entry(sport: int = 40001, **params):
    return build_entry(
        PIPELINE,
        "flow_table",
        {"tenant_id": 7, "src_addr": "192.168.1.2", "dst_addr": "10.0.0.5", "protocol": 6,
         "src_port": sport, "dst_port": 80},
        "snat",
        {"src_addr": "203.0.113.9", "src_port": 50000, "nexthop_id": 2, **params},
    )  # fmt: skip


def acl_entry(priority: int, port: int = 22):
    return build_entry(
        PIPELINE, "acl", {"dst_port": {"value": port, "mask": 0xFFFF}}, "acl_deny", {}, priority
    )


def codes_of(exc: P4RuntimeError) -> list[str]:
    return [code for _, code, _ in exc.errors]


def write_error(client, updates) -> P4RuntimeError:
    with pytest.raises(P4RuntimeError) as err:
        client.write(updates)
    return err.value


# ---- pipeline -----------------------------------------------------------------------------


def test_write_before_pipeline_is_failed_precondition(pp_node) -> None:
    c = pp_node.client(election_id=10)
    err = write_error(c, [update(INSERT, PIPELINE, flow_entry())])
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION


def test_get_pipeline_before_any_is_an_unset_config(pp_node) -> None:
    """P4Runtime §15: a server that does not know its config answers with `config` unset (a
    controller then sets it); a Read before any pipeline is FAILED_PRECONDITION in words
    finsy recognizes (its `is_pipeline_missing`)."""
    c = pp_node.client(election_id=10)
    rt = p4r.GetForwardingPipelineConfigRequest
    for response_type in rt.ResponseType.values():
        got = c.stub.GetForwardingPipelineConfig(
            rt(device_id=1, response_type=response_type), timeout=10
        )
        assert not got.HasField("config"), response_type
    with pytest.raises(grpc.RpcError) as err:
        c.stub.GetForwardingPipelineConfig(rt(device_id=2), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # §15: an unknown device id
    with pytest.raises(P4RuntimeError) as read_err:
        c.read([p4r.Entity(table_entry=p4r.TableEntry())])
    assert read_err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert finsy_p4client._NO_PIPELINE_CONFIG.search(read_err.value.message)


def test_get_pipeline_gives_the_saved_config_and_only_the_fields_asked_for(pp_node) -> None:
    c = pp_node.client(election_id=10)
    action = p4r.SetForwardingPipelineConfigRequest
    commit = action(
        device_id=1,
        election_id=p4r.Uint128(low=10),
        action=action.VERIFY_AND_COMMIT,
        config=p4r.ForwardingPipelineConfig(p4info=build_p4info(PIPELINE)),
    )
    c.stub.SetForwardingPipelineConfig(commit, timeout=10)  # no cookie: none is read back
    rt = p4r.GetForwardingPipelineConfigRequest
    got = c.stub.GetForwardingPipelineConfig(rt(device_id=1), timeout=10).config
    assert not got.HasField("cookie") and got.HasField("p4info")
    save = action()
    save.CopyFrom(commit)
    save.action = action.VERIFY_AND_SAVE
    save.config.cookie.cookie = 9
    c.stub.SetForwardingPipelineConfig(save, timeout=10)
    only = c.stub.GetForwardingPipelineConfig(rt(device_id=1, response_type=rt.COOKIE_ONLY),
                                              timeout=10).config  # fmt: skip
    assert only.cookie.cookie == 9 and not only.HasField("p4info")


def test_pipeline_set_and_get(pp_node) -> None:
    c = pp_node.client(election_id=10)
    c.set_pipeline(build_p4info(PIPELINE), b"", cookie=42)
    got = c.stub.GetForwardingPipelineConfig(
        p4r.GetForwardingPipelineConfigRequest(device_id=1), timeout=10
    ).config
    assert got.cookie.cookie == 42
    assert [t.preamble.name for t in got.p4info.tables] == [t.name for t in PIPELINE.tables]
    assert c.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=10).p4runtime_api_version


def test_foreign_p4info_is_invalid_argument(pp_node) -> None:
    c = pp_node.client(election_id=10)
    info = build_p4info(PIPELINE)
    info.tables[0].preamble.name = "ipv4_lpm"
    with pytest.raises(P4RuntimeError) as err:
        c.set_pipeline(info, b"")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ipv4_lpm" in str(err.value)
    with pytest.raises(P4RuntimeError) as err:
        c.set_pipeline(p4i.P4Info(), b"")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_verify_and_commit_empties_tables_reconcile_keeps_them(pp_node) -> None:
    c = pp_node.primary_with_pipeline()
    c.write([update(INSERT, PIPELINE, flow_entry())])
    req = p4r.SetForwardingPipelineConfigRequest(
        device_id=1,
        election_id=p4r.Uint128(low=10),
        action=p4r.SetForwardingPipelineConfigRequest.RECONCILE_AND_COMMIT,
        config=p4r.ForwardingPipelineConfig(p4info=build_p4info(PIPELINE)),
    )
    c.stub.SetForwardingPipelineConfig(req, timeout=10)
    assert len(c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))])) == 1
    c.set_pipeline(build_p4info(PIPELINE), b"")
    assert c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))]) == []


# ---- writes and reads ---------------------------------------------------------------------


def test_insert_read_modify_delete_round_trip(primary) -> None:
    c = primary
    e = flow_entry()
    c.write([update(INSERT, PIPELINE, e)])
    (read,) = c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))])
    assert read.table_entry == update(INSERT, PIPELINE, e).entity.table_entry  # canonical form
    c.write([update(MODIFY, PIPELINE, flow_entry(src_port=50001))])
    (read,) = c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))])
    assert read.table_entry.action.action.params[1].value == (50001).to_bytes(2, "big")
    c.write([update(DELETE, PIPELINE, e)])
    assert c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))]) == []


def test_wildcard_and_filtered_reads(primary) -> None:
    c = primary
    c.write([update(INSERT, PIPELINE, flow_entry(sport=p)) for p in range(1000, 1010)])
    c.write([update(INSERT, PIPELINE, acl_entry(5)), update(INSERT, PIPELINE, acl_entry(9, 23))])
    everything = c.read([p4r.Entity(table_entry=p4r.TableEntry())])
    assert len(everything) == 12
    one = update(INSERT, PIPELINE, flow_entry(sport=1004)).entity.table_entry
    del one.action.action.params[:]
    one.ClearField("action")
    (hit,) = c.read([p4r.Entity(table_entry=one)])
    assert hit.table_entry.match == one.match
    acl = PIPELINE.table("acl")
    by_prio = c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=acl.id, priority=9))])
    assert [e.table_entry.priority for e in by_prio] == [9]
    default = c.read(
        [p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id, is_default_action=True))]
    )
    assert default[0].table_entry.action.action.action_id == PIPELINE.action("punt_miss").id


def test_default_action_modify_and_reset(primary) -> None:
    c = primary
    te = p4r.TableEntry(table_id=FLOW.id, is_default_action=True)
    te.action.action.action_id = PIPELINE.action("flow_drop").id
    c.write([p4r.Update(type=MODIFY, entity=p4r.Entity(table_entry=te))])
    read = c.read(
        [p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id, is_default_action=True))]
    )
    assert read[0].table_entry.action.action.action_id == PIPELINE.action("flow_drop").id
    reset = p4r.TableEntry(table_id=FLOW.id, is_default_action=True)
    c.write([p4r.Update(type=MODIFY, entity=p4r.Entity(table_entry=reset))])
    read = c.read(
        [p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id, is_default_action=True))]
    )
    assert read[0].table_entry.action.action.action_id == PIPELINE.action("punt_miss").id


def test_batch_reports_one_error_per_update(primary) -> None:
    c = primary
    c.write([update(INSERT, PIPELINE, flow_entry(sport=1))])
    batch = [
        update(INSERT, PIPELINE, flow_entry(sport=2)),
        update(INSERT, PIPELINE, flow_entry(sport=1)),  # exists
        update(DELETE, PIPELINE, flow_entry(sport=3)),  # absent
        update(INSERT, PIPELINE, flow_entry(sport=4)),
    ]
    err = write_error(c, batch)
    assert err.code == grpc.StatusCode.UNKNOWN
    assert [i for i, _, _ in err.errors] == [1, 2]
    assert codes_of(err) == ["ALREADY_EXISTS", "NOT_FOUND"]
    ports = sorted(
        int.from_bytes(e.table_entry.match[4].exact.value, "big")
        for e in c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))])
    )
    assert ports == [1, 2, 4]  # the good updates of the failed batch were applied


def _bad(mutate) -> p4r.Update:
    upd = update(INSERT, PIPELINE, flow_entry())
    mutate(upd.entity.table_entry)
    return upd


def _acl_update(mutate, priority: int = 5) -> p4r.Update:
    upd = update(INSERT, PIPELINE, acl_entry(priority))
    mutate(upd.entity.table_entry)
    return upd


def _lpm_beyond_prefix(te: p4r.TableEntry) -> None:
    te.table_id = PIPELINE.table("tenant_classify").id
    te.ClearField("match")
    te.match.add(field_id=1).exact.value = b"\x01"
    te.match.add(field_id=2).exact.value = b"\x00"
    m = te.match.add(field_id=3)
    m.lpm.value = bytes([10, 1, 0, 0])
    m.lpm.prefix_len = 8
    te.action.action.action_id = PIPELINE.action("set_tenant").id
    del te.action.action.params[:]
    te.action.action.params.add(param_id=1, value=b"\x07")


BAD_UPDATES = [
    ("unknown table id", lambda te: setattr(te, "table_id", 0x02FFFFFF), "INVALID_ARGUMENT"),
    ("unknown match field id", lambda te: setattr(te.match[0], "field_id", 99), "INVALID_ARGUMENT"),
    ("missing exact field", lambda te: te.match.pop(), "INVALID_ARGUMENT"),
    (
        "value wider than the field",
        lambda te: setattr(te.match[3].exact, "value", b"\x01\x00"),
        "OUT_OF_RANGE",
    ),
    ("empty bytestring", lambda te: setattr(te.match[0].exact, "value", b""), "OUT_OF_RANGE"),
    ("wrong match kind", lambda te: te.match[0].lpm.SetInParent(), "INVALID_ARGUMENT"),
    (
        "unknown action id",
        lambda te: setattr(te.action.action, "action_id", 0x01FFFFFF),
        "INVALID_ARGUMENT",
    ),
    (
        "action of another table",
        lambda te: setattr(te.action.action, "action_id", PIPELINE.action("set_next_hop").id),
        "INVALID_ARGUMENT",
    ),
    ("missing parameter", lambda te: te.action.action.params.pop(), "INVALID_ARGUMENT"),
    (
        "unknown parameter id",
        lambda te: setattr(te.action.action.params[0], "param_id", 9),
        "INVALID_ARGUMENT",
    ),
    (
        "parameter given twice",
        lambda te: setattr(te.action.action.params[1], "param_id", 1),
        "INVALID_ARGUMENT",
    ),
    (
        "empty parameter bytestring",
        lambda te: setattr(te.action.action.params[2], "value", b""),
        "OUT_OF_RANGE",
    ),
    (
        "action profile member on a direct table",
        lambda te: setattr(te.action, "action_profile_member_id", 1),
        "INVALID_ARGUMENT",
    ),
    (
        "parameter too wide",
        lambda te: setattr(te.action.action.params[1], "value", b"\x01\x00\x00"),
        "OUT_OF_RANGE",
    ),
    ("priority on an exact table", lambda te: setattr(te, "priority", 3), "INVALID_ARGUMENT"),
    (
        "default-only action as entry",
        lambda te: setattr(te.action.action, "action_id", PIPELINE.action("punt_miss").id),
        "PERMISSION_DENIED",
    ),
    ("bits beyond the lpm prefix", _lpm_beyond_prefix, "INVALID_ARGUMENT"),
    (
        "idle timeout on a table without it",
        lambda te: (
            _lpm_beyond_prefix(te),
            setattr(te.match[2].lpm, "value", bytes([10, 0, 0, 0])),
            setattr(te, "idle_timeout_ns", 10),
        ),
        "INVALID_ARGUMENT",
    ),
    ("is_const set", lambda te: setattr(te, "is_const", True), "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(
    ("mutate", "code"), [b[1:] for b in BAD_UPDATES], ids=[b[0] for b in BAD_UPDATES]
)
def test_invalid_update_gets_the_spec_code(primary, mutate, code: str) -> None:
    c = primary
    err = write_error(c, [_bad(mutate)])
    assert codes_of(err) == [code], err


ACL_BAD = [
    (
        "ternary value outside the mask",
        lambda te: setattr(te.match[0].ternary, "mask", b"\x0f"),
        5,
        "INVALID_ARGUMENT",
    ),
    (
        "zero ternary mask not omitted",
        lambda te: (
            setattr(te.match[0].ternary, "value", b"\x00"),
            setattr(te.match[0].ternary, "mask", b"\x00"),
        ),
        5,
        "INVALID_ARGUMENT",
    ),
    (
        "missing priority on a ternary table",
        lambda te: setattr(te, "priority", 0),
        5,
        "INVALID_ARGUMENT",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "priority", "code"), [b[1:] for b in ACL_BAD], ids=[b[0] for b in ACL_BAD]
)
def test_invalid_ternary_update_gets_the_spec_code(primary, mutate, priority, code) -> None:
    c = primary
    err = write_error(c, [_acl_update(mutate, priority)])
    assert codes_of(err) == [code]


def test_default_entry_insert_and_table_only_default(primary) -> None:
    c = primary
    te = p4r.TableEntry(table_id=FLOW.id, is_default_action=True)
    te.action.action.action_id = PIPELINE.action("flow_drop").id
    err = write_error(c, [p4r.Update(type=INSERT, entity=p4r.Entity(table_entry=te))])
    assert codes_of(err) == ["INVALID_ARGUMENT"]
    snat = update(INSERT, PIPELINE, flow_entry()).entity.table_entry.action
    te.action.CopyFrom(snat)
    err = write_error(c, [p4r.Update(type=MODIFY, entity=p4r.Entity(table_entry=te))])
    assert codes_of(err) == ["PERMISSION_DENIED"]


def test_full_table_is_resource_exhausted(primary) -> None:
    c = primary
    size = PIPELINE.table("acl").size
    c.write([update(INSERT, PIPELINE, acl_entry(p + 1, p)) for p in range(size)])
    err = write_error(c, [update(INSERT, PIPELINE, acl_entry(size + 1, 9999))])
    assert codes_of(err) == ["RESOURCE_EXHAUSTED"]


def test_wrong_device_and_atomicity(pp_node) -> None:
    c = pp_node.primary_with_pipeline()
    req = p4r.WriteRequest(
        device_id=99,
        election_id=p4r.Uint128(low=10),
        updates=[update(INSERT, PIPELINE, flow_entry())],
    )
    with pytest.raises(grpc.RpcError) as err:
        c.stub.Write(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    req.device_id = 1
    req.atomicity = p4r.WriteRequest.ROLLBACK_ON_ERROR
    with pytest.raises(grpc.RpcError) as err:
        c.stub.Write(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---- counters -----------------------------------------------------------------------------


def test_counters_read_and_direct_counter_data(primary) -> None:
    c = primary
    e = update(INSERT, PIPELINE, flow_entry())
    e.entity.table_entry.counter_data.packet_count = 5
    e.entity.table_entry.counter_data.byte_count = 500
    c.write([e])
    req = p4r.TableEntry(table_id=FLOW.id)
    req.counter_data.SetInParent()
    (read,) = c.read([p4r.Entity(table_entry=req)])
    assert (
        read.table_entry.counter_data.packet_count,
        read.table_entry.counter_data.byte_count,
    ) == (5, 500)
    dc = c.read([p4r.Entity(direct_counter_entry=p4r.DirectCounterEntry(table_entry=req))])
    assert dc[0].direct_counter_entry.data.packet_count == 5
    # the counts are in `data` only, as bmv2 answers (docs/p4runtime.md)
    assert not dc[0].direct_counter_entry.table_entry.HasField("counter_data")
    verdicts = c.read_counter(PIPELINE.counter("verdicts").id)
    assert sorted(verdicts) == list(range(len(PIPELINE.verdicts)))
    one = c.read(
        [
            p4r.Entity(
                counter_entry=p4r.CounterEntry(
                    counter_id=PIPELINE.counter("port_tx").id, index=p4r.Index(index=3)
                )
            )
        ]
    )
    assert [e.counter_entry.index.index for e in one] == [3]
    with pytest.raises(P4RuntimeError) as err:
        c.read(
            [
                p4r.Entity(
                    counter_entry=p4r.CounterEntry(
                        counter_id=PIPELINE.counter("verdicts").id, index=p4r.Index(index=99)
                    )
                )
            ]
        )
    assert err.value.code == grpc.StatusCode.OUT_OF_RANGE


# ---- arbitration (P4Runtime §5) ------------------------------------------------------------


def test_primary_backup_and_failover(pp_node) -> None:
    primary = pp_node.client(election_id=10)
    backup = P4RuntimeClient(pp_node.address, 1, election_id=5, tls=pp_node.tls)
    pp_node.clients.append(backup)
    told = backup.open_stream()
    assert told.status.code == rpc_code.ALREADY_EXISTS  # a primary exists
    assert election_int(told.election_id) == 10
    primary.set_pipeline(build_p4info(PIPELINE), b"")
    err = write_error(backup, [update(INSERT, PIPELINE, flow_entry())])
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(P4RuntimeError) as perr:
        backup.set_pipeline(build_p4info(PIPELINE), b"")
    assert perr.value.code == grpc.StatusCode.PERMISSION_DENIED
    # the primary's stream drops: the backup hears there is no primary, then takes over
    primary.close()
    pp_node.clients.remove(primary)
    note = backup.arbitrations.get(timeout=10)
    assert note.status.code == rpc_code.NOT_FOUND
    assert election_int(note.election_id) == 10  # the highest id the server has seen
    backup.arbitrate(11)
    assert backup.arbitrations.get(timeout=10).status.code == rpc_code.OK
    backup.write([update(INSERT, PIPELINE, flow_entry())])


def stream_end(client: P4RuntimeClient) -> grpc.StatusCode:
    """How the server ended a client's stream (waits for it)."""
    client._stream_thread.join(10)
    assert not client._stream_thread.is_alive(), "the server kept the stream open"
    return client._stream_call.code()


def test_duplicate_election_id_is_invalid_argument(pp_node) -> None:
    pp_node.client(election_id=10)
    dup = pp_node.client(election_id=10, arbitrate=False)
    dup.timeout = 3
    with pytest.raises(P4RuntimeError):
        dup.open_stream()  # no answer: the server ended the stream instead
    assert stream_end(dup) == grpc.StatusCode.INVALID_ARGUMENT
    # a live controller may not move to an id another one holds either
    other = pp_node.client(election_id=4)
    other.arbitrate(10)
    assert stream_end(other) == grpc.StatusCode.INVALID_ARGUMENT


def test_rogue_election_id_is_remembered_and_can_be_reached(pp_node) -> None:
    """§5.3: the server keeps the highest id it has ever seen. A rogue that arbitrated with
    2^100 and left leaves no primary; a lower id is a backup, told the id to reach; that id
    makes a controller primary again."""
    fm = pp_node.client(election_id=(1 << 32) + 7)
    rogue = pp_node.client(election_id=1 << 100)
    note = fm.arbitrations.get(timeout=10)
    assert (note.status.code, election_int(note.election_id)) == (rpc_code.ALREADY_EXISTS, 1 << 100)
    rogue.close()
    pp_node.clients.remove(rogue)
    note = fm.arbitrations.get(timeout=10)
    assert (note.status.code, election_int(note.election_id)) == (rpc_code.NOT_FOUND, 1 << 100)
    fm.arbitrate((1 << 32) + 8)  # higher than before, not enough
    assert fm.arbitrations.get(timeout=10).status.code == rpc_code.NOT_FOUND
    fm.arbitrate(1 << 100)
    assert fm.arbitrations.get(timeout=10).status.code == rpc_code.OK
    fm.set_pipeline(build_p4info(PIPELINE), b"")
    fm.write([update(INSERT, PIPELINE, flow_entry())])


def test_unset_election_id_is_a_backup_forever(pp_node) -> None:
    """§5.3: an unset election id is below every id; several controllers may leave it unset."""
    quiet = [pp_node.client(arbitrate=False) for _ in range(2)]
    for c in quiet:
        c._stream_call = c.stub.StreamChannel(iter([p4r.StreamMessageRequest(
            arbitration=p4r.MasterArbitrationUpdate(device_id=1))]))  # fmt: skip
        first = next(c._stream_call)
        assert first.arbitration.status.code == rpc_code.NOT_FOUND
        assert not first.arbitration.HasField("election_id")  # there never was a primary
    primary = pp_node.client(election_id=1)
    assert primary.arbitrations.empty()  # open_stream took its answer: OK
    primary.set_pipeline(build_p4info(PIPELINE), b"")


def test_write_from_a_connection_that_never_arbitrated_is_refused(tcp_pp_node) -> None:
    """The election id is not a password: a client on another connection reusing the primary's
    id (FM's is 2^32 + its etcd revision, easy to guess) may not write."""
    primary = tcp_pp_node.primary_with_pipeline(election_id=(1 << 32) + 5)
    rogue = tcp_pp_node.client(election_id=(1 << 32) + 5, arbitrate=False)
    err = write_error(rogue, [update(INSERT, PIPELINE, flow_entry())])
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(P4RuntimeError) as perr:
        rogue.set_pipeline(build_p4info(PIPELINE), b"")
    assert perr.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert primary.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))]) == []
    primary.write([update(INSERT, PIPELINE, flow_entry())])  # its own connection may


# ---- packet I/O and the pipeline's frame size -----------------------------------------------

OUT = {f.name: i for i, f in enumerate(PIPELINE.packet_out.fields, start=1)}


def _to_port(port: int) -> list[tuple[int, bytes]]:
    return [(OUT["egress_port"], port.to_bytes(2, "big"))]


def _into_pipeline(port: int) -> list[tuple[int, bytes]]:
    return [(OUT["ingress_port"], port.to_bytes(2, "big")), (OUT["submit_to_ingress"], b"\x01")]


def _capture(ns: str, ifname: str) -> socket.socket:
    with netns.entered(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((ifname, 0))
    s.settimeout(5)
    return s


def test_packet_out_outside_the_frame_sizes_is_invalid_argument(pp_node) -> None:
    """A PacketOut under 14 or over 3520 bytes raised ValueError and tore down the primary's
    stream (FM re-injecting a frame from a port with a larger MTU lost its session). Each is
    now a StreamError INVALID_ARGUMENT, and the stream goes on. Into the pipeline, a frame of
    3409..3520 bytes failed in the kernel (UNAVAILABLE, EINVAL): INVALID_ARGUMENT too, naming
    the limit."""
    c = pp_node.primary_with_pipeline()
    bad = [(13, _to_port(1)), (13, _into_pipeline(1)), (3521, _into_pipeline(1)),
           (3521, _to_port(1)), (65000, _into_pipeline(1))]  # fmt: skip
    for size, meta in bad:
        c.packet_out(b"\x02" * size, meta)
        err = c.stream_errors.get(timeout=10)
        assert err.canonical_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], err.message
        assert len(err.packet_out.packet_out.payload) == size
    # Into the pipeline, a live-frames test run: the kernel keeps a page header in front of
    # the frame, 112 bytes on 6.18 (net/bpf/test_run.c: struct xdp_page_head).
    limit = 3520 - 112
    c.packet_out(b"\x02" * (limit + 1), _into_pipeline(1))
    err = c.stream_errors.get(timeout=10)
    assert err.canonical_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], err.message
    assert f"at most {limit}" in err.message
    c.packet_out(b"\x02" * limit, _into_pipeline(1))
    rx = _capture(pp_node.ns, "peer1")
    frame = bytes.fromhex("0200000000aa0200000000bb88b5") + bytes(1000)  # local EtherType
    c.packet_out(frame, _to_port(1))
    while (got := rx.recv(65536)) != frame:
        assert got  # other traffic on the veth (IPv6 neighbour discovery) is skipped
    rx.close()
    assert c.stream_errors.empty()
    c.write([update(INSERT, PIPELINE, flow_entry())])  # and the session is whole


def test_frames_over_the_limit_are_counted_drops_on_a_live_port(pp_node) -> None:
    """The XDP program drops and counts a frame longer than MAX_FRAME (a jumbo or GSO frame
    reaches generic XDP on a port with a larger MTU)."""
    for ifname in ("pp1", "peer1"):
        netns.ip("link", "set", ifname, "mtu", "9000", ns=pp_node.ns)
    c = pp_node.primary_with_pipeline()
    with netns.entered(pp_node.ns):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind(("peer1", 0))
    ipv4 = bytes.fromhex("0200000000aa0200000000bb0800")
    for size in (3520, 5000, 9014):
        tx.send(ipv4 + bytes(size - 14))
    tx.close()
    reasons = PIPELINE.counter("drop_reasons").id
    too_long = PIPELINE.drop_reason("frame_too_long")
    wait_until(lambda: c.read_counter(reasons).get(too_long, (0, 0))[0] >= 2, 10,
               "two frame_too_long drops")  # fmt: skip
    assert c.read_counter(reasons)[too_long] == (2, 5000 + 9014)


def _flow_ports(c) -> dict[int, int]:
    """src_port → the snat's new source port, for every flow entry."""
    out = {}
    for e in c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))]):
        te = e.table_entry
        out[int.from_bytes(te.match[4].exact.value, "big")] = int.from_bytes(
            te.action.action.params[1].value, "big"
        )
    return out


def test_updates_of_one_key_in_a_batch_each_get_a_result(primary) -> None:
    """An INSERT and a MODIFY of one key in a batch raised KeyError: the whole batch failed
    with UNKNOWN and no details. Each update sees the ones before it (§12.2's serial order)."""
    c = primary
    c.write([
        update(INSERT, PIPELINE, flow_entry(sport=1)),
        update(MODIFY, PIPELINE, flow_entry(sport=1, src_port=50001)),
        update(INSERT, PIPELINE, flow_entry(sport=2)),
        update(DELETE, PIPELINE, flow_entry(sport=2)),
        update(INSERT, PIPELINE, flow_entry(sport=3)),
        update(MODIFY, PIPELINE, flow_entry(sport=3, src_port=50003)),
        update(MODIFY, PIPELINE, flow_entry(sport=3, src_port=50004)),
    ])  # fmt: skip
    assert _flow_ports(c) == {1: 50001, 3: 50004}
    err = write_error(c, [
        update(DELETE, PIPELINE, flow_entry(sport=4)),  # not there yet
        update(INSERT, PIPELINE, flow_entry(sport=4)),
        update(INSERT, PIPELINE, flow_entry(sport=4)),  # there now
        update(MODIFY, PIPELINE, flow_entry(sport=4, src_port=50005)),
        update(INSERT, PIPELINE, acl_entry(5)),
        update(MODIFY, PIPELINE, acl_entry(5)),
        update(INSERT, PIPELINE, acl_entry(5)),
    ])  # fmt: skip
    assert [(i, code) for i, code, _ in err.errors] == [
        (0, "NOT_FOUND"), (2, "ALREADY_EXISTS"), (6, "ALREADY_EXISTS")]  # fmt: skip
    assert _flow_ports(c) == {1: 50001, 3: 50004, 4: 50005}


def test_idle_timeout_notifies_resets_the_timer_and_keeps_the_entry(primary) -> None:
    """§16.1: an entry idle for its timeout is notified (key, metadata and timeout set), its
    timer is reset (another notification one timeout later) and the entry is unchanged."""
    c = primary
    while not c.idle_notifications.empty():
        c.idle_notifications.get_nowait()
    idle = update(INSERT, PIPELINE, flow_entry(sport=7))
    idle.entity.table_entry.idle_timeout_ns = 300_000_000
    idle.entity.table_entry.metadata = b"cookie"
    busy = update(INSERT, PIPELINE, flow_entry(sport=8))  # no timeout: never notified
    c.write([idle, busy])
    written = idle.entity.table_entry
    times = []
    t0 = time.monotonic()
    for _ in range(2):
        note = c.idle_notifications.get(timeout=10)
        times.append(time.monotonic() - t0)
        (te,) = note.table_entry
        assert (te.table_id, list(te.match)) == (written.table_id, list(written.match))
        assert (te.metadata, te.idle_timeout_ns) == (b"cookie", 300_000_000)
    assert times[0] >= 0.25 and times[1] - times[0] >= 0.25  # a coarse clock: a few ms early
    read = c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))])
    by_port = {int.from_bytes(e.table_entry.match[4].exact.value, "big"): e.table_entry
               for e in read}  # fmt: skip
    assert by_port[7] == written  # action, params, timeout and metadata as written
    assert by_port[8] == busy.entity.table_entry
