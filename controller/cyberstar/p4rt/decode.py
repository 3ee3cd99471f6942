"""P4Runtime `TableEntry` messages → validated `TableEntry`s, with the specification's codes.

Per table, the ids, widths and match kinds are looked up once (`TableDecoder`), so that decoding
a write batch is a tight loop. Violations raise `P4RuntimeError` with the status code the P4Runtime
specification prescribes (§8.3 bytestrings, §9.1 table entries):

* unknown table / action / field / param id, bad match or action shape → INVALID_ARGUMENT
  (unknown table ids included);
* a value wider than its field, or an empty bytestring → OUT_OF_RANGE;
* lpm bits beyond the prefix, ternary value bits outside the mask, a "don't care" match that is
  not omitted, priority missing or not allowed → INVALID_ARGUMENT;
* an action outside its scope (table-only as default, default-only as entry) → PERMISSION_DENIED.
"""

from __future__ import annotations

from dataclasses import dataclass

from finsy.proto import p4r
from grpc import StatusCode

from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.entries import Match, TableEntry
from cyberstar.pipeline.model import ActionScope, MatchKind, Pipeline, Table
from cyberstar.pipeline.values import LpmValue, TernaryValue, prefix_mask

INSERT, DELETE = p4r.Update.INSERT, p4r.Update.DELETE


def bytes_value(data: bytes, width: int, what: str) -> int:
    """A bytestring of a `width`-bit field: canonical or padded, never wider than the field."""
    if not data:
        raise P4RuntimeError(StatusCode.OUT_OF_RANGE, f"{what}: empty bytestring")
    value = int.from_bytes(data, "big")
    if value >> width:
        raise P4RuntimeError(
            StatusCode.OUT_OF_RANGE, f"{what}: value {value:#x} does not fit in {width} bits"
        )
    return value


@dataclass(frozen=True)
class _Field:
    name: str
    width: int
    kind: MatchKind
    oneof: str  # the FieldMatch oneof member this kind uses


@dataclass(frozen=True)
class _Action:
    name: str
    params: tuple[tuple[str, int], ...]  # (name, width) by param id - 1
    scope: ActionScope


