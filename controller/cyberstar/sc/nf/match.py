"""Address sets and port sets as NF configurations write them."""

from __future__ import annotations

from cyberstar.sc.nf.values import checked, parse_port_range, parse_prefix
from cyberstar.yamlconf import Section


class PrefixSet:
    """A set of IPv4 prefixes; `contains` is a linear scan (sets are small, rules are cached)."""

    __slots__ = ("nets",)

    def __init__(self, nets: list[tuple[int, int]]) -> None:
        # (network, mask) pairs
        self.nets = [(net, (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF) for net, plen in nets]

    def contains(self, addr: int) -> bool:
        return any(addr & mask == net for net, mask in self.nets)

    @classmethod
    def from_config(
        cls, section: Section, key: str, named: dict[str, PrefixSet] | None = None
    ) -> PrefixSet:
        """A list of prefixes, addresses or (with `named`) names of address sets."""
        nets: list[tuple[int, int]] = []
        for i, item in enumerate(section.list(key)):
            if named is not None and isinstance(item, str) and item in named:
                nets += [(n, _plen(m)) for n, m in named[item].nets]
            else:
                nets.append(checked(section, key, parse_prefix, item, i))
        return cls(nets)


class PortSet:
    __slots__ = ("ranges",)

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges

    def contains(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.ranges)

    @classmethod
    def from_config(cls, section: Section, key: str) -> PortSet:
        items = section.list(key)
        return cls(
            [checked(section, key, parse_port_range, item, i) for i, item in enumerate(items)]
        )


def _plen(mask: int) -> int:
    return bin(mask).count("1")
