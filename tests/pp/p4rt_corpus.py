"""The differential corpus: request sequences replayed against bmv2 and the XDP node.

Each case is a function of a `Session` (one target, a block of election ids of its own) that
returns its observations as {step: outcome}. Cases leave the target as they found it apart
from the pipeline and the highest election id seen, so they run in any order after the
no-pipeline ones (which need a fresh target and come first). Entries are built from the
pipeline spec's user-level values; invalid ones are valid entries with one thing broken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from finsy.proto import p4r

from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from pp.p4rt_oracle import Connection, Outcome, Stream, Target, settle

INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
Action = p4r.SetForwardingPipelineConfigRequest
ResponseType = p4r.GetForwardingPipelineConfigRequest
TABLE = {t.name: t.id for t in PIPELINE.tables}
COUNTER = {c.name: c.id for c in PIPELINE.counters}


@dataclass
class Session:
    target: Target
    base: int  # this case's election ids are base + 1, base + 2, ...
    connections: list[Connection] = field(default_factory=list)

    @property
    def device_id(self) -> int:
        return self.target.device_id

    def connect(self) -> Connection:
        c = self.target.connect()
        self.connections.append(c)
        return c

    def controller(self, offset: int | None) -> tuple[Connection, Stream, Outcome]:
        """A connection whose stream arbitrated with base + offset (None: no election id)."""
        c = self.connect()
        s = c.stream()
        s.arbitrate(self.device_id, None if offset is None else self.base + offset)
        return c, s, s.take()

    def primary(self) -> tuple[Connection, Stream]:
        c, s, answer = self.controller(1)
        assert answer is not None and answer[-1] == "OK", f"{self.target.name}: {answer}"
        return c, s

    def eid(self, offset: int) -> p4r.Uint128:
        value = max(0, self.base + offset)
        return p4r.Uint128(high=value >> 64, low=value % 2**64)

    def pipeline(self, action: int = Action.VERIFY_AND_COMMIT, offset: int = 1,
                 with_config: bool = True, cookie: int | None = None,
                 device_id: int | None = None) -> Action:  # fmt: skip
        req = Action(device_id=self.device_id if device_id is None else device_id,
                     election_id=self.eid(offset), action=action)  # fmt: skip
        if with_config:
            req.config.p4info.CopyFrom(self.target.p4info)
            req.config.p4_device_config = self.target.device_config
            if cookie is not None:
                req.config.cookie.cookie = cookie
        return req

    def write(self, updates: list[p4r.Update], offset: int = 1,
              device_id: int | None = None) -> p4r.WriteRequest:  # fmt: skip
        return p4r.WriteRequest(device_id=self.device_id if device_id is None else device_id,
                                election_id=self.eid(offset), updates=updates)  # fmt: skip

    def read(self, *entities: p4r.Entity, device_id: int | None = None) -> p4r.ReadRequest:
        return p4r.ReadRequest(device_id=self.device_id if device_id is None else device_id,
                               entities=entities)  # fmt: skip

    def close(self) -> None:
        for c in self.connections:
            c.close()


# ---- entries ---------------------------------------------------------------------------------


def entry(table: str, n: int = 1, **overrides) -> p4r.TableEntry:
    """A valid entry of `table`, distinct for each `n`."""
    if table == "tenant_classify":
        e = build_entry(PIPELINE, table, {"ingress_port": n, "vni": 100 + n,
                                          "dst_addr": f"10.{n}.0.0/16"},
                        "set_tenant", {"tenant_id": n})  # fmt: skip
    elif table == "acl":
        e = build_entry(PIPELINE, table, {"tenant_id": {"value": n, "mask": 0xFFFF},
                                          "dst_port": {"value": 80, "mask": 0xFFFF}},
                        "acl_deny", {}, priority=10 + n)  # fmt: skip
    elif table == "flow_table":
        e = build_entry(PIPELINE, table, {"tenant_id": 7, "src_addr": "192.168.1.2",
                                          "dst_addr": "10.0.0.5", "protocol": 6,
                                          "src_port": 40000 + n, "dst_port": 80},
                        "snat", {"src_addr": "203.0.113.9", "src_port": 50000 + n,
                                 "nexthop_id": 2}, **overrides)  # fmt: skip
    elif table == "next_hop":
        e = build_entry(
            PIPELINE,
            table,
            {"nexthop_id": n},
            "set_next_hop",
            {"port": 2, "smac": "02:00:00:00:00:01", "dmac": "02:00:00:00:00:02"},
        )
    elif table == "handoff":
        e = build_entry(PIPELINE, table, {"ingress_port": n}, "hand_off", {"port": 2})
    else:
        raise KeyError(table)
    return update(INSERT, PIPELINE, e).entity.table_entry


def upd(kind: int, te: p4r.TableEntry) -> p4r.Update:
    return p4r.Update(type=kind, entity=p4r.Entity(table_entry=te))


def broken(table: str, how: Callable[[p4r.TableEntry], None], n: int = 1) -> p4r.TableEntry:
    te = entry(table, n)
    how(te)
    return te


def table_read(table: str | None = None, **fields) -> p4r.Entity:
    te = p4r.TableEntry(table_id=TABLE[table] if table else 0, **fields)
    return p4r.Entity(table_entry=te)


def default_entry(table: str, action: str | None = None) -> p4r.TableEntry:
    te = p4r.TableEntry(table_id=TABLE[table], is_default_action=True)
    if action is not None:
        te.action.action.action_id = PIPELINE.action(action).id
    return te


# ---- the cases -------------------------------------------------------------------------------

Observations = dict[str, Outcome]


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Session], Observations]
    fresh: bool  # needs a target without a pipeline (runs before every other case)


CASES: list[Case] = []


def case(name: str, fresh: bool = False):
    def register(fn: Callable[[Session], Observations]) -> Callable[[Session], Observations]:
        CASES.append(Case(name, fn, fresh))
        return fn

    return register


def config_outcome(s: Session, response: p4r.GetForwardingPipelineConfigResponse | None,
                   sent_cookie: int | None) -> Outcome:  # fmt: skip
    """What a GetForwardingPipelineConfig answer holds, judged against what was set."""
    if response is None:
        return ()
    if not response.HasField("config"):
        return ("config unset",)
    c = response.config
    return (
        "p4info" if c.HasField("p4info") and c.p4info == s.target.p4info else
        "other p4info" if c.HasField("p4info") else "no p4info",
        "device config" if c.p4_device_config == s.target.device_config and
        c.p4_device_config else "other device config" if c.p4_device_config else "none",
        c.cookie.cookie if c.HasField("cookie") else "no cookie",
        sent_cookie,
    )  # fmt: skip


def get_configs(s: Session, conn: Connection, tag: str, cookie: int | None = None
                ) -> Observations:  # fmt: skip
    out = {}
    for rt in (ResponseType.ALL, ResponseType.COOKIE_ONLY, ResponseType.P4INFO_AND_COOKIE,
               ResponseType.DEVICE_CONFIG_AND_COOKIE):  # fmt: skip
        req = p4r.GetForwardingPipelineConfigRequest(device_id=s.device_id, response_type=rt)
        outcome, resp = conn.call("GetForwardingPipelineConfig", req)
        out[f"{tag} {ResponseType.ResponseType.Name(rt)}"] = outcome + config_outcome(
            s, resp, cookie
        )
    return out


def _capabilities(s: Session) -> Observations:
    outcome, resp = s.connect().call("Capabilities", p4r.CapabilitiesRequest())
    return {"capabilities": (*outcome, resp.p4runtime_api_version if resp else "")}


def _get_without_pipeline(s: Session) -> Observations:
    conn = s.connect()
    out = get_configs(s, conn, "no pipeline")
    req = p4r.GetForwardingPipelineConfigRequest(device_id=s.device_id + 41)
    out["unknown device"] = conn.unary("GetForwardingPipelineConfig", req)
    return out


def _use_without_pipeline(s: Session) -> Observations:
    conn, stream = s.primary()
    out = {
        "read all": conn.read(s.read(table_read())),
        "read table": conn.read(s.read(table_read("next_hop"))),
        "read counter": conn.read(
            s.read(p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=COUNTER["verdicts"])))
        ),
        "write": conn.unary("Write", s.write([upd(INSERT, entry("next_hop"))])),
        "commit nothing saved": conn.unary(
            "SetForwardingPipelineConfig", s.pipeline(Action.COMMIT, with_config=False)
        ),
    }
    stream.send(p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"\x00" * 60)))
    out["packet out"] = settle([stream])[0]
    return out


def _save_then_commit(s: Session) -> Observations:
    conn, _ = s.primary()
    out = {"verify": conn.unary("SetForwardingPipelineConfig", s.pipeline(Action.VERIFY))}
    out |= get_configs(s, conn, "after verify")
    out["save"] = conn.unary(
        "SetForwardingPipelineConfig", s.pipeline(Action.VERIFY_AND_SAVE, cookie=7)
    )
    out |= get_configs(s, conn, "after save", 7)
    out["commit"] = conn.unary(
        "SetForwardingPipelineConfig", s.pipeline(Action.COMMIT, with_config=False)
    )
    out |= get_configs(s, conn, "after commit", 7)
    return out


def committed(s: Session, cookie: int | None = None) -> tuple[Connection, Stream]:
    """A primary on a freshly committed pipeline (empty tables, default entries reset)."""
    conn, stream = s.primary()
    outcome = conn.unary("SetForwardingPipelineConfig", s.pipeline(cookie=cookie))
    assert outcome == ("OK",), f"{s.target.name}: {outcome}"
    return conn, stream


def write(conn: Connection, s: Session, *updates: p4r.Update) -> Outcome:
    return conn.unary("Write", s.write(list(updates)))


# ---- pipeline -------------------------------------------------------------------------------


def _get_config(s: Session) -> Observations:
    conn, _ = committed(s, cookie=0xC0FFEE)
    out = get_configs(s, conn, "cookie", 0xC0FFEE)
    conn.unary("SetForwardingPipelineConfig", s.pipeline())
    out |= get_configs(s, conn, "no cookie")
    req = p4r.GetForwardingPipelineConfigRequest(device_id=s.device_id + 41)
    out["unknown device"] = conn.unary("GetForwardingPipelineConfig", req)
    return out


def _save_commit(s: Session) -> Observations:
    conn, _ = committed(s, cookie=1)
    set_ = lambda *a, **kw: conn.unary("SetForwardingPipelineConfig", s.pipeline(*a, **kw))  # noqa: E731
    read_nh = lambda: conn.read(s.read(table_read("next_hop")))  # noqa: E731
    out = {"insert": write(conn, s, upd(INSERT, entry("next_hop")))}
    out["verify"] = set_(Action.VERIFY, cookie=2)
    out["unspecified"] = set_(Action.UNSPECIFIED, cookie=3)
    out["save"] = set_(Action.VERIFY_AND_SAVE, cookie=4)
    out |= get_configs(s, conn, "saved", 4)
    out["write after save"] = write(conn, s, upd(INSERT, entry("next_hop", 2)))
    out["read after save"] = read_nh()
    out["commit"] = set_(Action.COMMIT, with_config=False)
    out |= get_configs(s, conn, "committed", 4)
    out["read after commit"] = read_nh()
    return out


def _reconcile(s: Session) -> Observations:
    conn, _ = committed(s, cookie=1)
    set_ = lambda *a, **kw: conn.unary("SetForwardingPipelineConfig", s.pipeline(*a, **kw))  # noqa: E731
    out = {"insert": write(conn, s, upd(INSERT, entry("next_hop")))}
    out["reconcile"] = set_(Action.RECONCILE_AND_COMMIT, cookie=5)
    out["read after reconcile"] = conn.read(s.read(table_read("next_hop")))
    out["commit after reconcile"] = set_(Action.COMMIT, with_config=False)  # bmv2 needs it
    return out


def _config_presence(s: Session) -> Observations:
    conn, _ = committed(s, cookie=1)
    set_ = lambda *a, **kw: conn.unary("SetForwardingPipelineConfig", s.pipeline(*a, **kw))  # noqa: E731
    read = lambda: conn.read(s.read(table_read("next_hop")))  # noqa: E731
    # COMMIT without a saved config, VERIFY_AND_SAVE or VERIFY_AND_COMMIT without a config,
    # COMMIT with one and RECONCILE_AND_COMMIT without one leave bmv2 unable to read or take a
    # pipeline (docs/p4runtime.md): the XDP node's answers to those are in test_p4rt_server.
    return {
        "verify without config": set_(Action.VERIFY, with_config=False),
        "unspecified without config": set_(Action.UNSPECIFIED, with_config=False),
        "read": read(),
    }


def _set_permissions(s: Session) -> Observations:
    _, _ = committed(s)
    backup, _, answer = s.controller(0)
    return {
        "backup answer": answer,
        "backup sets": backup.unary("SetForwardingPipelineConfig", s.pipeline(offset=0)),
        "no election id": backup.unary(
            "SetForwardingPipelineConfig", Action(device_id=s.device_id, action=Action.VERIFY)
        ),
        "unknown device": backup.unary(
            "SetForwardingPipelineConfig", s.pipeline(device_id=s.device_id + 41)
        ),
    }


# ---- arbitration -----------------------------------------------------------------------------


def arbitration_case(name: str, offsets: list[int | None], then_write: bool = True) -> None:
    """Controllers arbitrate one after another with base + offset (None: no election id);
    every stream's notifications are observed, then each one tries to write."""

    def run(s: Session) -> Observations:
        committed(s)  # the setup's primary (offset 1) leaves when its connection closes
        s.close()
        s.connections.clear()
        out: Observations = {}
        streams: list[Stream] = []
        conns: list[Connection] = []
        for i, offset in enumerate(offsets):
            conn = s.connect()
            stream = conn.stream()
            stream.arbitrate(s.device_id, None if offset is None else max(0, s.base + offset))
            conns.append(conn)
            streams.append(stream)
            for j, got in enumerate(settle(streams)):
                out[f"{i}: stream {j}"] = got
        if then_write:
            for i, (conn, offset) in enumerate(zip(conns, offsets, strict=True)):
                te = entry("next_hop", 100 + i)
                req = s.write([upd(INSERT, te)], offset=0 if offset is None else offset)
                if offset is None:
                    req.ClearField("election_id")
                out[f"write {i}"] = conn.unary("Write", req)
        return out

    case(f"arbitration: {name}")(run)


