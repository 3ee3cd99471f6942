"""`cyberstar doctor` reports every check and fails only on required ones."""

from __future__ import annotations

import json
import re

import pytest

from cyberstar import p4tools
from cyberstar.cli import main


def test_doctor_json_lists_checks(capsys) -> None:
    code = main(["doctor", "--json"])
    checks = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in checks}
    assert {
        "kernel",
        "BCC",
        "bpffs",
        "kernel headers",
        "network namespaces",
        "bmv2 and p4c",
    } <= names
    required_failed = [c for c in checks if c["required"] and not c["ok"]]
    assert code == (1 if required_failed else 0)
    for c in checks:
        if not c["ok"]:
            assert c["fix"], f"{c['name']} fails without saying what to do"


def _bmv2_check(capsys) -> dict:
    main(["doctor", "--json"])
    return next(c for c in json.loads(capsys.readouterr().out) if c["name"] == "bmv2 and p4c")


def _hide_p4_tools(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.delenv("CYBERSTAR_P4_BIN", raising=False)
    monkeypatch.setattr(p4tools, "DEFAULT_P4_BIN", tmp_path)


def test_missing_p4_tools_are_optional_and_say_how_to_get_them(capsys, monkeypatch, tmp_path):
    _hide_p4_tools(monkeypatch, tmp_path)
    monkeypatch.delenv("CYBERSTAR_REQUIRE_BMV2", raising=False)
    check = _bmv2_check(capsys)
    assert (check["ok"], check["required"]) == (False, False)
    assert "simple_switch_grpc and p4c-bm2-ss not found" in check["detail"]
    assert "CYBERSTAR_P4_ARCHIVE" in check["fix"] and "p4lang's sources" in check["fix"]


def test_missing_p4_tools_fail_when_required(capsys, monkeypatch, tmp_path) -> None:
    _hide_p4_tools(monkeypatch, tmp_path)
    monkeypatch.setenv("CYBERSTAR_REQUIRE_BMV2", "1")
    check = _bmv2_check(capsys)
    assert (check["ok"], check["required"]) == (False, True)


def test_a_p4_tool_that_does_not_run_is_reported(capsys, monkeypatch, tmp_path) -> None:
    _hide_p4_tools(monkeypatch, tmp_path)
    for name in ("simple_switch_grpc", "p4c-bm2-ss"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
        tool.chmod(0o755)
    check = _bmv2_check(capsys)
    assert not check["ok"]
    assert "error while loading shared libraries" in check["detail"]


@pytest.mark.bmv2
def test_installed_p4_tools_report_their_versions(capsys, bmv2_tools) -> None:
    check = _bmv2_check(capsys)
    assert check["ok"], check
    assert re.search(r"simple_switch_grpc 1\.\d+\.\d+ \(", check["detail"])
    assert re.search(r"p4c-bm2-ss 1\.\d+\.\d+(\.\d+)? \(", check["detail"])
