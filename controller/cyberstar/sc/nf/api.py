"""The NF plug-in API: an NF developer writes service logic only (paper §3.2, last paragraph).

An NF is a class with a `kind`, built from its YAML section (`from_config`), that answers one
question: *given this first packet (as the NFs before me left it) and my state, what happens?*
It may rewrite the packet's source or destination, choose next hops, take an element of a
shared pool, ask for the connection to be remembered, or drop. The platform does the rest:
it runs the tenant's chain, composes one flow_table rule per direction, stores the connection
in the shard that owns the flow, replicates it through the SC group, returns pool elements when
the connection's rules idle out, and splits or merges pools and connections when SC scales.

Contract for `process`:

* It must be deterministic given the packet, the NF's configuration and what `ctx` returns
  (replicas never re-run it: they replay the state changes the chain head decided).
* Pool elements are only taken through `ctx.take`; they come back when the connection is
  released, without any NF code.
* Per-connection state is the connection itself: a later request for the same flow (either
  direction) is answered from the stored connection, without calling the NFs again — which is
  what gives LB affinity and firewall sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from cyberstar.sc.flows import PROTO_ICMP

if TYPE_CHECKING:
    from cyberstar.yamlconf import Section


class PacketView:
    """The first packet as it passes through a tenant's NF chain; NFs rewrite it in place.

    ICMP echo carries its identifier in both port fields (the pipeline's convention): a source
    rewrite changes the identifier, a destination rewrite leaves it alone.
    """

    __slots__ = (
        "dst_addr",
        "dst_port",
        "forward_nexthop",
        "ingress_port",
        "protocol",
        "return_nexthop",
        "src_addr",
        "src_port",
        "tenant_id",
        "vni",
    )

    def __init__(
        self,
        tenant_id: int,
        ingress_port: int,
        vni: int,
        protocol: int,
        src_addr: int,
        dst_addr: int,
        src_port: int,
        dst_port: int,
    ) -> None:
        self.tenant_id = tenant_id
        self.ingress_port = ingress_port
        self.vni = vni
        self.protocol = protocol
        self.src_addr = src_addr
        self.dst_addr = dst_addr
        self.src_port = src_port
        self.dst_port = dst_port
        self.forward_nexthop: int | None = None
        self.return_nexthop: int | None = None

    def set_source(self, addr: int, port: int) -> None:
        self.src_addr = addr
        if self.protocol == PROTO_ICMP:
            self.src_port = self.dst_port = port
        else:
            self.src_port = port

    def set_destination(self, addr: int, port: int) -> None:
        self.dst_addr = addr
        if self.protocol != PROTO_ICMP:
            self.dst_port = port

    def route(self, forward: int | None = None, ret: int | None = None) -> None:
        """Choose next hops: the last NF to set the forward one wins, the first the return one
        (the return packet crosses the chain backwards and leaves toward the client)."""
        if forward is not None:
            self.forward_nexthop = forward
        if ret is not None and self.return_nexthop is None:
            self.return_nexthop = ret


@dataclass(frozen=True)
class Drop:
    """Stop the chain: the flow gets a flow_drop rule."""

    reason: str
    exhausted: bool = False  # a pool ran dry: status POOL_EXHAUSTED and the alarm counter


class NfContext(ABC):
    """What the platform lends an NF while it processes one packet."""

    @abstractmethod
    def take(self, pool: str) -> int | None:
        """Take a free element of this NF's pool (`addr << 16 | port`); None when exhausted."""

    @abstractmethod
    def keep_state(self) -> None:
        """Remember the connection (sessions, affinity) even if nothing was taken."""


class NetworkFunction(ABC):
    """Base of every NF plug-in. Subclasses set `kind` and implement `from_config`/`process`."""

    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abstractmethod
    def from_config(cls, name: str, section: Section) -> NetworkFunction:
        """Build from the NF's YAML section; bad values raise `ConfigError` naming the line."""

    def pools(self) -> dict[str, list[tuple[int, int]]]:
        """Shared pools this NF allocates from: pool name → element ranges [lo, hi)."""
        return {}

    @abstractmethod
    def process(self, pkt: PacketView, ctx: NfContext) -> Drop | None:
        """Decide for the first packet of a flow: rewrite `pkt`, or return a `Drop`."""
