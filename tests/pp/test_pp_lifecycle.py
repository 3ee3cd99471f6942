"""The agent's lifecycle: a clean stop detaches its programs, a killed agent's leftovers are
removed by the next start, and its metrics endpoint reports real counters."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from cyberstar import netns
from cyberstar.lab.pp_process import start_agent

pytestmark = pytest.mark.root


def xdp_prog_ids(ns: str, ifname: str) -> list[int]:
    out = json.loads(netns.ip("-j", "-d", "link", "show", ifname, ns=ns).stdout)
    xdp = out[0].get("xdp")
    if not xdp:
        return []
    progs = xdp.get("attached") or [xdp]
    return [p["prog"]["id"] for p in progs if "prog" in p]


@pytest.fixture
def two_port_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netns.with_pp_ports(f"cs-life-{os.getpid()}") as ns:
        yield ns


def test_sigterm_detaches_and_a_killed_agent_leaves_nothing_stale(two_port_ns) -> None:
    ns = two_port_ns
    node = start_agent(ns, ["pp1", "pp2"])
    first = xdp_prog_ids(ns, "pp1")
    assert first, "the agent attached its program"
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(10)
    assert xdp_prog_ids(ns, "pp1") == first  # a killed process cannot clean up

    node = start_agent(ns, ["pp1", "pp2"])
    second = xdp_prog_ids(ns, "pp1")
    assert second and second != first  # the stale program was replaced, not stacked
    c = node.primary_with_pipeline()
    assert c.read([]) == []
    assert node.stop() == 0
    assert xdp_prog_ids(ns, "pp1") == [] and xdp_prog_ids(ns, "pp2") == []


def test_metrics_endpoint_counts_verdicts(two_port_ns) -> None:
    ns = two_port_ns
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = start_agent(ns, ["pp1", "pp2"], extra=["--metrics", f"127.0.0.1:{port}"])
    try:
        with netns.entered(ns):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            tx.bind(("peer1", 0))
        arp = bytes.fromhex("ffffffffffff02000000000a0806") + bytes(28)
        for _ in range(5):
            tx.send(arp)
        tx.close()
        deadline = time.monotonic() + 10
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            line = next(
                ln for ln in text.splitlines() if 'verdict="pass"' in ln and "packets" in ln
            )
            if float(line.split()[-1]) >= 5:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        assert 'cyberstar_pp_packet_in_lost_total{where="kernel"} 0' in text
    finally:
        assert node.stop() == 0


def test_bad_interface_is_a_clear_error() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    proc = subprocess.run(
        [sys.executable, "-m", "cyberstar.cli", "pp", "serve", "--iface", "no-such-if0",
         "--grpc", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no interface no-such-if0" in proc.stderr


def _serve(ns: str, grpc_address: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cyberstar.cli", "pp", "serve", "--netns", ns, "--iface", "pp1",
         "--iface", "pp2", "--mode", "skb", "--grpc", grpc_address],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_another_programs_xdp_is_left_alone(two_port_ns, tmp_path) -> None:
    """The agent used to remove any XDP program on its interfaces, not only a stale one of its
    own: now it refuses to start and leaves the other program attached."""
    from bcc import BPF

    ns = two_port_ns
    other = BPF(text=b"int other_prog(struct xdp_md *ctx) { return XDP_PASS; }")
    with netns.entered(ns):
        BPF.attach_xdp(b"pp1", other.load_func(b"other_prog", BPF.XDP), 1 << 1)
    try:
        before = xdp_prog_ids(ns, "pp1")
        proc = _serve(ns, f"unix:{tmp_path / 'p4rt.sock'}")
        assert proc.returncode == 1, proc.stderr
        assert "pp1 runs another XDP program (other_prog" in proc.stderr
        assert xdp_prog_ids(ns, "pp1") == before
        assert xdp_prog_ids(ns, "pp2") == []  # what it attached before it stopped is gone
    finally:
        with netns.entered(ns):
            BPF.remove_xdp(b"pp1", 1 << 1)
        other.cleanup()


def test_a_taken_port_is_refused(two_port_ns) -> None:
    """gRPC sets SO_REUSEPORT: a second agent on a taken port started "fine" and answered a
    share of the first one's calls. Now it exits 1 naming the address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    first = start_agent(two_port_ns, ["pp1", "pp2"], address=address)
    try:
        with netns.with_pp_ports(f"cs-life2-{os.getpid()}") as other_ns:
            proc = _serve(other_ns, address)
        assert proc.returncode == 1, proc.stderr
        assert f"cannot listen on {address}" in proc.stderr
        first.primary_with_pipeline()  # the first agent still answers
    finally:
        assert first.stop() == 0
