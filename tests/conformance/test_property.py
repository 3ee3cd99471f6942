"""Random and mutated frames: the XDP program, bmv2 running the generated P4 and the reference
model must agree on every one (verdict, port, output bytes, drop reason).

Bounded (a few hundred examples per run) so the suite stays fast; the seed is printed by
hypothesis on failure for replay.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.cases import BASE_RULES, CASES, FULLNAT, PING_SNAT, SNAT, SNAT_UDP
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import parse_rules
from cyberstar.ref.model import RefModel
from cyberstar.targets.ref import RefTarget

RULES = [*BASE_RULES, SNAT, SNAT_UDP, FULLNAT, PING_SNAT]
SEEDS = [c.frame for c in CASES if len(c.frame) >= 14]
MAX_FRAME = 600


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(frame) - 1))
        frame[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(14, len(frame)))
    tail = draw(st.binary(max_size=40))
    return bytes(frame[:cut]) + tail


def random_frames() -> st.SearchStrategy[bytes]:
    ethertypes = st.sampled_from([b"\x08\x00", b"\x81\x00", b"\x86\xdd", b"\x08\x06"])
    return st.builds(
        lambda mac, et, body: mac + et + body,
        st.binary(min_size=12, max_size=12),
        ethertypes,
        st.binary(max_size=MAX_FRAME),
    )


FRAMES = st.one_of(mutated_frames(), random_frames())


@pytest.fixture(scope="module")
def loaded_xdp(xdp_target):
    xdp_target.prog.clear()
    xdp_target.install(parse_rules(RULES, PIPELINE))
    return xdp_target


@pytest.fixture(scope="module")
def loaded_bmv2(bmv2_target):
    bmv2_target.reset()
    bmv2_target.install(parse_rules(RULES, PIPELINE))
    return bmv2_target


def test_reference_model_never_raises_on_garbage() -> None:
    model = RefModel()
    model.install(parse_rules(RULES, PIPELINE))

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=MAX_FRAME))
    def check(frame: bytes) -> None:
        result = model.process(frame, 1)
        assert result.verdict in PIPELINE.verdicts

    check()


@pytest.mark.root
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=FRAMES, port=st.sampled_from([1, 1, 1, 2]))
def test_xdp_agrees_with_ref_on_random_frames(loaded_xdp, frame: bytes, port: int) -> None:
    ref = RefTarget()
    ref.install(parse_rules(RULES, PIPELINE))
    assert loaded_xdp.process(frame, port) == ref.process(frame, port)


@pytest.mark.bmv2
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=FRAMES, port=st.sampled_from([1, 1, 1, 2]))
def test_bmv2_agrees_with_ref_on_random_frames(loaded_bmv2, frame: bytes, port: int) -> None:
    ref = RefTarget()
    ref.install(parse_rules(RULES, PIPELINE))
    assert loaded_bmv2.process(frame, port) == ref.process(frame, port)
