"""A PP group's ENI bonding (paper §4.2): ECMP routes on the lab's two routers, and a health
check that removes a dead member.

The tenants' vSwitch routes each tenant's service address (its VIP) over every active member
of the group; the services' gateway routes each tenant's SNAT address back the same way. Both
point at a Linux resilient next-hop group (a table of hash buckets over the members, hashed on
the 5-tuple: `fib_multipath_hash_policy=1`): a member joining or leaving moves only the buckets
it takes or gives up, as consistent-hashing ECMP in switches does, so:

* **scale-out** adds a next hop: new flows, and the established flows the hash now sends to
  the new node, reach it; their first packet there misses, and FM answers it from its cache.
* **scale-in** drains: the member leaves the multipath routes (no new flow reaches it) while
  its established connections stay pinned to it: the routers keep in each connection's
  conntrack mark the number of the PP node it last left by, and a policy rule
  (`fwmark <n> lookup <table>`) routes marked packets through the leaving node. When
  none is left, or at the deadline, the pin goes and what remains rehashes (FM's cache again).
* **a crash** is noticed by `HealthMonitor` (ICMP echo from both routers to the member's
  addresses, which its XDP program passes to its kernel), and the member is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cyberstar import netns
from cyberstar.lab.hosts import PpHost, RouterHost

log = logging.getLogger(__name__)
PIN_TABLE_BASE, PIN_RULE_PREF = 1000, 100
NEXTHOP_GROUP_BASE = 1000  # next-hop ids: member n is n, group g is 1000 + g
# Hash buckets of a resilient next-hop group: when a member joins or leaves, only the buckets
# it gains or loses move (the flows of the others stay put); `idle_timer 0` lets them move at
# once instead of waiting for a quiet bucket.
BUCKETS = 120


@dataclass(frozen=True)
class Side:
    """One router's view of a group: the prefixes it sends through the group, and how it
    reaches member n (`<router>-p<n>`, the member's address `<net>.<n>.2`)."""

    router: RouterHost
    net: str  # "172.16" → member n is 172.16.<n>.2 behind <router>-p<n>
    prefixes: tuple[str, ...]

    def hop(self, pp: PpHost) -> tuple[str, str]:
        return f"{self.net}.{pp.index}.2", f"{self.router.name}-p{pp.index}"


@dataclass
class EcmpGroup:
    name: str
    sides: tuple[Side, ...]
    nexthop_group: int  # the id of the group's next-hop group on each router
    members: list[PpHost] = field(default_factory=list)
    draining: dict[str, PpHost] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def add(self, pp: PpHost) -> None:
        with self._lock:
            if pp not in self.members:
                self.members.append(pp)
            self._apply()

    def remove(self, pp: PpHost) -> bool:
        """Take `pp` out at once (a crash): its flows rehash to the others. True if it was in."""
        with self._lock:
            was = pp in self.members or pp.name in self.draining
            if pp in self.members:
                self.members.remove(pp)
            self._apply()
            self.unpin(pp)
            return was

    def drain(self, pp: PpHost) -> None:
        """Stop sending new flows to `pp`; its established connections stay (see module doc)."""
        with self._lock:
            self.members.remove(pp)
            for side in self.sides:
                table = str(PIN_TABLE_BASE + pp.index)
                via, dev = side.hop(pp)
                for prefix in side.prefixes:
                    side.router.sh(
                        "ip",
                        "route",
                        "replace",
                        prefix,
                        "via",
                        via,
                        "dev",
                        dev,
                        "onlink",
                        "table",
                        table,
                    )
                side.router.sh(
                    "ip",
                    "rule",
                    "add",
                    "fwmark",
                    str(pp.index),
                    "lookup",
                    table,
                    "pref",
                    str(PIN_RULE_PREF),
                )
            self.draining[pp.name] = pp
            self._apply()

    def pinned_connections(self, pp: PpHost) -> int:
        """Established connections still pinned to a draining member, on both routers."""
        total = 0
        for side in self.sides:
            out = side.router.sh(
                "conntrack",
                "-L",
                "-p",
                "tcp",
                "--state",
                "ESTABLISHED",
                "--mark",
                str(pp.index),
                check=False,
            )
            total += sum(1 for line in out.stdout.splitlines() if line.strip())
        return total

    def unpin(self, pp: PpHost) -> None:
        with self._lock:
            if self.draining.pop(pp.name, None) is None:
                return
            for side in self.sides:
                side.router.sh(
                    "ip",
                    "rule",
                    "del",
                    "fwmark",
                    str(pp.index),
                    "lookup",
                    str(PIN_TABLE_BASE + pp.index),
                    check=False,
                )
                side.router.sh(
                    "ip", "route", "flush", "table", str(PIN_TABLE_BASE + pp.index), check=False
                )

    def _apply(self) -> None:
        """Point the group's prefixes at a resilient next-hop group of the members (or at a
        blackhole when none is left)."""
        for side in self.sides:
            sh = side.router.sh
            for pp in self.members:
                via, dev = side.hop(pp)
                sh("ip", "nexthop", "replace", "id", str(pp.index), "via", via, "dev", dev)
            if self.members:
                ids = "/".join(str(pp.index) for pp in self.members)
                sh("ip", "nexthop", "replace", "id", str(self.nexthop_group), "group", ids,
                   "type", "resilient", "buckets", str(BUCKETS), "idle_timer", "0")  # fmt: skip
            for prefix in side.prefixes:
                if self.members:
                    sh("ip", "route", "replace", prefix, "nhid", str(self.nexthop_group))
                else:
                    sh("ip", "route", "replace", "blackhole", prefix)
        log.info(
            "group %s: members %s, draining %s",
            self.name,
            [p.name for p in self.members],
            list(self.draining),
        )


ICMP_ECHO, ICMP_ECHO_REPLY = 8, 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, _checksum(header), ident, seq)


