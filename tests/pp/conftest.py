"""Fixtures for PP-node tests: a real `cyberstar pp serve` process on veths in a namespace."""

from __future__ import annotations

import os

import needs
import pytest

from cyberstar import netns
from cyberstar.codegen.p4info import build_p4info
from cyberstar.lab.pp_process import start_agent
from cyberstar.lab.procs import free_port
from cyberstar.pipeline.pp import PIPELINE


def agent_node(name: str, address: str | None = None, extra: list[str] | None = None):
    """A `pp serve` process on pp1 and pp2 of a fresh namespace (`extra`: more flags),
    stopped after use; fails the test if it did not exit cleanly."""
    needs.root()
    with netns.with_pp_ports(f"cs-{name}-{os.getpid()}") as ns:
        node = start_agent(ns, ["pp1", "pp2"], address=address, extra=extra)
        try:
            yield node
        finally:
            code = node.stop()
    assert code == 0, f"agent exited with {code}; log: {node.log.read_text()[-2000:]}"


@pytest.fixture
def pp_node():
    """A PP agent of its own on two veths (pp1, pp2) whose peers share its namespace."""
    yield from agent_node("pp")


@pytest.fixture
def tcp_pp_node():
    """A PP agent serving P4Runtime on loopback TCP, where every client connection has its own
    peer address (on a unix socket all clients look alike)."""
    yield from agent_node("ppt", f"127.0.0.1:{free_port()}")


@pytest.fixture(scope="module")
def shared_pp_node():
    yield from agent_node("pps")


_election = iter(range(100, 1 << 30))


@pytest.fixture
def primary(shared_pp_node):
    """A primary client with a freshly committed (empty) pipeline on the module's agent."""
    c = shared_pp_node.client(election_id=next(_election))
    c.set_pipeline(build_p4info(PIPELINE), b"")
    yield c
    c.close()
    shared_pp_node.clients.remove(c)
