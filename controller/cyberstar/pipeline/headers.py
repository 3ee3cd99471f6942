"""Pack and unpack headers by the spec's layouts (fields in wire order, MSB first)."""

from __future__ import annotations

from cyberstar.pipeline.checksum import internet_checksum
from cyberstar.pipeline.model import HeaderType
from cyberstar.pipeline.pp import IPV4


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


def ipv4_header(
    src: int, dst: int, protocol: int, payload_len: int, ttl: int, identification: int = 0
) -> bytes:
    """An option-less IPv4 header with DF set and its checksum computed in full."""
    fields = {
        "version": 4,
        "ihl": 5,
        "diffserv": 0,
        "total_len": IPV4.byte_len + payload_len,
        "identification": identification,
        "flags": 2,  # don't fragment
        "frag_offset": 0,
        "ttl": ttl,
        "protocol": protocol,
        "hdr_checksum": 0,
        "src_addr": src,
        "dst_addr": dst,
    }
    fields["hdr_checksum"] = internet_checksum(pack(IPV4, fields))
    return pack(IPV4, fields)
