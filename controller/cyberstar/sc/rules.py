"""SC's rules as the wire carries them (`sc_pb2.Rule`) and as the pipeline validates them.

Field and parameter names come from the pipeline spec, never from a second list here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cyberstar.pipeline.entries import EntryError, TableEntry, build_entry
from cyberstar.pipeline.flow_records import FlowLayout, flow_key
from cyberstar.pipeline.model import ActionScope
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import sc_pb2
from cyberstar.sc.flows import FlowKey
from cyberstar.sc.state import FlowRule

FLOW_TABLE = "flow_table"
_KEY_FIELDS = tuple(k.name for k in PIPELINE.table(FLOW_TABLE).key)
_PARAMS = {a.name: tuple(p.name for p in a.params) for a in PIPELINE.actions}
# fill_rule: a flow_table Rule with its match names set, copied and filled in per reply; the
# match values are (tenant_id, *key) in the order of _KEY_FIELDS.
_TEMPLATE = sc_pb2.Rule(table=FLOW_TABLE, match=[sc_pb2.MatchField(name=n) for n in _KEY_FIELDS])
_VALUE_AT = tuple(("tenant_id", *FlowKey._fields).index(n) for n in _KEY_FIELDS)


def flow_match(tenant_id: int, rule: FlowRule) -> dict[str, int]:
    values = {"tenant_id": tenant_id, **rule.key._asdict()}
    return {name: values[name] for name in _KEY_FIELDS}


def rule_proto(tenant_id: int, rule: FlowRule, idle_timeout_ns: int) -> sc_pb2.Rule:
    match = flow_match(tenant_id, rule)
    return sc_pb2.Rule(
        table=FLOW_TABLE,
        match=[sc_pb2.MatchField(name=n, value=v) for n, v in match.items()],
        action=rule.action,
        params=dict(zip(_PARAMS[rule.action], rule.params, strict=True)),
        idle_timeout_ns=idle_timeout_ns,
    )


def fill_rule(msg: sc_pb2.Rule, tenant_id: int, rule: FlowRule, idle_timeout_ns: int) -> None:
    """`rule_proto` written into an empty message in place (a reply's `rules.add()`): the
    same result at a third of the cost, for the Compute hot path."""
    msg.CopyFrom(_TEMPLATE)
    values = (tenant_id, *rule.key)
    for field, i in zip(msg.match, _VALUE_AT, strict=True):
        field.value = values[i]
    msg.action = rule.action
    msg.params.update(zip(_PARAMS[rule.action], rule.params, strict=True))
    msg.idle_timeout_ns = idle_timeout_ns


LAYOUT = FlowLayout(PIPELINE)


def packed_rules(tenant_id: int, rules: Sequence[FlowRule], idle_timeout_ns: int) -> bytes | None:
    """The rules as FM's packed records hold them (`flow_records`), or None when they do not
    fit that layout (a timeout that is not whole milliseconds, a value too wide): then the
    reply carries them as protobuf rules."""
    idle_ms, sub_ms = divmod(idle_timeout_ns, 1_000_000)
    if sub_ms:
        return None
    try:
        return b"".join(
            LAYOUT.pack_rule(flow_key(tenant_id, *r.key), idle_ms, r.action, r.params)
            for r in rules
        )
    except (struct.error, KeyError):
        return None


def table_entry(rule: sc_pb2.Rule) -> TableEntry:
    """Validate a wire rule against the pipeline and return the target-neutral entry."""
    table = PIPELINE.table(rule.table)
    kinds = {k.name: k.match.value for k in table.key}
    match: dict[str, object] = {}
    for m in rule.match:
        kind = kinds.get(m.name)
        if kind == "lpm":
            match[m.name] = {"value": m.value, "prefix_len": m.prefix_len}
        elif kind == "ternary":
            match[m.name] = {"value": m.value, "mask": m.mask}
        else:
            match[m.name] = m.value
    return build_entry(
        PIPELINE,
        rule.table,
        match,
        rule.action,
        dict(rule.params),
        priority=rule.priority or None,
        idle_timeout_ns=rule.idle_timeout_ns,
    )


_TABLE = PIPELINE.table(FLOW_TABLE)
_KEY_WIDTHS = tuple(k.width for k in _TABLE.key)
_ACTIONS = {
    r.action: tuple((p.name, p.width) for p in PIPELINE.action(r.action).params)
    for r in _TABLE.actions
    if r.scope is not ActionScope.DEFAULT_ONLY
}


def flow_table_entry(rule: sc_pb2.Rule, metadata: bytes = b"") -> TableEntry:
    """`table_entry(rule)` with `metadata`, for the rules SC sends (flow_table, every match
    field in the table's order, as `fill_rule` writes them): the same checks — table, field
    names, widths, action and its scope, parameter names and widths — without the general
    parser. Any other rule takes `table_entry`. EntryError names what is wrong."""
    match_fields = rule.match
    if rule.table != FLOW_TABLE or len(match_fields) != len(_KEY_FIELDS) or rule.priority:
        return _with_metadata(table_entry(rule), metadata)
    match = {}
    for m, name, width in zip(match_fields, _KEY_FIELDS, _KEY_WIDTHS, strict=True):
        if m.name != name or m.prefix_len or m.mask:
            return _with_metadata(table_entry(rule), metadata)
        if m.value >> width:
            raise EntryError(f"{FLOW_TABLE}: {name}={m.value} does not fit in {width} bits")
        match[name] = m.value
    params_spec = _ACTIONS.get(rule.action)
    if params_spec is None or len(rule.params) != len(params_spec):
        return _with_metadata(table_entry(rule), metadata)  # the general path says why
    params = {}
    given = rule.params
    for name, width in params_spec:
        if name not in given:
            return _with_metadata(table_entry(rule), metadata)
        value = given[name]
        if value >> width:
            raise EntryError(f"action {rule.action}: {name}={value} does not fit in {width} bits")
        params[name] = value
    return TableEntry(FLOW_TABLE, match, rule.action, params, 0, False, rule.idle_timeout_ns,
                      metadata)  # fmt: skip


def _with_metadata(entry: TableEntry, metadata: bytes) -> TableEntry:
    return TableEntry(entry.table, entry.match, entry.action, entry.params, entry.priority,
                      entry.is_default, entry.idle_timeout_ns, metadata)  # fmt: skip
