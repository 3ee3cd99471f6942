"""Pack and unpack headers by the spec's layouts (fields in wire order, MSB first)."""

from __future__ import annotations

from cyberstar.pipeline.model import HeaderType


def unpack(htype: HeaderType, data: bytes, offset: int = 0) -> dict[str, int]:
    """Read one header starting at `offset`; the caller has checked that it fits."""
    raw = int.from_bytes(data[offset : offset + htype.byte_len], "big")
    remaining = htype.bit_width
    values: dict[str, int] = {}
    for f in htype.fields:
        remaining -= f.width
        values[f.name] = (raw >> remaining) & ((1 << f.width) - 1)
    return values


def pack(htype: HeaderType, values: dict[str, int]) -> bytes:
    raw = 0
    for f in htype.fields:
        v = values[f.name]
        if v >> f.width or v < 0:
            raise ValueError(f"{htype.name}.{f.name}: {v} does not fit in {f.width} bits")
        raw = (raw << f.width) | v
    return raw.to_bytes(htype.byte_len, "big")
