"""Classic libpcap files (Ethernet link type), read and written without third-party code.

Reading checks every record, so a truncated or foreign file is a clear `PcapError`, never a
traceback from deep inside a parser.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LINKTYPE_ETHERNET = 1
_MAGICS = {
    0xA1B2C3D4: ("<", 1000),  # microsecond timestamps, little-endian
    0xD4C3B2A1: (">", 1000),
    0xA1B23C4D: ("<", 1),  # nanosecond timestamps
    0x4D3CB2A1: (">", 1),
}
_SNAPLEN = 262144


class PcapError(ValueError):
    """A pcap file that cannot be read; the message names the file and the record."""


@dataclass(frozen=True)
class Packet:
    data: bytes
    ts_ns: int = 0


def read_pcap(path: Path) -> list[Packet]:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise PcapError(f"cannot read pcap file {path}: {exc.strerror}") from None
    if len(blob) < 24:
        raise PcapError(f"{path}: {len(blob)} bytes is too short for a pcap global header (24)")
    (magic,) = struct.unpack_from("<I", blob)
    if magic not in _MAGICS:
        hint = (
            " (pcapng is not supported: convert with `editcap -F pcap`)"
            if magic == 0x0A0D0D0A
            else ""
        )
        raise PcapError(f"{path}: not a pcap file (magic {magic:#010x}){hint}")
    endian, ns_per_unit = _MAGICS[magic]
    _, _, _, _, _, linktype = struct.unpack_from(endian + "HHiIII", blob, 4)
    if linktype & 0xFFFF != LINKTYPE_ETHERNET:
        raise PcapError(f"{path}: link type {linktype}, expected Ethernet (1)")
    packets, off, index = [], 24, 0
    while off < len(blob):
        if off + 16 > len(blob):
            raise PcapError(
                f"{path}: record {index} is truncated: its header needs 16 bytes at offset "
                f"{off}, the file ends after {len(blob) - off}"
            )
        sec, frac, caplen, _origlen = struct.unpack_from(endian + "IIII", blob, off)
        off += 16
        if caplen > _SNAPLEN:
            raise PcapError(f"{path}: record {index} claims {caplen} bytes; the file is corrupt")
        if off + caplen > len(blob):
            raise PcapError(
                f"{path}: record {index} is truncated: {caplen} bytes announced, "
                f"{len(blob) - off} left in the file"
            )
        packets.append(Packet(blob[off : off + caplen], sec * 1_000_000_000 + frac * ns_per_unit))
        off += caplen
        index += 1
    return packets


def write_pcap(path: Path, packets: Iterable[Packet]) -> None:
    """Write a nanosecond-resolution pcap."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_ETHERNET))
    for p in packets:
        sec, nsec = divmod(p.ts_ns, 1_000_000_000)
        out += struct.pack("<IIII", sec, nsec, len(p.data), len(p.data))
        out += p.data
    path.write_bytes(bytes(out))
