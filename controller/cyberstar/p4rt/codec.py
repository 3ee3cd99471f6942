"""Table entries ↔ P4Runtime `TableEntry` messages, by the spec's names and ids.

Bytestrings are written in canonical form (no leading zero bytes) and read in canonical or
padded form, as the P4Runtime specification asks of clients and servers.
"""

from __future__ import annotations

from finsy.proto import p4r

from cyberstar.pipeline.entries import Match, TableEntry
from cyberstar.pipeline.model import MatchKind, Pipeline
from cyberstar.pipeline.values import LpmValue, TernaryValue, canonical_bytes


def table_entry_to_proto(pipeline: Pipeline, entry: TableEntry) -> p4r.TableEntry:
    t = pipeline.table(entry.table)
    msg = p4r.TableEntry(table_id=t.id)
    if entry.is_default:
        msg.is_default_action = True
    for field_id, k in enumerate(t.key, start=1):
        m = entry.match.get(k.name)
        if m is None or _is_dont_care(k.match, m):
            continue
        fm = msg.match.add(field_id=field_id)
        if k.match is MatchKind.EXACT:
            assert isinstance(m, int)
            fm.exact.value = canonical_bytes(m)
        elif k.match is MatchKind.LPM:
            assert isinstance(m, LpmValue)
            fm.lpm.value = canonical_bytes(m.value)
            fm.lpm.prefix_len = m.prefix_len
        else:
            assert isinstance(m, TernaryValue)
            fm.ternary.value = canonical_bytes(m.value)
            fm.ternary.mask = canonical_bytes(m.mask)
    action = pipeline.action(entry.action)
    msg.action.action.action_id = action.id
    for param_id, prm in enumerate(action.params, start=1):
        msg.action.action.params.add(
            param_id=param_id, value=canonical_bytes(entry.params[prm.name])
        )
    if entry.priority:
        msg.priority = entry.priority
    if entry.idle_timeout_ns:
        msg.idle_timeout_ns = entry.idle_timeout_ns
    if entry.metadata:
        msg.metadata = entry.metadata
    return msg


def _is_dont_care(kind: MatchKind, m: Match) -> bool:
    """P4Runtime omits wildcard fields: a /0 prefix or an all-zero ternary mask."""
    if kind is MatchKind.LPM:
        return isinstance(m, LpmValue) and m.prefix_len == 0
    if kind is MatchKind.TERNARY:
        return isinstance(m, TernaryValue) and m.mask == 0
    return False


def update(kind: int, pipeline: Pipeline, entry: TableEntry) -> p4r.Update:
    """An Update of `kind` (p4r.Update.INSERT / MODIFY / DELETE) for one entry."""
    return p4r.Update(
        type=kind, entity=p4r.Entity(table_entry=table_entry_to_proto(pipeline, entry))
    )
