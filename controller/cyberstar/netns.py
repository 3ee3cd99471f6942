"""Network namespaces and veth pairs, for targets, tests and the lab.

Thin wrappers over iproute2; `entered(ns)` switches the calling thread into a namespace so that
sockets opened inside stay bound to it after switching back.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return proc


def exec_in(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` in {ns} failed: {proc.stderr.strip()}")
    return proc


def create(ns: str) -> None:
    """A fresh namespace with loopback up and IPv6 off (no stray router solicitations)."""
    delete(ns)
    ip("netns", "add", ns)
    ip("link", "set", "lo", "up", ns=ns)
    exec_in(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    exec_in(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")


def delete(ns: str) -> None:
    ip("netns", "del", ns, check=False)


def exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


@contextmanager
def with_pp_ports(ns: str) -> Iterator[str]:
    """A fresh namespace `ns` holding a PP node's two ports, pp1 and pp2, each a veth whose
    peer (peer1, peer2) stays in `ns` to send and capture frames; deleted on exit."""
    create(ns)
    try:
        veth("pp1", "peer1", ns, ns)
        veth("pp2", "peer2", ns, ns)
        yield ns
    finally:
        delete(ns)


@dataclass(frozen=True)
class Line:
    """Three namespaces in a line, client ─ middle ─ server (see `line`)."""

    client: str
    middle: str
    server: str


@contextmanager
def line(tag: str, ports: tuple[str, str], server_route: str = "default") -> Iterator[Line]:
    """Fresh namespaces client ─ middle ─ server, deleted on exit. The client (c0,
    10.1.0.2/24) routes everything through the middle's first port (10.1.0.1/24); the server
    (s0, 10.2.0.2/24) routes `server_route` through its second port (10.2.0.1/24). The middle
    (a router, a PP node) adds its own forwarding."""
    pid = os.getpid()
    names = Line(f"cs-{tag}c-{pid}", f"cs-{tag}m-{pid}", f"cs-{tag}s-{pid}")
    for ns in astuple(names):
        create(ns)
    try:
        veth("c0", ports[0], names.client, names.middle)
        veth("s0", ports[1], names.server, names.middle)
        ip("addr", "add", "10.1.0.2/24", "dev", "c0", ns=names.client)
        ip("route", "add", "default", "via", "10.1.0.1", ns=names.client)
        ip("addr", "add", "10.1.0.1/24", "dev", ports[0], ns=names.middle)
        ip("addr", "add", "10.2.0.1/24", "dev", ports[1], ns=names.middle)
        ip("addr", "add", "10.2.0.2/24", "dev", "s0", ns=names.server)
        ip("route", "add", server_route, "via", "10.2.0.1", ns=names.server)
        yield names
    finally:
        for ns in astuple(names):
            delete(ns)


def veth(a: str, b: str, ns_a: str | None, ns_b: str | None, mtu: int | None = None) -> None:
    """Create the veth pair a <-> b and move each end into its namespace (None: current)."""
    ip("link", "add", a, "type", "veth", "peer", "name", b, ns=ns_a)
    if ns_b != ns_a:
        ip("link", "set", b, "netns", ns_b or str(os.getpid()), ns=ns_a)
    for name, ns in ((a, ns_a), (b, ns_b)):
        if mtu:
            ip("link", "set", name, "mtu", str(mtu), ns=ns)
        ip("link", "set", name, "up", ns=ns)


def ifindex(name: str, ns: str | None = None) -> int:
    out = ip("-o", "link", "show", name, ns=ns).stdout
    return int(out.split(":", 1)[0])


@contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace `ns`."""
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise NetnsError(f"setns into {ns}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise NetnsError(f"setns back: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(own)
        os.close(target)
