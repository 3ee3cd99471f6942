"""Invalid instance and placement files exit 2 with a message naming the field."""

from __future__ import annotations

import copy
import json

import pytest
from orch_cases import cli, tiny_instance_json


def mutate(path: str, value):
    """Copy of the tiny instance with the field at `path` (dotted, [i] for lists) set to value;
    the value `...` deletes the field."""
    data = copy.deepcopy(tiny_instance_json())
    keys = path.replace("[", ".").replace("]", "").split(".")
    target = data
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    last = keys[-1]
    if value is ...:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return data


CASES = [
    # (field path, new value, text the error must contain)
    ("threshold", ..., "threshold: missing field"),
    ("threshold", 1.5, "threshold: expected a number <= 1"),
    ("threshold", 0, "threshold: expected a number > 0"),
    ("gmin", 5, "gmin (5) is greater than gmax (3)"),
    ("gmax", 2.5, "gmax: expected an integer"),
    ("max_overlap", -1, "max_overlap: expected an integer >= 0"),
    ("machines", [], "machines: expected at least one machine"),
    ("machines[1].price", -2, "machines[1].price: expected a number >= 0"),
    ("machines[0].bandwidth", 0, "machines[0].bandwidth: expected a number > 0"),
    ("machines[2].memory", ..., "machines[2].memory: missing field"),
    ("machines[3].id", "m0", "machines[3].id: duplicate machine id 'm0'"),
    ("requests[1].bandwidth", -300, "requests[1].bandwidth: expected a number >= 0"),
    ("requests[0].compute", "2", "requests[0].compute: expected a number"),
    ("requests[2].tenant", ..., "requests[2].tenant: missing field"),
    ("requests[2].id", "r0", "requests[2].id: duplicate request id 'r0'"),
    ("requests", {"r0": 1}, "requests: expected an array"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_instance_exits_2_naming_the_field(tmp_path, capsys, path, value, message):
    instance = tmp_path / "i.json"
    instance.write_text(json.dumps(mutate(path, value)))
    code = cli("place", "--algo", "ff", "--instance", instance, "--out", tmp_path / "p.json")
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert not (tmp_path / "p.json").exists()


def test_gmin_above_machine_count(tmp_path, capsys):
    instance = tmp_path / "i.json"
    instance.write_text(json.dumps(tiny_instance_json(gmin=5, gmax=6)))
    assert cli("place", "check", "--instance", instance, "--placement", "x") == 2
    assert "gmin (5) exceeds the number of machines (4)" in capsys.readouterr().err


def test_unreadable_and_malformed_files(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert cli("place", "--algo", "bf", "--instance", tmp_path / "nope.json", "--out", out) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli("place", "--algo", "bf", "--instance", bad, "--out", "p.json") == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_bad_dynamic_section(tmp_path, capsys):
    data = tiny_instance_json(
        dynamic={
            "step_seconds": 3600,
            "steps": 4,
            "requests": {
                "r0": {"arrive": 0, "depart": 2, "load": [1.0]},
                "r1": {"arrive": 0, "depart": 1, "load": [1.0]},
                "r2": {"arrive": 1, "depart": 2, "load": [1.0]},
            },
        }
    )
    instance = tmp_path / "i.json"
    instance.write_text(json.dumps(data))
    assert cli("place", "simulate", "--instance", instance, "--algo", "ff") == 2
    assert "dynamic.requests.r0.load: expected 2 values" in capsys.readouterr().err


def test_bad_placement_file(tmp_path, capsys):
    instance = tmp_path / "i.json"
    instance.write_text(json.dumps(tiny_instance_json()))
    placement = tmp_path / "p.json"
    placement.write_text(json.dumps({"assignments": {"r0": "m0"}, "cost": 1}))
    assert cli("place", "check", "--instance", instance, "--placement", placement) == 2
    assert "assignments.r0: expected an array of machine ids" in capsys.readouterr().err


def test_missing_required_options(tmp_path, capsys):
    assert cli("place", "--algo", "ff") == 2
    assert "--instance: required" in capsys.readouterr().err
    instance = tmp_path / "i.json"
    instance.write_text(json.dumps(tiny_instance_json()))
    out = tmp_path / "p.json"
    code = cli("place", "--algo", "bf", "--weights", "1,x", "--instance", instance, "--out", out)
    assert code == 2
    assert "--weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ({"assignments": {"r9": ["m0", "m1"]}, "cost": 2.1}, "assignments.r9: unknown request"),
        ({"assignments": {"r0": ["m0", "m7"]}, "cost": 1}, "assignments.r0[1]: unknown machine"),
        ({"assignments": {}, "rejected": ["x"], "cost": 0}, "rejected[0]: unknown request id"),
    ],
)
def test_unknown_ids_in_a_placement_exit_2(tmp_path, capsys, placement, message):
    instance = tmp_path / "i.json"
    instance.write_text(json.dumps(tiny_instance_json()))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(placement))
    assert cli("place", "check", "--instance", instance, "--placement", path) == 2
    assert message in capsys.readouterr().err


def test_failed_check_exits_1(tmp_path, capsys):
    instance = tmp_path / "i.json"
    instance.write_text(json.dumps(tiny_instance_json()))
    path = tmp_path / "p.json"
    overlap = {"r0": ["m0", "m1"], "r1": ["m0", "m1"], "r2": ["m2", "m3"]}
    path.write_text(json.dumps({"assignments": overlap, "cost": 4.6}))
    assert cli("place", "check", "--instance", instance, "--placement", path) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["violations"][0]["kind"] == "overlap"
