"""The committed artifacts are exactly what the spec generates, and the P4Info is valid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cyberstar.codegen import artifacts
from cyberstar.codegen.p4info import build_p4info, parse_p4info_text
from cyberstar.pipeline.model import ID_PREFIX
from cyberstar.pipeline.pp import PIPELINE

REPO = Path(__file__).resolve().parents[1]
P4RT_PYTHON = REPO / ".venv-p4rt" / "bin" / "python"


@pytest.mark.parametrize("art", artifacts(PIPELINE), ids=lambda a: str(a.path))
def test_committed_artifact_is_regenerated_exactly(art) -> None:
    committed = (REPO / art.path).read_text()
    assert committed == art.text, (
        f"{art.path} differs from what the spec generates: run `cyberstar build` and commit"
    )


def test_p4info_ids_follow_the_prefix_rules() -> None:
    info = build_p4info(PIPELINE)
    groups = {
        "table": info.tables,
        "action": info.actions,
        "counter": info.counters,
        "direct_counter": info.direct_counters,
        "controller_header": info.controller_packet_metadata,
    }
    seen = set()
    for kind, objs in groups.items():
        for obj in objs:
            assert obj.preamble.id >> 24 == ID_PREFIX[kind], obj.preamble.name
            assert obj.preamble.id not in seen
            seen.add(obj.preamble.id)


def test_p4info_round_trips_and_references_resolve() -> None:
    info = parse_p4info_text((REPO / "p4src/pp.p4info.txtpb").read_text())
    action_ids = {a.preamble.id for a in info.actions}
    counter_ids = {c.preamble.id for c in info.direct_counters}
    for t in info.tables:
        assert {r.id for r in t.action_refs} <= action_ids
        assert set(t.direct_resource_ids) <= counter_ids
        assert [m.id for m in t.match_fields] == list(range(1, len(t.match_fields) + 1))
    flow = next(t for t in info.tables if t.preamble.name == "flow_table")
    assert flow.idle_timeout_behavior == flow.NOTIFY_CONTROL
    assert flow.size == 1 << 20


def test_p4info_parses_with_the_p4runtime_package() -> None:
    if not P4RT_PYTHON.exists():
        pytest.skip("the p4runtime-shell venv is missing: run `make install`")
    script = (
        "import sys\n"
        "from google.protobuf import text_format\n"
        "from p4.config.v1 import p4info_pb2\n"
        "info = text_format.Parse(open(sys.argv[1]).read(), p4info_pb2.P4Info())\n"
        "print(' '.join(sorted(t.preamble.name for t in info.tables)))\n"
    )
    out = subprocess.run(
        [str(P4RT_PYTHON), "-c", script, str(REPO / "p4src/pp.p4info.txtpb")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == sorted(t.name for t in PIPELINE.tables)


@pytest.mark.bmv2
@pytest.mark.usefixtures("bmv2_tools")
def test_p4c_compiles_the_p4_to_exactly_the_committed_p4info() -> None:
    """The real compiler (p4c-bm2-ss 1.2.4, v1model) accepts the generated P4 and derives the
    same P4Info, text for text."""
    from cyberstar.p4tools import compile_p4

    compiled = compile_p4((REPO / "p4src/pp.p4").read_text())
    assert compiled.p4info_path.read_text() == (REPO / "p4src/pp.p4info.txtpb").read_text()
    assert compiled.json_path.stat().st_size > 0
