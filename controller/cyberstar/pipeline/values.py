"""Values of table keys and action parameters: parsing user input and P4Runtime bytestrings.

User input (rules files, CLIs) may be an integer, a dotted IPv4 address, a MAC address
(`aa:bb:cc:dd:ee:ff`), a string of digits or hex (`"0x1f"`), `"10.0.0.0/8"` for lpm fields, or
`{"value": v, "mask": m}` for ternary fields. P4Runtime carries values as big-endian
bytestrings; the canonical form has no leading zero bytes (zero is one zero byte).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


class BadValue(ValueError):
    """A user value that does not fit; the message says what was expected."""


def parse_scalar(raw: object, width: int) -> int:
    """Parse an integer, IPv4 address, MAC address or numeric string into an int of `width` bits."""
    if isinstance(raw, bool):
        raise BadValue(f"expected a number of {width} bits, found a boolean {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if _MAC_RE.match(text):
            value = int(text.replace(":", "").replace("-", ""), 16)
        elif text.count(".") == 3:
            try:
                value = int(ipaddress.IPv4Address(text))
            except ipaddress.AddressValueError as exc:
                raise BadValue(f"{raw!r} is not a valid IPv4 address ({exc})") from None
        else:
            try:
                value = int(text, 0)
            except ValueError:
                raise BadValue(
                    f"expected an integer, IPv4 address or MAC address, found {raw!r}"
                ) from None
    else:
        raise BadValue(f"expected a number, address or string, found {type(raw).__name__}")
    check_width(value, width)
    return value


def check_width(value: int, width: int) -> None:
    if value < 0:
        raise BadValue(f"value {value} is negative")
    if value >> width:
        raise BadValue(f"value {value:#x} does not fit in {width} bits (max {(1 << width) - 1:#x})")


@dataclass(frozen=True)
class LpmValue:
    value: int
    prefix_len: int


@dataclass(frozen=True)
class TernaryValue:
    value: int
    mask: int


def parse_lpm(raw: object, width: int) -> LpmValue:
    """`"10.0.0.0/8"`, `{"value": v, "prefix_len": n}`, or a scalar meaning a full-length prefix."""
    if isinstance(raw, dict):
        if set(raw) != {"value", "prefix_len"}:
            raise BadValue(f"an lpm value needs keys 'value' and 'prefix_len', found {sorted(raw)}")
        value = parse_scalar(raw["value"], width)
        plen = raw["prefix_len"]
    elif isinstance(raw, str) and "/" in raw:
        addr, _, plen_text = raw.partition("/")
        value = parse_scalar(addr, width)
        try:
            plen = int(plen_text)
        except ValueError:
            raise BadValue(f"prefix length in {raw!r} is not a number") from None
    else:
        return LpmValue(parse_scalar(raw, width), width)
    if not isinstance(plen, int) or not 0 <= plen <= width:
        raise BadValue(f"prefix length must be 0..{width}, found {plen!r}")
    if value & ~prefix_mask(plen, width) & ((1 << width) - 1):
        raise BadValue(
            f"value {value:#x} has bits set beyond its /{plen} prefix; "
            f"use {value & prefix_mask(plen, width):#x}/{plen}"
        )
    return LpmValue(value, plen)


def parse_ternary(raw: object, width: int) -> TernaryValue:
    """`{"value": v, "mask": m}` or a scalar meaning an all-ones mask."""
    if isinstance(raw, dict):
        if set(raw) != {"value", "mask"}:
            raise BadValue(f"a ternary value needs keys 'value' and 'mask', found {sorted(raw)}")
        value = parse_scalar(raw["value"], width)
        mask = parse_scalar(raw["mask"], width)
        if value & ~mask:
            raise BadValue(
                f"value {value:#x} has bits outside its mask {mask:#x}; use {value & mask:#x}"
            )
        return TernaryValue(value, mask)
    return TernaryValue(parse_scalar(raw, width), (1 << width) - 1)


def prefix_mask(prefix_len: int, width: int) -> int:
    return ((1 << prefix_len) - 1) << (width - prefix_len)


def to_bytes(value: int, width: int) -> bytes:
    """Full-width big-endian bytes (ceil(width / 8) bytes)."""
    return value.to_bytes((width + 7) // 8, "big")


def canonical_bytes(value: int) -> bytes:
    """The P4Runtime canonical bytestring: no leading zero bytes, zero is b'\\x00'."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def from_bytes(data: bytes, width: int) -> int:
    """Decode a P4Runtime bytestring (canonical or padded) of a `width`-bit field."""
    if not data:
        raise BadValue(f"empty bytestring for a {width}-bit field")
    if len(data) > (width + 7) // 8:
        raise BadValue(f"{len(data)} bytes is too long for a {width}-bit field")
    value = int.from_bytes(data, "big")
    check_width(value, width)
    return value
