"""The flow_table's rules packed into bytes: FM's cache records (`fm/cache.py`) and what an SC
node answers FM with when FM asks for it (`RuleBatch.packed_layout`).

    key  = tenant(2) src(4) dst(4) proto(1) sport(2) dport(2)                  15 bytes
    rule = key(15) installed-PP bitmask(8) idle_ms(4) action(1) params

`action` is the action's index among the flow table's actions; each parameter takes the
smallest of 1, 2, 4 or 8 bytes that holds its width, in the action's order. Both ends must read
the same indices and widths: `FlowLayout.digest` names them (the table's key and its actions
with their parameters), a caller asking for packed rules sends the digest of the layout it
reads, and a node whose pipeline gives another digest answers with protobuf rules instead.
"""

from __future__ import annotations

import struct
import zlib

from cyberstar.pipeline.model import ActionScope, Pipeline

FLOW_TABLE = "flow_table"
KEY = struct.Struct(">HIIBHH")
RULE = struct.Struct(">15sQIB")
KEY_FIELDS = ("tenant_id", "src_addr", "dst_addr", "protocol", "src_port", "dst_port")
_FORMAT = 1  # bumped whenever the layout above changes


def flow_key(tenant: int, protocol: int, src: int, dst: int, sport: int, dport: int) -> bytes:
    """A rule's key: tenant and the 5-tuple in an SC `FlowKey`'s order, packed as `KEY`."""
    return KEY.pack(tenant, src, dst, protocol, sport, dport)


def param_code(width: int) -> str:
    for size, code in ((8, "B"), (16, "H"), (32, "I"), (64, "Q")):
        if width <= size:
            return code
    raise ValueError(f"{width}-bit parameter")


class FlowLayout:
    """The flow table's actions and parameter encodings, and the digest that names them."""

    def __init__(self, pipeline: Pipeline) -> None:
        table = pipeline.table(FLOW_TABLE)
        widths = {k.name: k.width for k in table.key}
        if sorted(widths) != sorted(KEY_FIELDS):
            raise ValueError(f"{FLOW_TABLE}'s key is {sorted(widths)}, not {sorted(KEY_FIELDS)}")
        self.key_widths = tuple(widths[n] for n in KEY_FIELDS)
        self.actions = [pipeline.action(r.action) for r in table.actions]
        self.entry_actions = [r.scope is not ActionScope.DEFAULT_ONLY for r in table.actions]
        self.index = {a.name: i for i, a in enumerate(self.actions)}
        self.params = [
            struct.Struct(">" + "".join(param_code(p.width) for p in a.params))
            for a in self.actions
        ]
        actions = [(a.name, [(p.name, p.width) for p in a.params]) for a in self.actions]
        described = repr((_FORMAT, KEY_FIELDS, self.key_widths, actions))
        self.digest = zlib.crc32(described.encode()) or 1  # 0 means "no packed rules"

    def pack_rule(self, key: bytes, idle_ms: int, action: str, params: tuple[int, ...]) -> bytes:
        """One rule, not installed anywhere yet. struct.error or KeyError when it does not fit."""
        i = self.index[action]
        return RULE.pack(key, 0, idle_ms, i) + self.params[i].pack(*params)

    def count_checked(self, packed: bytes) -> int:
        """How many rules `packed` holds, each checked against the layout: the action exists,
        every value fits its field's width, nothing is left over. ValueError says what is
        wrong."""
        off, n, size = 0, 0, len(packed)
        while off < size:
            if size - off < RULE.size:
                raise ValueError(f"rule {n}: {size - off} bytes left, a rule takes {RULE.size}+")
            key, _, _, i = RULE.unpack_from(packed, off)
            off += RULE.size
            if i >= len(self.actions):
                raise ValueError(f"rule {n}: action index {i} (the table has {len(self.actions)})")
            if not self.entry_actions[i]:
                raise ValueError(f"rule {n}: {self.actions[i].name} is the table's default only")
            for name, value, width in zip(KEY_FIELDS, KEY.unpack(key), self.key_widths,
                                          strict=True):  # fmt: skip
                if value >> width:
                    raise ValueError(f"rule {n}: {name}={value} does not fit in {width} bits")
            fmt = self.params[i]
            if size - off < fmt.size:
                raise ValueError(f"rule {n}: {self.actions[i].name}'s parameters are cut short")
            values = fmt.unpack_from(packed, off)
            off += fmt.size
            for p, value in zip(self.actions[i].params, values, strict=True):
                if value >> p.width:
                    raise ValueError(
                        f"rule {n}: {self.actions[i].name} {p.name}={value} does not fit in "
                        f"{p.width} bits"
                    )
            n += 1
        if n > 255:
            raise ValueError(f"{n} rules for one connection (a record holds at most 255)")
        return n
