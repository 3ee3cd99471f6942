"""Match semantics of the reference model: exact, lpm (longest prefix wins) and ternary
(highest priority wins; among equal priorities, the entry installed first)."""

from __future__ import annotations

from dataclasses import dataclass

from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.model import MatchKind, Table
from cyberstar.pipeline.values import LpmValue, TernaryValue, prefix_mask


@dataclass
class Hit:
    action: str
    params: dict[str, int]
    entry: TableEntry | None  # None when the default action ran


class RefTable:
    def __init__(self, table: Table) -> None:
        self.table = table
        default = table.default_action
        self.default = Hit(default, {}, None)
        self._exact: dict[tuple, TableEntry] = {}
        self._ternary: list[TableEntry] = []
        self.counters: dict[tuple, list[int]] = {}

    def install(self, entry: TableEntry) -> None:
        if entry.is_default:
            self.default = Hit(entry.action, dict(entry.params), None)
            return
        if self.table.needs_priority:
            self._ternary.append(entry)
            self._ternary.sort(key=lambda e: -e.priority)  # stable: ties keep install order
        else:
            self._exact[self._entry_key(entry)] = entry
        self.counters[entry.match_key()] = [0, 0]

    def lookup(self, meta: dict[str, int], frame_len: int) -> Hit:
        entry = self._find(meta)
        if entry is None:
            return self.default
        counter = self.counters[entry.match_key()]
        counter[0] += 1
        counter[1] += frame_len
        return Hit(entry.action, dict(entry.params), entry)

    def _find(self, meta: dict[str, int]) -> TableEntry | None:
        if self.table.needs_priority:
            for e in self._ternary:
                if all(_ternary_hit(e.match[k.name], meta[k.source]) for k in self.table.key):
                    return e
            return None
        lpm = self.table.lpm_field
        exact = tuple(meta[k.source] for k in self.table.key if k.match is MatchKind.EXACT)
        if lpm is None:
            return self._exact.get(exact)
        value = meta[lpm.source]
        for plen in range(lpm.width, -1, -1):
            hit = self._exact.get((*exact, plen, value & prefix_mask(plen, lpm.width)))
            if hit is not None:
                return hit
        return None

    def _entry_key(self, entry: TableEntry) -> tuple:
        exact = tuple(entry.match[k.name] for k in self.table.key if k.match is MatchKind.EXACT)
        lpm = self.table.lpm_field
        if lpm is None:
            return exact
        m = entry.match[lpm.name]
        assert isinstance(m, LpmValue)
        return (*exact, m.prefix_len, m.value)


def _ternary_hit(m: object, value: int) -> bool:
    assert isinstance(m, TernaryValue)
    return value & m.mask == m.value
