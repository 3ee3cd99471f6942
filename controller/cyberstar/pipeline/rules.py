"""Rules files: a JSON list of table entries in P4Info names.

    [{"table": "flow_table",
      "match": {"tenant_id": 1, "src_addr": "10.0.0.1", ...},
      "action": "snat", "params": {"src_addr": "203.0.113.1", ...}},
     {"table": "acl", "match": {"dst_port": {"value": 22, "mask": 65535}},
      "action": "acl_deny", "priority": 10},
     {"table": "flow_table", "default": true, "action": "flow_drop"}]

The whole file is validated before anything is applied; the first problem is reported with the
entry's index.
"""

from __future__ import annotations

import json
from pathlib import Path

from cyberstar.pipeline.entries import EntryError, TableEntry, build_entry
from cyberstar.pipeline.model import Pipeline

_ALLOWED_KEYS = {"table", "match", "action", "params", "priority", "default", "idle_timeout_ns"}


class RulesError(ValueError):
    """A rules file that cannot be applied; names the file, the entry index and the problem."""


def load_rules(path: Path, pipeline: Pipeline) -> list[TableEntry]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return parse_rules(data, pipeline, source=str(path))


def parse_rules(data: object, pipeline: Pipeline, source: str = "rules") -> list[TableEntry]:
    if not isinstance(data, list):
        raise RulesError(f"{source}: expected a JSON list of entries, found {type(data).__name__}")
    entries: list[TableEntry] = []
    seen: dict[tuple, int] = {}
    for index, raw in enumerate(data):
        try:
            entry = _parse_one(raw, pipeline)
        except EntryError as exc:
            raise RulesError(f"{source}: entry {index}: {exc}") from None
        key = (entry.table, entry.match_key())
        if key in seen:
            what = "default action" if entry.is_default else "match"
            raise RulesError(
                f"{source}: entry {index}: same table and {what} as entry {seen[key]} "
                f"(table {entry.table})"
            )
        seen[key] = index
        entries.append(entry)
    return entries


def _parse_one(raw: object, pipeline: Pipeline) -> TableEntry:
    if not isinstance(raw, dict):
        raise EntryError(f"expected an object, found {type(raw).__name__}")
    unknown = set(raw) - _ALLOWED_KEYS
    if unknown:
        allowed = ", ".join(sorted(_ALLOWED_KEYS))
        raise EntryError(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
    for required in ("table", "action"):
        if not isinstance(raw.get(required), str):
            raise EntryError(f"'{required}' must be a string naming a P4Info {required}")
    match = raw.get("match", {})
    params = raw.get("params", {})
    if not isinstance(match, dict):
        raise EntryError("'match' must be an object of field name → value")
    if not isinstance(params, dict):
        raise EntryError("'params' must be an object of parameter name → value")
    priority = raw.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise EntryError(f"'priority' must be an integer, found {priority!r}")
    is_default = raw.get("default", False)
    if not isinstance(is_default, bool):
        raise EntryError(f"'default' must be true or false, found {is_default!r}")
    idle = raw.get("idle_timeout_ns", 0)
    if isinstance(idle, bool) or not isinstance(idle, int):
        raise EntryError(f"'idle_timeout_ns' must be an integer, found {idle!r}")
    return build_entry(
        pipeline, raw["table"], match, raw["action"], params, priority, is_default, idle
    )