arbitration_case("none", [None])
arbitration_case("zero", [-(1 << 40)])  # election id 0
arbitration_case("lower after higher", [3, 2])
arbitration_case("higher after lower", [2, 3])
arbitration_case("equal", [2, 2])
arbitration_case("several", [2, 4, 3, None])


def _primary_leaves(s: Session) -> Observations:
    committed(s)
    s.close()
    s.connections.clear()
    a = s.connect()
    sa = a.stream()
    sa.arbitrate(s.device_id, s.base + 2)
    b = s.connect()
    sb = b.stream()
    sb.arbitrate(s.device_id, s.base + 3)
    settle([sa, sb])
    sb.close()
    out = {"after primary left": settle([sa])[0]}
    sa.arbitrate(s.device_id, s.base + 3)
    out["re-arbitrate with the highest"] = settle([sa])[0]
    out["write"] = a.unary("Write", s.write([upd(INSERT, entry("next_hop", 7))], offset=3))
    return out


def _arbitration_fields(s: Session) -> Observations:
    _conn, stream = committed(s)
    out = {}
    for name, role in (("role name", p4r.Role(name="other")), ("role id", p4r.Role(id=5))):
        c = s.connect()
        st = c.stream()
        st.arbitrate(s.device_id, s.base + 5, role)
        out[name] = settle([st])[0]
    c = s.connect()
    st = c.stream()
    st.arbitrate(s.device_id + 41, s.base + 6)
    out["unknown device"] = settle([st])[0]
    st = s.connect().stream()
    st.send(p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"\x00" * 60)))
    out["packet out before arbitration"] = settle([st])[0]
    other = s.connect()
    out["write from another connection"] = other.unary(
        "Write", s.write([upd(INSERT, entry("next_hop", 8))])
    )
    out["write with no election id"] = other.unary(
        "Write",
        p4r.WriteRequest(device_id=s.device_id, updates=[upd(INSERT, entry("next_hop", 9))]),
    )
    out["primary sees"] = settle([stream], first_within=0.3)[0]
    return out


