"""scripts/install-p4.sh: what `make install` does with CYBERSTAR_P4_ARCHIVE, and its errors."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install-p4.sh"


def run(archive: str | None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CYBERSTAR_P4_ARCHIVE"}
    if archive is not None:
        env["CYBERSTAR_P4_ARCHIVE"] = archive
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_without_the_setting_nothing_is_installed() -> None:
    proc = run(None)
    assert proc.returncode == 0
    assert "CYBERSTAR_P4_ARCHIVE is not set" in proc.stderr


def test_a_missing_archive_is_an_error_naming_it(tmp_path) -> None:
    proc = run("no/such/archive.tar.xz", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no/such/archive.tar.xz: no such file" in proc.stderr
    assert f"relative paths are taken from {tmp_path}" in proc.stderr


def test_an_archive_without_the_tools_is_refused(tmp_path) -> None:
    (tmp_path / "opt" / "p4" / "bin").mkdir(parents=True)
    (tmp_path / "opt" / "p4" / "bin" / "p4c-bm2-ss").write_text("")
    archive = tmp_path / "other.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tmp_path / "opt", arcname="opt")
    proc = run(str(archive))
    assert proc.returncode == 1
    assert "has no opt/p4/bin/simple_switch_grpc" in proc.stderr
