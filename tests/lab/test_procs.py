"""`lab/procs.free_port`: ports a lab process can still bind when it starts — outside the range
the kernel gives connections as source ports (read here from /proc), never the same twice."""

from __future__ import annotations

import socket
from pathlib import Path

from cyberstar.lab.procs import free_port


def test_free_ports_lie_below_the_ephemeral_range_and_do_not_repeat() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), [p for p in ports if not 1024 <= p < low]
    for port in ports[:20]:  # free: a listener can take it
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