# ---- writes, reads, defaults, counters, idle timeouts, PacketOut ------------------------------


def _field(te: p4r.TableEntry, i: int) -> p4r.FieldMatch:
    return te.match[i]


BREAKAGES: dict[str, Callable[[p4r.TableEntry], None]] = {
    "unknown field id": lambda te: setattr(_field(te, 0), "field_id", 99),
    "too wide": lambda te: setattr(
        getattr(_field(te, 0), _field(te, 0).WhichOneof("field_match_type")), "value", b"\xff" * 5
    ),
    "padded bytes": lambda te: setattr(
        getattr(_field(te, 0), _field(te, 0).WhichOneof("field_match_type")),
        "value",
        b"\x00" + getattr(_field(te, 0), _field(te, 0).WhichOneof("field_match_type")).value,
    ),
    "empty bytes": lambda te: setattr(
        getattr(_field(te, 0), _field(te, 0).WhichOneof("field_match_type")), "value", b""
    ),
    "missing match": lambda te: te.ClearField("match"),
    "no action": lambda te: te.ClearField("action"),
    "unknown action": lambda te: setattr(te.action.action, "action_id", 16777999),
    "missing param": lambda te: (
        te.action.action.params.pop()
        if te.action.action.params
        else setattr(te.action.action, "action_id", PIPELINE.action("no_next_hop").id)
    ),
    "unknown param": lambda te: te.action.action.params.add(param_id=42, value=b"\x01"),
    "priority": lambda te: setattr(te, "priority", 0 if te.priority else 5),
    "idle timeout": lambda te: setattr(te, "idle_timeout_ns", 1_000_000_000),
    "unknown table": lambda te: setattr(te, "table_id", 33554999),
}
TABLES = ("tenant_classify", "acl", "flow_table", "next_hop", "handoff")


