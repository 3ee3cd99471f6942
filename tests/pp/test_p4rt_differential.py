"""The XDP node answers P4Runtime the way bmv2 does: the corpus (p4rt_corpus.py) is replayed
against bmv2 (simple_switch_grpc running the generated P4, compiled by p4c) and the XDP node
(`cyberstar pp serve`), one of each for the module, and their answers are compared in canonical
form (p4rt_oracle.py): status codes, per-update error codes, read results, stream messages.

Every remaining difference is a row of the table in docs/p4runtime.md, with its reason: the
test fails on a difference the table does not list, and on a row that no longer differs."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import needs
import pytest

from cyberstar import netns
from cyberstar.codegen.p4info import build_p4info
from cyberstar.lab.pp_process import start_agent, start_switch
from cyberstar.lab.procs import free_port
from cyberstar.pipeline.pp import PIPELINE
from pp import p4rt_corpus as corpus
from pp.p4rt_oracle import Target

pytestmark = [pytest.mark.root, pytest.mark.bmv2]
REPO = Path(__file__).resolve().parents[2]
DIFFERENCES = REPO / "docs" / "p4runtime.md"
ROW = re.compile(r"^\| (?P<case>[^|]+?) \| (?P<steps>[^|]+?) \|")


def documented() -> set[tuple[str, str]]:
    """(case, step) of every row of the documented differences table."""
    rows = set()
    for line in DIFFERENCES.read_text().splitlines():
        m = ROW.match(line)
        if m:  # every `quoted` case with every `quoted` step
            for case in re.findall(r"`([^`]+)`", m["case"]):
                rows.update((case, step) for step in re.findall(r"`([^`]+)`", m["steps"]))
    return rows


@pytest.fixture(scope="module")
def targets(bmv2_tools):
    """A bmv2 node and an XDP node, neither with a pipeline yet."""
    needs.root()
    p4info = build_p4info(PIPELINE)
    with contextlib.ExitStack() as stack:
        pid = os.getpid()
        ns = stack.enter_context(netns.with_pp_ports(f"cs-dfb-{pid}"))
        switch = start_switch(ns, ["pp1", "pp2"])
        stack.callback(switch.stop)
        ns = stack.enter_context(netns.with_pp_ports(f"cs-dfx-{pid}"))
        # TCP: every connection is a peer of its own, as controllers are
        agent = start_agent(ns, ["pp1", "pp2"], address=f"127.0.0.1:{free_port()}")
        stack.callback(agent.stop)
        xdp_config = (REPO / "ebpf" / "pp_xdp.c").read_bytes()  # what the agent runs
        yield [Target("bmv2", switch.address, switch.tls, 1, switch.device_config, p4info),
               Target("xdp", agent.address, agent.tls, 1, xdp_config, p4info)]  # fmt: skip


def replay(targets: list[Target]) -> dict[tuple[str, str], tuple]:
    """Every case on both targets, in corpus order (fresh-target cases first); the steps whose
    outcomes differ, with both outcomes."""
    cases = sorted(corpus.CASES, key=lambda c: not c.fresh)
    differ = {}
    for i, case in enumerate(cases):
        seen = []
        for t in targets:
            session = corpus.Session(t, base=(i + 1) * 1000)
            try:
                seen.append(case.run(session))
            finally:
                session.close()
        oracle, ours = seen
        for step in oracle.keys() | ours.keys():
            if oracle.get(step) != ours.get(step):
                differ[(case.name, step)] = (oracle.get(step), ours.get(step))
    return differ


def test_the_xdp_node_answers_as_bmv2_does_but_for_the_documented_differences(targets) -> None:
    differ = replay(targets)
    table = documented()
    unexplained = {k: v for k, v in differ.items() if k not in table}
    lines = [f"{c} | {step}: bmv2 {b}, xdp {x}"
             for (c, step), (b, x) in sorted(unexplained.items())]  # fmt: skip
    assert not unexplained, "differences from bmv2 not in docs/p4runtime.md:\n" + "\n".join(lines)
    gone = table - differ.keys()
    assert not gone, f"documented in docs/p4runtime.md but no longer different: {sorted(gone)}"
