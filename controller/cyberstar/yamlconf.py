"""YAML configuration files whose errors name the file, the line and the dotted key path.

`load_yaml(text, name)` returns the top-level `Section`; its typed accessors (`str`, `int`,
`number`, `list`, `section`, `sections`) raise `ConfigError("file:line: path: problem")`, and
`done()` refuses keys nobody read, so a typo never falls back to a default silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cyberstar.errors import UsageError

_REQUIRED = object()


class ConfigError(UsageError):
    """A bad configuration file; the message starts with `file:line:`."""


class _Map(dict):
    line = 0
    key_lines: dict[Any, int]


class _Seq(list):
    line = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember the line of every key and item."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = value_node.start_mark.line + 1
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


class Section:
    """A YAML mapping with typed accessors; every error names file, line and dotted path."""

    def __init__(self, path: str, data: object, where: str, line: int = 0) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:{line}: {where or 'the file'}: expected a mapping")
        self.data = data
        self.line = getattr(data, "line", line)
        self._used: set[str] = set()

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.line_of(key) if key is not None else self.line
        name = f"{self.where}.{key}" if self.where and key else (key or self.where)
        where = f"{name}: " if name else ""  # the file's top level has no name
        return ConfigError(f"{self.path}:{line}: {where}{message}")

    def line_of(self, key: str) -> int:
        return getattr(self.data, "key_lines", {}).get(key, self.line)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: object = _REQUIRED) -> object:
        self._used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(None, f"missing required key {key!r}")
            return default
        return self.data[key]

    def _absent(self, key: str, default: object) -> bool:
        """True when the key is missing and has a default (which the accessor returns as is)."""
        self._used.add(key)
        if key in self.data:
            return False
        if default is _REQUIRED:
            raise self.error(None, f"missing required key {key!r}")
        return True

    def str(self, key: str, default: object = _REQUIRED) -> str:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self.data[key]
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, found {value!r}")
        return value

    def int(self, key: str, default: object = _REQUIRED, lo: int = 0, hi: int = 1 << 32) -> int:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(key, f"expected an integer in {lo}..{hi}, found {value!r}")
        return value

    def number(self, key: str, default: object = _REQUIRED, lo: float = 0.0) -> float:
        if self._absent(key, default):
            return default  # type: ignore[return-value]
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
            raise self.error(key, f"expected a number >= {lo}, found {value!r}")
        return float(value)

    def list(self, key: str, default: object = _REQUIRED) -> list:
        value = self.raw(key, default)
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, found {value!r}")
        return value

    def endpoints(self, key: str, default: object = _REQUIRED) -> list[tuple[str, int]]:
        """A non-empty list of `host:port` strings, as (host, port) pairs."""
        out = []
        for i, ep in enumerate(self.list(key, default)):
            host, sep, port = str(ep).rpartition(":")
            if not sep or not port.isdigit():
                raise self.item_error(key, i, f"expected host:port, found {ep!r}")
            out.append((host, int(port)))
        if not out:
            raise self.error(key, "needs at least one endpoint")
        return out

    def item_line(self, key: str, index: int) -> int:
        value = self.data.get(key)
        lines = getattr(value, "item_lines", None)
        return lines[index] if lines and index < len(lines) else self.line_of(key)

    def section(self, key: str, default: object = _REQUIRED) -> Section:
        value = self.raw(key, default)
        return Section(self.path, value, self._sub(key), self.line_of(key))

    def sections(self, key: str, default: object = _REQUIRED) -> list[Section]:
        items = self.list(key, default)
        return [
            Section(self.path, item, f"{self._sub(key)}[{i}]", self.item_line(key, i))
            for i, item in enumerate(items)
        ]

    def item_error(self, key: str, index: int, message: str) -> ConfigError:
        return ConfigError(
            f"{self.path}:{self.item_line(key, index)}: {self._sub(key)}[{index}]: {message}"
        )

    def done(self) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        unknown = [k for k in self.data if k not in self._used]
        if unknown:
            key = unknown[0]
            raise self.error(key, f"unknown key (known here: {', '.join(sorted(self._used))})")

    def _sub(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_yaml(text: str, name: str = "<config>") -> Section:
    """Parse YAML, remembering every key's line; the top level must be a mapping."""
    loader = _Loader(text)
    loader.name = name
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError(f"{name}:{line}: not valid YAML: {exc.problem}") from None
    finally:
        loader.dispose()
    return Section(name, data, "", 1)