def table_case(table: str) -> None:
    def run(s: Session) -> Observations:
        conn, _ = committed(s)
        read = lambda: conn.read(s.read(table_read(table)))  # noqa: E731
        out = {"insert": write(conn, s, upd(INSERT, entry(table)))}
        out["read"] = read()
        out["duplicate insert"] = write(conn, s, upd(INSERT, entry(table)))
        modified = entry(table)
        modified.action.action.CopyFrom(entry(table, 2).action.action)
        out["modify"] = write(conn, s, upd(MODIFY, modified))
        out["read modified"] = read()
        out["modify missing"] = write(conn, s, upd(MODIFY, entry(table, 3)))
        out["delete missing"] = write(conn, s, upd(DELETE, entry(table, 3)))
        for name, how in BREAKAGES.items():
            if name != "empty bytes":  # bmv2 takes it, last (docs/p4runtime.md)
                out[f"invalid: {name}"] = write(conn, s, upd(INSERT, broken(table, how, 4)))
        out["read after invalid"] = read()
        out["batch"] = write(conn, s, upd(INSERT, entry(table, 5)),
                             upd(INSERT, broken(table, BREAKAGES["unknown action"], 6)),
                             upd(INSERT, entry(table, 5)), upd(DELETE, entry(table, 7)),
                             upd(DELETE, entry(table)))  # fmt: skip
        out["read after batch"] = read()
        out["read one entry"] = conn.read(s.read(p4r.Entity(table_entry=entry(table, 5))))
        out["delete"] = write(conn, s, upd(DELETE, entry(table, 5)))
        out["read after delete"] = read()
        empty = broken(table, BREAKAGES["empty bytes"], 4)
        out["invalid: empty bytes"] = write(conn, s, upd(INSERT, empty))
        return out

    case(f"write: {table}")(run)


