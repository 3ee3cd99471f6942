"""p4runtime-shell, the tool users poke PP nodes with, drives the XDP agent (from its own venv,
since it pins an old protobuf): pipeline from the committed files, insert/read/modify/delete on
every table, and a second client with a lower election id is a backup that cannot write."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from finsy.proto import p4r

from cyberstar.p4rt.codec import update
from cyberstar.pipeline.entries import build_entry
from cyberstar.pipeline.pp import PIPELINE

REPO = Path(__file__).resolve().parents[2]
SHELL_PYTHON = REPO / ".venv-p4rt" / "bin" / "python"
DRIVER = Path(__file__).parent / "p4rt_shell" / "drive_agent.py"

pytestmark = pytest.mark.root


def drive(address: str, role: str, tmp_path, device_config: bytes = b"") -> dict[str, dict]:
    if not SHELL_PYTHON.exists():
        pytest.skip("p4runtime-shell venv missing: run `make install`")
    empty = tmp_path / "device_config.bin"
    empty.write_bytes(device_config)
    proc = subprocess.run(
        [str(SHELL_PYTHON), str(DRIVER), address,
         str(REPO / "p4src" / "pp.p4info.txtpb"), str(empty), role],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            steps[record["step"]] = record
    return steps


def test_p4runtime_shell_drives_every_table(pp_node, tmp_path) -> None:
    check_primary_steps(drive(pp_node.address, "primary", tmp_path))


@pytest.mark.bmv2
def test_p4runtime_shell_drives_bmv2_the_same_way(tmp_path, bmv2_tools) -> None:
    """The same script against simple_switch_grpc running the same pipeline, compiled by p4c."""
    from cyberstar.targets.bmv2 import Bmv2Target

    target = Bmv2Target()
    try:
        target.client.close()  # the shell becomes the primary
        config = target.compiled.json_path.read_bytes()
        check_primary_steps(drive(target.client.address, "primary", tmp_path, config))
    finally:
        target.close()


def check_primary_steps(steps: dict[str, dict]) -> None:
    assert steps["inserted"]["counts"] == {"tenant_classify": 1, "acl": 1, "flow_table": 1,
                                           "next_hop": 1}  # fmt: skip
    assert r"\\xcb\\x00\\x71\\x09" in steps["read-flow"]["text"]  # 203.0.113.9
    assert r"\\xc3\\x50" in steps["read-flow"]["text"]  # port 50000
    assert r"\\xc3\\x51" in steps["modified"]["text"]  # port 50001 after MODIFY
    assert "flow_drop" in steps["default"]["text"]
    assert steps["duplicate"]["ok"] is False and "ALREADY_EXISTS" in steps["duplicate"]["error"]
    assert steps["deleted"]["counts"] == {"tenant_classify": 0, "acl": 0, "flow_table": 0,
                                          "next_hop": 0}  # fmt: skip
    assert steps["counters"]["cells"] == 4
    meter = steps["meter"]["text"]  # the per-tenant rate, configured and read back
    for field in ("cir: 250000", "cburst: 2048", "pir: 250000", "pburst: 2048", "index: 7"):
        assert field in meter, meter


def test_lower_election_id_is_a_backup_that_cannot_write(pp_node, tmp_path) -> None:
    primary = pp_node.primary_with_pipeline(election_id=10)
    mine = build_entry(
        PIPELINE,
        "next_hop",
        {"nexthop_id": 3},
        "set_next_hop",
        {"port": 2, "smac": "02:00:00:00:00:03", "dmac": "02:00:00:00:00:04"},
    )
    primary.write([update(p4r.Update.INSERT, PIPELINE, mine)])  # fmt: skip
    steps = drive(pp_node.address, "backup", tmp_path)
    assert steps["backup-insert"]["ok"] is False
    assert "PERMISSION_DENIED" in steps["backup-insert"]["error"]
    assert steps["backup-read"]["count"] == 1  # a backup reads what the primary wrote
    table = p4r.TableEntry(table_id=PIPELINE.table("next_hop").id)
    read = primary.read([p4r.Entity(table_entry=table)])
    assert [e.table_entry for e in read] == [
        update(p4r.Update.INSERT, PIPELINE, mine).entity.table_entry
    ]
