"""`cyberstar doctor` reports every check and fails only on required ones."""

from __future__ import annotations

import json

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
