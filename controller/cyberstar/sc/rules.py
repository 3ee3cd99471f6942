"""SC's rules as the wire carries them (`sc_pb2.Rule`) and as the pipeline validates them.

Field and parameter names come from the pipeline spec, never from a second list here.
"""

from __future__ import annotations

from cyberstar.pipeline.entries import TableEntry, build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.proto import sc_pb2
from cyberstar.sc.state import FlowRule

FLOW_TABLE = "flow_table"
_KEY_FIELDS = tuple(k.name for k in PIPELINE.table(FLOW_TABLE).key)
_PARAMS = {a.name: tuple(p.name for p in a.params) for a in PIPELINE.actions}


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
