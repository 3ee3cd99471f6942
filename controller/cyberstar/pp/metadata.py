"""The controller's opaque metadata of table entries (P4Runtime `TableEntry.metadata`), by key.

The one thing about an entry the kernel maps cannot give back: FM writes a 14-byte cookie
(connection and slot) with every rule and rebuilds its cache from it. Millions of entries must
not cost a Python object each, and a Write of a few entries must not pay a fixed cost per call,
so the store is a hash table in C (`_metadata.c`): keys and values up to `INLINE` bytes in one
flat array of slots (`key size + 18` bytes a slot, 37.5 % to 75 % of them in use); longer values
go to a dict.
"""

from __future__ import annotations

import secrets

from cyberstar.pp._metadata import INLINE, Table

__all__ = ["INLINE", "MetadataStore"]


class MetadataStore:
    def __init__(self, key_size: int) -> None:
        self.key_size = key_size
        # Per process: nobody can craft keys that share a probe path.
        self._table = Table(key_size, secrets.randbits(63) * 2 + 1)
        self.long: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._table) + len(self.long)

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def put(self, keys: list[bytes], values: list[bytes]) -> None:
        """Set the metadata of `keys` (distinct); an empty value removes a key's."""
        longer = self._table.put(keys, values)
        if self.long:
            for k in keys:
                self.long.pop(k, None)
        for i in longer:
            self.long[keys[i]] = values[i]

    def get(self, keys: list[bytes]) -> list[bytes]:
        """The metadata of each key (b"" where there is none)."""
        out = self._table.get(keys)
        if self.long:
            for i, k in enumerate(keys):
                if k in self.long:
                    out[i] = self.long[k]
        return out

    def remove(self, keys: list[bytes]) -> None:
        if self.long:
            for k in keys:
                self.long.pop(k, None)
        self._table.remove(keys)

    def clear(self) -> None:
        self.long.clear()
        self._table.clear()
