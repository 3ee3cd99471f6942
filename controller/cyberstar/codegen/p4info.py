"""Emit the P4Info of the PP pipeline, as p4c-bm2-ss writes it for the generated P4.

Objects appear in p4c's order (tables and actions in declaration order, then counters, direct
counters, controller headers) so that the committed file and p4c's output are the same text.
"""

from __future__ import annotations

from finsy.proto import p4i
from google.protobuf import text_format

from cyberstar.pipeline.model import ActionScope, Pipeline

P4INFO_HEADER = "# proto-file: p4/config/v1/p4info.proto\n# proto-message: p4.config.v1.P4Info\n\n"

_SCOPE_ANNOTATION = {
    ActionScope.TABLE_ONLY: ("@tableonly", p4i.ActionRef.TABLE_ONLY),
    ActionScope.DEFAULT_ONLY: ("@defaultonly", p4i.ActionRef.DEFAULT_ONLY),
}


def build_p4info(p: Pipeline) -> p4i.P4Info:
    info = p4i.P4Info()
    info.pkg_info.arch = "v1model"
    for t in p.tables:
        tbl = info.tables.add()
        _preamble(tbl.preamble, t.id, t.name)
        for i, k in enumerate(t.key, start=1):
            mf = tbl.match_fields.add(id=i, name=k.name, bitwidth=k.width)
            mf.match_type = getattr(p4i.MatchField, k.match.name)
        for ref in t.actions:
            ar = tbl.action_refs.add(id=p.action(ref.action).id)
            if ref.scope in _SCOPE_ANNOTATION:
                annotation, scope = _SCOPE_ANNOTATION[ref.scope]
                ar.annotations.append(annotation)
                ar.scope = scope
        if t.direct_counter:
            tbl.direct_resource_ids.append(t.direct_counter.id)
        tbl.size = t.size
        if t.idle_timeout:
            tbl.idle_timeout_behavior = p4i.Table.NOTIFY_CONTROL
    for a in p.actions:
        act = info.actions.add()
        _preamble(act.preamble, a.id, a.name)
        for i, prm in enumerate(a.params, start=1):
            act.params.add(id=i, name=prm.name, bitwidth=prm.width)
    for c in p.counters:
        cnt = info.counters.add()
        _preamble(cnt.preamble, c.id, c.name)
        cnt.spec.unit = getattr(p4i.CounterSpec, c.unit.value)
        cnt.size = c.size
    for t in p.tables:
        if t.direct_counter:
            dc = info.direct_counters.add()
            _preamble(dc.preamble, t.direct_counter.id, t.direct_counter.name)
            dc.spec.unit = p4i.CounterSpec.BOTH
            dc.direct_table_id = t.id
    for m in p.meters:
        mtr = info.meters.add()
        _preamble(mtr.preamble, m.id, m.name)
        mtr.spec.unit = getattr(p4i.MeterSpec, m.unit.value)
        mtr.size = m.size
    for ch in (p.packet_in, p.packet_out):
        cpm = info.controller_packet_metadata.add()
        _preamble(cpm.preamble, ch.id, ch.name)
        cpm.preamble.annotations.append(f'@controller_header("{ch.name}")')
        for i, f in enumerate(ch.fields, start=1):
            cpm.metadata.add(id=i, name=f.name, bitwidth=f.width)
    info.type_info.SetInParent()
    return info


def _preamble(preamble: p4i.Preamble, obj_id: int, name: str) -> None:
    preamble.id = obj_id
    preamble.name = name
    preamble.alias = name.rsplit(".", 1)[-1]


def generate_p4info_text(p: Pipeline) -> str:
    return P4INFO_HEADER + text_format.MessageToString(build_p4info(p))


def parse_p4info_text(text: str) -> p4i.P4Info:
    return text_format.Parse(text, p4i.P4Info())


def canonical_p4info(info: p4i.P4Info) -> bytes:
    """P4Infos compare by content, not by the order of repeated objects or documentation."""
    copy = p4i.P4Info()
    copy.CopyFrom(info)
    copy.ClearField("pkg_info")
    groups = ("tables", "actions", "counters", "direct_counters", "meters",
              "controller_packet_metadata")  # fmt: skip
    for group in groups:
        items = sorted(getattr(copy, group), key=lambda o: o.preamble.id)
        copy.ClearField(group)
        getattr(copy, group).extend(items)
    return copy.SerializeToString(deterministic=True)
