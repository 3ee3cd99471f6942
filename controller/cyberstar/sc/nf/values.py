"""Value parsers for the NF sections of SC.yaml: each turns a YAML value into what the NF
keeps, or raises ValueError saying what it expected; `checked` turns that into a
`ConfigError` naming the file and line."""

from __future__ import annotations

import ipaddress

from cyberstar.sc.flows import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from cyberstar.yamlconf import Section

PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP}


def parse_addr(text: object) -> int:
    try:
        return int(ipaddress.IPv4Address(str(text).strip()))
    except ValueError:
        raise ValueError(f"expected an IPv4 address, found {text!r}") from None


def parse_prefix(text: object) -> tuple[int, int]:
    """`10.0.0.0/8` or an address → (network, prefix_len)."""
    try:
        net = ipaddress.IPv4Network(str(text).strip(), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"expected an IPv4 prefix like 10.0.0.0/8, found {text!r} ({exc})"
        ) from None
    return int(net.network_address), net.prefixlen


def parse_port_range(text: object) -> tuple[int, int]:
    """`80` or `"1000-2000"` → inclusive (lo, hi)."""
    if isinstance(text, int) and not isinstance(text, bool):
        lo = hi = text
    else:
        lo_s, sep, hi_s = str(text).partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"expected a port or a range like 1000-2000, found {text!r}") from None
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"port range {text!r} is not within 0..65535 with lo <= hi")
    return lo, hi


def parse_protocol(text: object) -> int | None:
    """tcp, udp, icmp, any (None) or a protocol number."""
    if text is None or text == "any":
        return None
    if isinstance(text, str) and text.lower() in PROTOCOLS:
        return PROTOCOLS[text.lower()]
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text <= 255:
        return text
    raise ValueError(f"expected tcp, udp, icmp, any or a number 0..255, found {text!r}")


def parse_endpoint(text: object) -> tuple[int, int | None]:
    """`10.1.0.5:8080` or `10.1.0.5` → (addr, port or None)."""
    addr_s, sep, port_s = str(text).partition(":")
    addr = parse_addr(addr_s)
    if not sep:
        return addr, None
    lo, hi = parse_port_range(port_s)
    if lo != hi:
        raise ValueError(f"expected one port in {text!r}")
    return addr, lo


def checked(section: Section, key: str, parse, value: object, index: int | None = None):
    """Run a value parser; turn its ValueError into a ConfigError at the value's line."""
    try:
        return parse(value)
    except ValueError as exc:
        if index is None:
            raise section.error(key, str(exc)) from None
        raise section.item_error(key, index, str(exc)) from None
