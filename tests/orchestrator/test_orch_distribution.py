"""The broad instance distribution: seeded, inside its ranges, placeable, and varied."""

from __future__ import annotations

import json

import numpy as np
import pytest
from orch_cases import cli

from cyberstar.errors import UsageError
from cyberstar.orchestrator.distribution import DISTRIBUTIONS, draw
from cyberstar.orchestrator.files import load_instance
from cyberstar.orchestrator.heuristics import FirstFit
from cyberstar.orchestrator.search import place_all


def test_a_seed_fixes_the_instance():
    a, b = draw("mix-small", 3), draw("mix-small", 3)
    assert a.machines == b.machines and a.requests == b.requests
    assert draw("mix-small", 4).machines != a.machines


@pytest.mark.parametrize("seed", range(12))
def test_draws_stay_inside_their_ranges(seed):
    r = DISTRIBUTIONS["mix-small"]
    inst = draw("mix-small", seed)
    kinds = {(m.bandwidth, m.compute, m.memory, m.price) for m in inst.machines}
    assert r.flavours[0] <= len(kinds) <= r.flavours[1]
    assert r.machines[0] - r.flavours[1] <= len(inst.machines) <= r.machines[1]
    assert r.threshold[0] <= inst.threshold <= r.threshold[1]
    assert r.gmin[0] <= inst.gmin <= inst.gmax <= inst.gmin + r.gspan[1]
    assert 0 <= inst.max_overlap < len(r.overlap)
    assert 1 <= len(inst.requests) <= r.tenants[1]
    # Every request fits, split over gmax machines of some flavour, under the threshold.
    usable = inst.threshold * np.array([k[:3] for k in kinds])
    for req in inst.requests:
        share = np.array(req.demand) / inst.gmax
        assert np.any(np.all(share <= usable + 1e-9, axis=1)), req


@pytest.mark.parametrize("seed", range(6))
def test_first_fit_places_every_request(seed):
    inst = draw("mix-small", seed)
    assert not place_all(inst, FirstFit()).rejected


def test_the_distribution_varies_what_the_families_fix():
    draws = [draw("mix-small", s) for s in range(30)]
    assert len({d.threshold for d in draws}) == 30
    assert len({(d.gmin, d.gmax) for d in draws}) >= 4
    assert {d.max_overlap for d in draws} == {0, 1, 2}
    assert len({len(d.machines) for d in draws}) >= 8
    assert len({r.nf for d in draws for r in d.requests}) == 4


def test_generate_command_writes_a_draw(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert cli("place", "generate", "--family", "mix-small", "--seed", "5", "--out", out) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "mix-small"
    assert load_instance(out).requests == draw("mix-small", 5).requests
    code = cli("place", "generate", "--family", "mix", "--tenants", "9", "--out", out)
    assert code == 2
    assert "draws its own sizes" in capsys.readouterr().err


def test_generate_command_into_a_directory_or_nowhere(tmp_path, capsys):
    # An existing directory gets FAMILY-SEED.json, as with --count.
    assert cli("place", "generate", "--family", "mix-small", "--seed", "3", "--out", tmp_path) == 0
    written = json.loads(capsys.readouterr().out)["written"]
    assert [w["path"] for w in written] == [str(tmp_path / "mix-small-3.json")]
    assert load_instance(tmp_path / "mix-small-3.json").requests == draw("mix-small", 3).requests
    # A path under a file cannot be written: a usage error that names it, no traceback.
    blocker = tmp_path / "mix-small-3.json"
    code = cli("place", "generate", "--family", "mix-small", "--out", blocker / "i.json")
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot write {blocker / 'i.json'}" in err and "Traceback" not in err


def test_unknown_distribution_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown distribution"):
        draw("mix-huge", 0)
