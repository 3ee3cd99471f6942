"""Target-neutral table entries, validated against the pipeline spec.

Every target (reference model, XDP maps, bmv2 over P4Runtime) installs these; building one
checks names, widths, match kinds, action scope and priority, so a target never sees a bad
entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cyberstar.pipeline.model import ActionScope, MatchKind, Pipeline, Table
from cyberstar.pipeline.values import (
    BadValue,
    LpmValue,
    TernaryValue,
    parse_lpm,
    parse_scalar,
    parse_ternary,
)

Match = int | LpmValue | TernaryValue


class EntryError(ValueError):
    """An entry the pipeline cannot take; the message names the table, field or action."""


@dataclass(frozen=True, slots=True)
class TableEntry:
    table: str
    match: dict[str, Match]
    action: str
    params: dict[str, int] = field(default_factory=dict)
    priority: int = 0
    is_default: bool = False
    idle_timeout_ns: int = 0
    metadata: bytes = b""  # the controller's opaque cookie (P4Runtime TableEntry.metadata)

    def match_key(self) -> tuple:
        """Identity of the entry within its table (what P4Runtime INSERT/DELETE key on)."""
        return match_identity(self.match, self.priority, self.is_default)


def match_identity(match: dict[str, Match], priority: int, is_default: bool = False) -> tuple:
    return (is_default, priority, tuple(sorted(match.items())))


def resolve_name(kind: str, given: str, names: list[str]) -> str:
    """Resolve a full P4Info name or a unique short name (suffix after a dot)."""
    if given in names:
        return given
    candidates = [n for n in names if n.rsplit(".", 1)[-1] == given]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise EntryError(f"{kind} {given!r} is ambiguous: {', '.join(candidates)}")
    raise EntryError(f"unknown {kind} {given!r}; known: {', '.join(sorted(names))}")


def build_entry(
    pipeline: Pipeline,
    table: str,
    match: dict[str, object],
    action: str,
    params: dict[str, object],
    priority: int | None = None,
    is_default: bool = False,
    idle_timeout_ns: int = 0,
) -> TableEntry:
    """Validate user-level values (see `values`) and return a canonical entry."""
    tname = resolve_name("table", table, [t.name for t in pipeline.tables])
    t = pipeline.table(tname)
    aname = resolve_name("action", action, [r.action for r in t.actions])
    scope = next(r.scope for r in t.actions if r.action == aname)
    if is_default and scope is ActionScope.TABLE_ONLY:
        raise EntryError(f"action {aname} cannot be the default action of table {tname}")
    if not is_default and scope is ActionScope.DEFAULT_ONLY:
        raise EntryError(f"action {aname} is only allowed as the default action of table {tname}")

    parsed_match: dict[str, Match] = {}
    if is_default:
        if match:
            raise EntryError(f"a default-action entry of table {tname} takes no match fields")
    else:
        parsed_match = _parse_match(t, match)

    a = pipeline.action(aname)
    given = set(params)
    expected = {p.name for p in a.params}
    if given - expected:
        raise EntryError(
            f"action {aname} has no parameter(s) {', '.join(sorted(given - expected))}; "
            f"it takes: {', '.join(p.name for p in a.params) or 'none'}"
        )
    if expected - given:
        missing = ", ".join(sorted(expected - given))
        raise EntryError(f"action {aname} is missing parameter(s) {missing}")
    parsed_params: dict[str, int] = {}
    for p in a.params:
        try:
            parsed_params[p.name] = parse_scalar(params[p.name], p.width)
        except BadValue as exc:
            raise EntryError(f"action {aname} parameter {p.name} ({p.width} bits): {exc}") from None

    prio = _check_priority(t, priority, is_default)
    if idle_timeout_ns and not t.idle_timeout:
        raise EntryError(f"table {tname} does not support idle timeout")
    if idle_timeout_ns < 0:
        raise EntryError(f"idle timeout must be >= 0, found {idle_timeout_ns}")
    return TableEntry(tname, parsed_match, aname, parsed_params, prio, is_default, idle_timeout_ns)


def _parse_match(t: Table, match: dict[str, object]) -> dict[str, Match]:
    unknown = set(match) - {k.name for k in t.key}
    if unknown:
        raise EntryError(
            f"table {t.name} has no match field(s) {', '.join(sorted(unknown))}; "
            f"fields: {', '.join(k.name for k in t.key)}"
        )
    out: dict[str, Match] = {}
    for k in t.key:
        raw = match.get(k.name)
        try:
            if k.match is MatchKind.EXACT:
                if raw is None:
                    raise EntryError(f"table {t.name} needs exact match field {k.name}")
                out[k.name] = parse_scalar(raw, k.width)
            elif k.match is MatchKind.LPM:
                lpm = parse_lpm(raw, k.width) if raw is not None else LpmValue(0, 0)
                out[k.name] = lpm
            else:
                tern = parse_ternary(raw, k.width) if raw is not None else TernaryValue(0, 0)
                out[k.name] = tern
        except BadValue as exc:
            raise EntryError(
                f"table {t.name} match field {k.name} ({k.match.value}, {k.width} bits): {exc}"
            ) from None
    return out


def _check_priority(t: Table, priority: int | None, is_default: bool) -> int:
    if is_default:
        if priority:
            raise EntryError(f"the default action of table {t.name} takes no priority")
        return 0
    if t.needs_priority:
        if priority is None or priority <= 0:
            raise EntryError(
                f"table {t.name} has ternary fields: entries need a priority > 0 "
                f"(higher wins), found {priority!r}"
            )
        if priority >= 1 << 31:
            raise EntryError(f"priority {priority} does not fit in int32")
        return priority
    if priority:
        raise EntryError(
            f"table {t.name} has no ternary fields: priority must be 0 or absent, found {priority}"
        )
    return 0