class HealthMonitor:
    """Pings every watched PP node from both routers, a round every `interval_s`.

    A node is dead once `misses` probes in a row went unanswered on some side (each had at
    least `interval_s` to come back); it is reported to `on_dead(pp, silent_s)`. Misses are
    counted in probes sent, not in time: when the monitor itself is starved of CPU it sends
    nothing, and a stall of its own is never taken for every node dying at once. A node
    reported dead that answers every probe again for `rise_s` (a false alarm) is reported to
    `on_alive(pp)`.
    """

    def __init__(
        self,
        on_dead: Callable[[PpHost, float], None],
        on_alive: Callable[[PpHost], None],
        interval_s: float = 0.05,
        misses: int = 4,
        rise_s: float = 1.0,
    ) -> None:
        self.on_dead = on_dead
        self.on_alive = on_alive
        self.interval_s = interval_s
        self.misses = misses
        self.rise_s = rise_s
        self._watch: dict[str, tuple[PpHost, tuple[Side, ...]]] = {}
        # (router, address) → [probes sent since the last reply, time of the last reply]
        self._state: dict[tuple[str, str], list[float]] = {}
        self._down: dict[str, float | None] = {}  # reported dead → answering again since
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ident = os.getpid() & 0xFFFF

    def watch(self, pp: PpHost, sides: tuple[Side, ...]) -> None:
        now = time.monotonic()
        with self._lock:
            self._watch[pp.name] = (pp, sides)
            for side in sides:
                self._state[(side.router.name, side.hop(pp)[0])] = [0, now]

    def unwatch(self, pp: PpHost) -> None:
        with self._lock:
            self._watch.pop(pp.name, None)
            self._down.pop(pp.name, None)

    def start(self, routers: list[RouterHost]) -> None:
        for router in routers:
            with netns.entered(router.ns):
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            t = threading.Thread(
                target=self._run, args=(router, sock), daemon=True, name=f"health-{router.name}"
            )
            t.start()
            self._threads.append(t)

    def _run(self, router: RouterHost, sock: socket.socket) -> None:
        seq = 0
        with sock:
            while not self._stop.is_set():
                seq = (seq + 1) & 0xFFFF
                with self._lock:
                    targets = [
                        (router.name, side.hop(pp)[0])
                        for pp, sides in self._watch.values()
                        for side in sides
                        if side.router is router
                    ]
                for key in targets:
                    with contextlib.suppress(OSError):  # a dead link refuses to send
                        sock.sendto(echo_request(self._ident, seq), (key[1], 0))
                    with self._lock:
                        if key in self._state:
                            self._state[key][0] += 1
                deadline = time.monotonic() + self.interval_s
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([sock], [], [], left)
                    if not ready:
                        break
                    self._receive(router, sock)
                self._judge()

    def _receive(self, router: RouterHost, sock: socket.socket) -> None:
        data, (src, _) = sock.recvfrom(2048)
        ihl = (data[0] & 0x0F) * 4
        kind, _, _, ident, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
        if kind == ICMP_ECHO_REPLY and ident == self._ident:
            with self._lock:
                state = self._state.get((router.name, src))
                if state is not None:
                    state[0], state[1] = 0, time.monotonic()

    def _judge(self) -> None:
        now = time.monotonic()
        dead, alive = [], []
        with self._lock:
            for name, (pp, sides) in self._watch.items():
                states = [self._state[(s.router.name, s.hop(pp)[0])] for s in sides]
                missed = max(st[0] for st in states)
                if name not in self._down:
                    if missed >= self.misses:
                        self._down[name] = None
                        dead.append((pp, now - min(st[1] for st in states)))
                elif missed > 1:
                    self._down[name] = None
                elif self._down[name] is None:
                    self._down[name] = now
                elif now - self._down[name] >= self.rise_s:
                    del self._down[name]
                    alive.append(pp)
        for pp, silent in dead:
            try:
                self.on_dead(pp, silent)
            except Exception:
                log.exception("removing %s", pp.name)
        for pp in alive:
            try:
                self.on_alive(pp)
            except Exception:
                log.exception("restoring %s", pp.name)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
