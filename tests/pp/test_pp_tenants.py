"""`cyberstar pp tenants --grpc ADDR` against a real `pp serve` node: the policy's state and
parameters from its config file, the meter cells it set and the counters, all read over
P4Runtime; and clear errors when there is no node or no pipeline yet."""

from __future__ import annotations

import os
import socket
import subprocess

import grpc
import pytest
from finsy.proto import p4r

from cyberstar import netns
from cyberstar.lab.pp_process import CYBERSTAR, PpNode, start_agent
from cyberstar.lab.wait import wait_until
from cyberstar.p4rt.codec import update
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.packets import tcp_frame
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pp.tenants import COLUMNS

pytestmark = pytest.mark.root
POLICY = """\
capacity: 3000
interval: 0.1
tenants:
  - id: 7
    burst: 2500
    credit_cap: 5000
  - id: 8
    base: 1000
    burst: 1200
"""
SENT = 37  # tenant 7's frames; far under its rate, none may be dropped


def tenants(node: PpNode | str, timeout: float = 10.0, *extra: str) -> subprocess.CompletedProcess:
    """`pp tenants` with an admin's certificate of the node's CA (plaintext without a node)."""
    if isinstance(node, PpNode):
        address, security = node.address, node.certs.flags("admin", "lab-admin")
    else:
        address, security = node, ["--plaintext"]
    return subprocess.run(
        [*CYBERSTAR, "pp", "tenants", "--grpc", address, "--timeout", str(timeout), *security,
         *extra],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip


def table(stdout: str) -> dict[str, dict[str, str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == list(COLUMNS), stdout
    rows = [line.split() for line in lines[1:] if not line.startswith("(")]
    return {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in rows}


@pytest.fixture
def ns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with netns.with_pp_ports(f"cs-tnt-{os.getpid()}") as name:
        yield name


def test_tenants_table_of_a_node_running_a_policy(ns, tmp_path) -> None:
    policy = tmp_path / "rates.yaml"
    policy.write_text(POLICY)
    node = start_agent(ns, ["pp1", "pp2"], extra=["--rate-policy", str(policy)])
    try:
        got = tenants(node)  # before any pipeline: nothing to read yet
        assert got.returncode == 1
        assert "no forwarding pipeline yet" in got.stderr and node.address in got.stderr
        c = node.primary_with_pipeline()
        c.write([update(p4r.Update.INSERT, PIPELINE, build_entry(
            PIPELINE, "tenant_classify", {"ingress_port": 1, "vni": 0, "dst_addr": "10.0.0.0/8"},
            "set_tenant", {"tenant_id": 7}))])  # fmt: skip
        with netns.entered(ns):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            tx.bind(("peer1", 0))
        frame = tcp_frame("02:00:00:00:00:0a", "02:00:00:00:00:01", "192.168.1.2", "10.0.0.5",
                          40000, 80)  # fmt: skip
        for _ in range(SENT):
            tx.send(frame)
        tx.close()
        arrivals = PIPELINE.counter("tenant_packets").id
        wait_until(lambda: c.read_counter(arrivals).get(7, (0, 0))[0] == SENT, 10,
                   f"{SENT} packets of tenant 7 counted")  # fmt: skip

        def rows() -> dict[str, dict[str, str]]:
            got = tenants(node)
            assert got.returncode == 0, got.stderr
            assert "runs no rate policy" not in got.stdout
            return table(got.stdout)

        # the policy's steps run every 100 ms; both tenants under their base with the node
        # idle end up in Smin (Figure 6b: light, resources abundant)
        wait_until(lambda: all(r["STATE"] == "Smin" for r in rows().values()), 10,
                   "both tenants in Smin")  # fmt: skip
        t = rows()
        assert set(t) == {"7", "8"}
        # tenant 7's base: the capacity not given to others, shared equally (3000 / 2)
        assert (t["7"]["BASE/s"], t["7"]["BURST/s"]) == ("1500", "2500")
        assert (t["8"]["BASE/s"], t["8"]["BURST/s"]) == ("1000", "1200")
        # the meter cells the policy set, read back as MeterEntry: the base in Smin
        assert (t["7"]["METER/s"], t["8"]["METER/s"]) == ("1500", "1000")
        assert (t["7"]["PACKETS"], t["7"]["RATE_DROPS"]) == (str(SENT), "0")
        assert (t["8"]["PACKETS"], t["8"]["RATE_DROPS"]) == ("0", "0")
        assert 0 < float(t["7"]["CREDIT"]) <= 5000  # earning under base, capped at 5000
        assert 0 < float(t["8"]["CREDIT"]) <= 1000 * 60  # default cap: a minute of base
    finally:
        assert node.stop() == 0


def test_tenants_of_a_node_without_policy_show_meters_and_counters(ns) -> None:
    node = start_agent(ns, ["pp1", "pp2"])
    try:
        c = node.primary_with_pipeline()
        meter = PIPELINE.meters[0]
        cell = p4r.MeterEntry(
            meter_id=meter.id,
            index=p4r.Index(index=9),
            config=p4r.MeterConfig(cir=400, cburst=20, pir=400, pburst=20),
        )
        c.write([p4r.Update(type=p4r.Update.MODIFY, entity=p4r.Entity(meter_entry=cell))])
        # the credit extern answers no entries without a policy; other externs do not exist
        assert c.read([p4r.Entity(extern_entry=p4r.ExternEntry(extern_type_id=0x81))]) == []
        with pytest.raises(P4RuntimeError, match="no extern type 0x99") as err:
            c.read([p4r.Entity(extern_entry=p4r.ExternEntry(extern_type_id=0x99))])
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        got = tenants(node)
        assert got.returncode == 0, got.stderr
        assert "runs no rate policy" in got.stdout
        row = ["9", *["-"] * 4, "400", "-", "-", "0", "0"]
        assert table(got.stdout) == {"9": dict(zip(COLUMNS, row, strict=True))}
        # named tenants are read cell by cell: one not limited shows '-' for its meter
        got = tenants(node, 10, "--tenant", "12", "--tenant", "9")
        assert got.returncode == 0, got.stderr
        unlimited = ["12", *["-"] * 4, "-", "-", "-", "0", "0"]
        assert table(got.stdout) == {
            "9": dict(zip(COLUMNS, row, strict=True)),
            "12": dict(zip(COLUMNS, unlimited, strict=True)),
        }
    finally:
        assert node.stop() == 0


def test_tenants_without_a_node_says_so(tmp_path) -> None:
    address = f"unix:{tmp_path / 'nobody.sock'}"
    got = tenants(address, timeout=1)
    assert got.returncode == 1
    assert f"no P4Runtime server answered at {address} within 1 s" in got.stderr
    assert "cyberstar pp serve" in got.stderr
    assert "Traceback" not in got.stderr