for _t in TABLES:
    table_case(_t)


def _read_filters(s: Session) -> Observations:
    conn, _ = committed(s)
    write(conn, s, *[upd(INSERT, entry(t)) for t in TABLES])
    with_counters = p4r.TableEntry(table_id=TABLE["flow_table"])
    with_counters.counter_data.SetInParent()
    return {
        "all tables": conn.read(s.read(table_read())),
        "one table with counters": conn.read(s.read(p4r.Entity(table_entry=with_counters))),
        "two entities": conn.read(s.read(table_read("acl"), table_read("next_hop"))),
        "unknown table": conn.read(
            s.read(p4r.Entity(table_entry=p4r.TableEntry(table_id=33554999)))
        ),
        "unknown device": conn.read(s.read(table_read(), device_id=s.device_id + 41)),
        "no entities": conn.read(s.read()),
        "counter cells": conn.read(
            s.read(p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=COUNTER["verdicts"])))
        ),
        "counter cell": conn.read(
            s.read(
                p4r.Entity(
                    counter_entry=p4r.CounterEntry(
                        counter_id=COUNTER["verdicts"], index=p4r.Index(index=2)
                    )
                )
            )
        ),
        "direct counter": conn.read(
            s.read(
                p4r.Entity(
                    direct_counter_entry=p4r.DirectCounterEntry(table_entry=entry("flow_table"))
                )
            )
        ),
    }


