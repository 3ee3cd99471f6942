"""A PP agent serving its metrics, and a metric scraped from its /metrics endpoint (mutual
TLS) as Prometheus would."""

from __future__ import annotations

import os
import ssl
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import needs

from cyberstar import netns
from cyberstar.lab.pp_process import PpNode, start_agent
from cyberstar.lab.procs import free_port


@contextmanager
def metered_agent(name: str) -> Iterator[tuple[PpNode, int]]:
    """`pp serve` on two veths in a namespace of its own, with `--metrics` on a free port:
    (the node, the port). The agent must stop cleanly."""
    needs.root()
    port = free_port()
    with netns.with_pp_ports(f"cs-{name}-{os.getpid()}") as ns:
        node = start_agent(ns, ["pp1", "pp2"], extra=["--metrics", f"127.0.0.1:{port}"])
        try:
            yield node, port
        finally:
            assert node.stop() == 0


def metric(port: int, tls, name: str) -> int:
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    text = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context).read()
    line = next(ln for ln in text.decode().splitlines() if ln.startswith(name + " "))
    return int(float(line.split()[-1]))