class TableDecoder:
    """Decodes one table's entries; built once per pipeline."""

    def __init__(self, pipeline: Pipeline, table: Table) -> None:
        self.table = table
        self.fields = {
            i: _Field(k.name, k.width, k.match, k.match.value) for i, k in enumerate(table.key, 1)
        }
        self.exact_ids = {i for i, f in self.fields.items() if f.kind is MatchKind.EXACT}
        self.all_exact = len(self.exact_ids) == len(self.fields)
        self.needs_priority = table.needs_priority
        # the all-exact short path's view: field id → (name, width)
        self.exact_by_id = {i: (f.name, f.width) for i, f in self.fields.items()
                            if f.kind is MatchKind.EXACT}  # fmt: skip
        self.actions: dict[int, _Action] = {}
        for ref in table.actions:
            a = pipeline.action(ref.action)
            self.actions[a.id] = _Action(
                a.name, tuple((p.name, p.width) for p in a.params), ref.scope
            )
        self.defaults = {
            k.name: (LpmValue(0, 0) if k.match is MatchKind.LPM else TernaryValue(0, 0))
            for k in table.key
            if k.match is not MatchKind.EXACT
        }

    def decode(self, msg: p4r.TableEntry, *, kind: int) -> TableEntry:
        """Decode a written entry: INSERT needs an action, MODIFY may leave it unset (keep
        the current one), DELETE ignores it (P4Runtime §9.1)."""
        t = self.table
        idle, priority, is_default = msg.idle_timeout_ns, msg.priority, msg.is_default_action
        if msg.is_const:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, f"table {t.name}: is_const must be false"
            )
        if msg.HasField("time_since_last_hit"):
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, f"table {t.name}: time_since_last_hit is read-only"
            )
        if idle and (not t.idle_timeout or idle < 0):
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT,
                f"table {t.name}: idle_timeout_ns {idle} "
                + ("must not be negative" if t.idle_timeout else "(no idle timeout support)"),
            )
        if is_default:
            if len(msg.match) or priority or idle:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT,
                    f"table {t.name}: the default entry takes no match, priority or idle timeout",
                )
            match: dict[str, Match] = {}
        else:
            match = self.decode_match(msg)
            if self.needs_priority != (priority > 0) or priority < 0:
                self._check_priority(priority)
        action, params = "", {}
        if kind != DELETE and msg.HasField("action"):
            action, params = self.decode_action(msg.action, is_default)
        elif kind == INSERT:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, f"table {t.name}: the entry has no action"
            )
        return TableEntry(t.name, match, action, params, priority, is_default, idle, msg.metadata)

    def decode_match(self, msg: p4r.TableEntry) -> dict[str, Match]:
        """The entry's match; the common all-exact, well-formed case takes a short path and
        anything unusual falls through to the full check, which names the problem."""
        if self.all_exact:
            exact, match = self.exact_by_id, {}
            for fm in msg.match:
                data = fm.exact.value
                f = exact.get(fm.field_id)
                if f is None or not data or f[0] in match:
                    break
                value = int.from_bytes(data, "big")
                if value >> f[1]:
                    break
                match[f[0]] = value
            else:
                if len(match) == len(exact):
                    return match
        return self._decode_match_checked(msg)

    def _decode_match_checked(self, msg: p4r.TableEntry) -> dict[str, Match]:
        t = self.table
        match: dict[str, Match] = dict(self.defaults) if self.defaults else {}
        seen: set[int] = set()
        fields = self.fields
        for fm in msg.match:
            fid = fm.field_id
            f = fields.get(fid)
            if f is None:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"table {t.name} has no match field id {fid}"
                )
            if fid in seen:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"match field {f.name} given twice"
                )
            seen.add(fid)
            kind = fm.WhichOneof("field_match_type")
            if kind != f.oneof:
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT,
                    f"table {t.name} field {f.name} is {f.oneof}, the update gives {kind}",
                )
            if kind == "exact":
                data = fm.exact.value
                value = int.from_bytes(data, "big")
                if not data or value >> f.width:  # rare: let bytes_value say what is wrong
                    bytes_value(data, f.width, f"table {t.name} field {f.name}")
                match[f.name] = value
                continue
            what = f"table {t.name} field {f.name}"
            if f.kind is MatchKind.LPM:
                value = bytes_value(fm.lpm.value, f.width, what)
                plen = fm.lpm.prefix_len
                if not 0 < plen <= f.width:
                    raise P4RuntimeError(
                        StatusCode.INVALID_ARGUMENT,
                        f"{what}: prefix length {plen} (a /0 match must be omitted)",
                    )
                if value & ~prefix_mask(plen, f.width):
                    raise P4RuntimeError(
                        StatusCode.INVALID_ARGUMENT, f"{what}: bits set beyond the /{plen} prefix"
                    )
                match[f.name] = LpmValue(value, plen)
            else:
                value = bytes_value(fm.ternary.value, f.width, what)
                mask = bytes_value(fm.ternary.mask, f.width, what + " mask")
                if mask == 0:
                    raise P4RuntimeError(
                        StatusCode.INVALID_ARGUMENT,
                        f"{what}: a zero mask is don't-care: omit the field",
                    )
                if value & ~mask:
                    raise P4RuntimeError(
                        StatusCode.INVALID_ARGUMENT, f"{what}: value bits outside the mask"
                    )
                match[f.name] = TernaryValue(value, mask)
        missing = self.exact_ids - seen
        if missing:
            names = ", ".join(self.fields[i].name for i in sorted(missing))
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, f"table {t.name}: exact field(s) {names} missing"
            )
        return match

    def _check_priority(self, priority: int) -> None:
        t = self.table
        if t.needs_priority and priority <= 0:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT,
                f"table {t.name} has ternary fields: priority must be > 0",
            )
        if not t.needs_priority and priority:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, f"table {t.name} takes no priority (found {priority})"
            )

    def decode_action(self, ta: p4r.TableAction, is_default: bool) -> tuple[str, dict[str, int]]:
        """The entry's action and params; the common well-formed case takes a short path and
        anything unusual falls through to the full check, which names the problem."""
        act = ta.action
        a = self.actions.get(act.action_id)  # 0 (unset) when `ta` is not a direct action
        out_of_scope = ActionScope.TABLE_ONLY if is_default else ActionScope.DEFAULT_ONLY
        if a is not None and a.scope is not out_of_scope:
            declared, params = a.params, {}
            for p in act.params:
                data = p.value
                pid = p.param_id
                if not 0 < pid <= len(declared) or not data:
                    break
                name, width = declared[pid - 1]
                value = int.from_bytes(data, "big")
                if value >> width or name in params:
                    break
                params[name] = value
            else:
                if len(params) == len(declared):
                    return a.name, params
        return self._decode_action_checked(ta, is_default)

    def _decode_action_checked(self, ta: p4r.TableAction, is_default: bool
                               ) -> tuple[str, dict[str, int]]:  # fmt: skip
        t = self.table
        if ta.WhichOneof("type") != "action":
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, f"table {t.name} is direct: give an action"
            )
        a = self.actions.get(ta.action.action_id)
        if a is None:
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT,
                f"action id {ta.action.action_id} is not an action of table {t.name}",
            )
        if is_default and a.scope is ActionScope.TABLE_ONLY:
            raise P4RuntimeError(
                StatusCode.PERMISSION_DENIED, f"action {a.name} cannot be the default"
            )
        if not is_default and a.scope is ActionScope.DEFAULT_ONLY:
            raise P4RuntimeError(
                StatusCode.PERMISSION_DENIED,
                f"action {a.name} is only allowed as the default action",
            )
        params: dict[str, int] = {}
        declared = a.params
        for p in ta.action.params:
            pid = p.param_id
            if not 0 < pid <= len(declared):
                raise P4RuntimeError(
                    StatusCode.INVALID_ARGUMENT, f"action {a.name} has no parameter id {pid}"
                )
            name, width = declared[pid - 1]
            if name in params:
                raise P4RuntimeError(StatusCode.INVALID_ARGUMENT, f"parameter {name} given twice")
            data = p.value
            value = int.from_bytes(data, "big")
            if not data or value >> width:
                bytes_value(data, width, f"action {a.name} parameter {name}")
            params[name] = value
        if len(params) != len(a.params):
            missing = [n for n, _ in a.params if n not in params]
            raise P4RuntimeError(
                StatusCode.INVALID_ARGUMENT, f"action {a.name} is missing {', '.join(missing)}"
            )
        return a.name, params


class PipelineDecoder:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.tables = {t.id: TableDecoder(pipeline, t) for t in pipeline.tables}

    def table(self, table_id: int) -> TableDecoder:
        dec = self.tables.get(table_id)
        if dec is None:
            raise P4RuntimeError(StatusCode.INVALID_ARGUMENT, f"no table with id {table_id}")
        return dec