def _defaults(s: Session) -> Observations:
    conn, _ = committed(s)
    out = {}
    for t in TABLES:
        out[f"read {t}"] = conn.read(
            s.read(
                p4r.Entity(table_entry=p4r.TableEntry(table_id=TABLE[t], is_default_action=True))
            )
        )
    out["modify"] = write(conn, s, upd(MODIFY, default_entry("flow_table", "flow_drop")))
    out["read modified"] = conn.read(
        s.read(
            p4r.Entity(
                table_entry=p4r.TableEntry(table_id=TABLE["flow_table"], is_default_action=True)
            )
        )
    )
    out["table-only action"] = write(conn, s, upd(MODIFY, default_entry("flow_table", "forward")))
    out["insert"] = write(conn, s, upd(INSERT, default_entry("acl", "acl_deny")))
    out["delete"] = write(conn, s, upd(DELETE, default_entry("acl")))
    out["reset"] = write(conn, s, upd(MODIFY, default_entry("flow_table")))
    out["read reset"] = conn.read(
        s.read(
            p4r.Entity(
                table_entry=p4r.TableEntry(table_id=TABLE["flow_table"], is_default_action=True)
            )
        )
    )
    out["default-only action as entry"] = write(
        conn,
        s,
        upd(
            INSERT,
            broken(
                "flow_table",
                lambda te: te.action.action.CopyFrom(
                    default_entry("flow_table", "punt_miss").action.action
                ),
            ),
        ),
    )
    return out


def _idle(s: Session) -> Observations:
    conn, stream = committed(s)
    settle([stream], first_within=0.1)
    out = {"insert": write(conn, s, upd(INSERT, entry("flow_table", idle_timeout_ns=300_000_000)))}
    out["notification"] = (stream.take(10.0),)
    # An idle entry is notified again each timeout: gone, it cannot reach the next case's stream.
    out["delete"] = write(conn, s, upd(DELETE, entry("flow_table")))
    return out


def _packet_out(s: Session) -> Observations:
    _, stream = committed(s)
    frame = (
        bytes.fromhex(
            "02000000000202000000000108004500001c000100004011f97d0a0000010a0000020035003500080000"
        )
        + b"\x00" * 20
    )
    meta = {f.name: i for i, f in enumerate(PIPELINE.packet_out.fields, start=1)}
    out = {}
    for name, md in (
        ("to port 2", [(meta["egress_port"], b"\x02")]),
        ("unknown metadata", [(9, b"\x02")]),
        ("no metadata", []),
    ):
        po = p4r.PacketOut(payload=frame)
        for mid, value in md:
            po.metadata.add(metadata_id=mid, value=value)
        stream.send(p4r.StreamMessageRequest(packet=po))
        out[name] = settle([stream], first_within=0.5)[0]
    return out


for _name, _run, _fresh in (
    ("capabilities", _capabilities, True),
    ("no pipeline: get config", _get_without_pipeline, True),
    ("no pipeline: read, write, packet out", _use_without_pipeline, True),
    ("no pipeline: verify, save, commit", _save_then_commit, True),
    ("pipeline: get config in every response type", _get_config, False),
    ("pipeline: save, then commit", _save_commit, False),
    ("pipeline: reconcile", _reconcile, False),
    ("pipeline: missing or extra config", _config_presence, False),
    ("pipeline: who may set it", _set_permissions, False),
    ("arbitration: primary leaves, re-arbitration", _primary_leaves, False),
    ("arbitration: roles, device ids, other connections", _arbitration_fields, False),
    ("read: filters", _read_filters, False),
    ("default actions", _defaults, False),
    ("idle timeout", _idle, False),
    ("packet out", _packet_out, False),
):
    case(_name, _fresh)(_run)
