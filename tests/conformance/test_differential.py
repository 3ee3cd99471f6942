"""Differential conformance: every case on every target, byte for byte.

ref is the oracle; xdp runs the generated program in the kernel (BPF_PROG_TEST_RUN); bmv2 runs
the generated P4 compiled by p4c when the tools are installed (skipped otherwise).
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from conformance.cases import CASES, LONGEST_FRAME, Case
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import parse_rules
from cyberstar.targets import Outcome
from cyberstar.targets.ref import RefTarget


def run_ref(case: Case) -> tuple[Outcome, dict[str, list[tuple[int, int]]]]:
    target = RefTarget()
    target.install(parse_rules(case.rules, PIPELINE))
    outcome = target.process(case.frame, 1)
    counters = {name: [tuple(c) for c in cells] for name, cells in target.model.counters.items()}
    return outcome, counters


def assert_checksums_valid(frame: bytes) -> None:
    """Every IPv4/TCP/UDP/ICMP checksum in the frame (inner ones too) verifies."""
    pkt = Ether(frame)
    layer = pkt
    while layer:
        if isinstance(layer, IP | TCP | ICMP) or (isinstance(layer, UDP) and layer.chksum):
            stored = layer.chksum
            fresh = layer.copy()
            del fresh.chksum
            recomputed = type(layer)(bytes(fresh)).chksum
            assert stored == recomputed, (
                f"{layer.name} checksum {stored:#x}, expected {recomputed:#x}"
            )
        layer = layer.payload


def check_expectations(case: Case, outcome: Outcome) -> None:
    assert outcome.verdict == case.verdict
    assert outcome.port == case.port
    if case.verdict == "forward":
        assert outcome.output is not None
        if case.expected is not None:
            assert outcome.output.hex() == case.expected.hex()
        assert_checksums_valid(outcome.output)
    if case.verdict == "punt":
        assert outcome.output == case.frame, "a punted frame reaches the controller unmodified"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ref(case: Case) -> None:
    outcome, counters = run_ref(case)
    check_expectations(case, outcome)
    if case.drop_reason:
        index = PIPELINE.drop_reason(case.drop_reason)
        assert counters["drop_reasons"][index][0] == 1


@pytest.mark.root
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_xdp_matches_ref(case: Case, xdp_target) -> None:
    xdp_target.prog.clear()
    xdp_target.install(parse_rules(case.rules, PIPELINE))
    names = ("verdicts", "drop_reasons", "port_tx")
    before = {n: xdp_target.prog.counter(n) for n in names}
    outcome = xdp_target.process(case.frame, 1)
    after = {n: xdp_target.prog.counter(n) for n in names}
    ref_outcome, ref_counters = run_ref(case)
    check_expectations(case, outcome)
    assert outcome == ref_outcome
    if 14 <= len(case.frame) <= LONGEST_FRAME:  # others never reach XDP (XdpTarget.process)
        for n in names:
            moved = [(a[0] - b[0], a[1] - b[1]) for b, a in zip(before[n], after[n], strict=True)]
            assert moved == ref_counters[n], f"counter {n} differs from the reference model"


@pytest.mark.bmv2
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bmv2_matches_ref(case: Case, bmv2_target) -> None:
    bmv2_target.reset()
    bmv2_target.install(parse_rules(case.rules, PIPELINE))
    outcome = bmv2_target.process(case.frame, 1)
    ref_outcome, _ = run_ref(case)
    check_expectations(case, outcome)
    assert outcome == ref_outcome
