"""PacketOuts into the pipeline run a batch at a time (one live-frames test run of the program,
whose `replay_take` prologue puts each repetition's frame in place): every frame must leave as
the pipeline alone makes it, in order, whatever the batch's lengths, size and ingress
interfaces."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cyberstar import netns
from cyberstar.codegen.xdp_layout import REPLAY_FRAMES
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.pipeline.rules import parse_rules
from cyberstar.xdp.program import LOOPBACK_IFINDEX

pytestmark = pytest.mark.root
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python does not name it


def _snat_frames(count: int) -> list[bytes]:
    """Frames of one SNAT flow, each marked with its index and of its own length (60 to
    ~1 400 bytes, the longest neither first nor last)."""
    from conformance.cases import client_tcp

    lengths = [(i * 337) % 1340 for i in range(count)]
    return [bytes(client_tcp(payload=i.to_bytes(4, "big") + bytes(n))) for i, n in
            enumerate(lengths)]  # fmt: skip


@contextmanager
def _forwarding(prog, pp_ns) -> Iterator[int]:
    """Rules that SNAT the frames from port 1 (pp1) to port 2 (pp2), the program attached to
    both (so a batch is one test run) until the block ends; pp1's ifindex."""
    from conformance.cases import BASE_RULES, SNAT

    prog.install_defaults()
    prog.install(parse_rules([*BASE_RULES[:3], SNAT], PIPELINE))
    with netns.entered(pp_ns):
        pp1 = socket.if_nametoindex("pp1")
        prog.set_port(pp1, 1)
        prog.set_port(socket.if_nametoindex("pp2"), 2)
        prog.attach("pp1")
        prog.attach("pp2")
    # native XDP_REDIRECT into a veth needs GRO on its peer
    netns.exec_in(pp_ns, "ethtool", "-K", "peer2", "gro", "on")
    try:
        yield pp1
    finally:
        with netns.entered(pp_ns):
            prog.detach_all()


def _capture(pp_ns) -> socket.socket:
    """A socket capturing what leaves pp2."""
    with netns.entered(pp_ns):
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        rx.bind(("peer2", 0))
    rx.settimeout(5)
    return rx


def _forwarded(prog) -> int:
    return prog.counter("verdicts")[PIPELINE.verdicts.index("forward")][0]


def _received(rx: socket.socket, count: int) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(out) < count and time.monotonic() < deadline:
        data, addr = rx.recvfrom(65536)
        if addr[2] != PACKET_OUTGOING:
            out.append(data)
    return out


def test_a_batch_leaves_as_the_pipeline_makes_each_frame_in_order(pp_ns, prog) -> None:
    """600 frames of varied lengths (three replay runs: 256 + 256 + 88), and frames for an
    interface that is not a port between them (XDP_PASS, they stay in the namespace): each
    frame of port 1 leaves pp2 exactly as a test run of the pipeline alone on that frame
    gives it."""
    with _forwarding(prog, pp_ns) as pp1, _capture(pp_ns) as rx:
        with netns.entered(pp_ns):
            peer1 = socket.if_nametoindex("peer1")
        frames = _snat_frames(600)
        prog.set_ingress_port(LOOPBACK_IFINDEX, 1)  # where a test run without live frames enters
        alone = [prog.run(f) for f in frames]
        assert {r.action for r in alone} == {"XDP_REDIRECT"}
        batch, ifindexes = [], []
        for i, f in enumerate(frames):
            batch.append(f)
            ifindexes.append(pp1)
            if i in (10, 300, 301):
                batch.append(frames[0])
                ifindexes.append(peer1)  # not one of the pipeline's ports
        forwarded_before = _forwarded(prog)
        with netns.entered(pp_ns):
            assert prog.run_live(batch, ifindexes) == [0] * len(batch)
        got = _received(rx, len(frames))
    assert len(got) == len(frames)
    for i, (seen, want) in enumerate(zip(got, alone, strict=True)):
        assert seen == want.data, f"frame {i}: {len(seen)} bytes, expected {len(want.data)}"
    assert _forwarded(prog) - forwarded_before == len(frames)
    assert len(frames) > 2 * REPLAY_FRAMES


def _counters(prog) -> list[tuple[int, int]]:
    return [cell for c in PIPELINE.counters for cell in prog.counter(c.name)]


def test_garbage_in_a_batch_is_counted_as_each_frame_alone(pp_ns, prog) -> None:
    """400 frames, each a valid SNAT frame cut short, with bytes overwritten, or random bytes
    (seeded): every counter of the pipeline (verdicts, drop reasons, per port) moves by as much
    for the frames run as one batch as for the same frames run one by one, without live
    frames, through the pipeline alone."""
    import random

    from conformance.cases import client_tcp

    prog.set_ingress_port(LOOPBACK_IFINDEX, 1)
    rnd = random.Random(7)
    valid = bytes(client_tcp())
    frames = []
    for _ in range(400):
        kind = rnd.randrange(3)
        if kind == 0:
            frames.append(valid[: rnd.randrange(14, len(valid) + 1)])
        elif kind == 1:
            f = bytearray(valid)
            for _ in range(rnd.randrange(1, 6)):
                f[rnd.randrange(len(f))] = rnd.randrange(256)
            frames.append(bytes(f))
        else:
            frames.append(rnd.randbytes(rnd.randrange(14, 1500)))
    with _forwarding(prog, pp_ns) as pp1, netns.entered(pp_ns):
        before = _counters(prog)
        assert prog.run_live(frames, [pp1] * len(frames)) == [0] * len(frames)
    batched = [(p - p0, b - b0) for (p, b), (p0, b0) in zip(_counters(prog), before, strict=True)]
    before = _counters(prog)
    for f in frames:
        prog.run(f)
    alone = [(p - p0, b - b0) for (p, b), (p0, b0) in zip(_counters(prog), before, strict=True)]
    assert sum(p for p, _ in batched) >= len(frames)  # every frame counted somewhere
    assert batched == alone


def test_a_long_frame_beside_short_ones_keeps_every_length(pp_ns, prog) -> None:
    """The run's buffer is the batch's longest frame behind 4 bytes of metadata; each shorter
    one is cut to its length. The pipeline counts each forwarded frame's bytes. (3 400 bytes:
    live-frames runs take up to MAX_FRAME less the kernel's page header, 3 408 on 6.18.)"""
    from conformance.cases import client_tcp

    headers = len(client_tcp(payload=b""))  # Ethernet, IPv4, TCP: 54 bytes
    frames = [bytes(client_tcp()), bytes(client_tcp(payload=bytes(3400 - headers))),
              bytes(client_tcp(payload=bytes(100)))]  # fmt: skip
    with _forwarding(prog, pp_ns) as pp1, netns.entered(pp_ns):
        before = prog.counter("verdicts")[PIPELINE.verdicts.index("forward")]
        assert prog.run_live(frames, [pp1] * len(frames)) == [0] * len(frames)
    after = prog.counter("verdicts")[PIPELINE.verdicts.index("forward")]
    assert (after[0] - before[0], after[1] - before[1]) == (3, 72 + 3400 + 154)


def test_a_run_that_fails_gives_each_of_its_frames_the_errno(pp_ns, prog) -> None:
    """An ingress interface that does not exist: the kernel refuses the run (ENODEV), and
    only that run's frames carry the error."""
    frames = _snat_frames(5)
    with _forwarding(prog, pp_ns) as pp1, netns.entered(pp_ns):
        assert prog.run_live(frames, [pp1, pp1, 0x7FFFFFF0, 0x7FFFFFF0, pp1]) == [
            0, 0, errno.ENODEV, errno.ENODEV, 0]  # fmt: skip


def test_a_program_attached_nowhere_runs_each_frame_alone(pp_ns, prog) -> None:
    """A live-frames run that repeats puts its program into the kernel's XDP dispatcher and
    takes it out again, two RCU grace periods (24 ms measured on 6.18), unless the program is
    attached to an interface. 64 frames one run each take well under a millisecond."""
    frames = _snat_frames(64)
    with netns.entered(pp_ns):
        peer1 = socket.if_nametoindex("peer1")  # not a port: the frames pass to its stack
        started = time.perf_counter()
        assert prog.run_live(frames, [peer1] * len(frames)) == [0] * len(frames)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.015


def test_frames_outside_the_test_run_sizes_are_refused_before_any_runs(prog) -> None:
    with pytest.raises(ValueError, match="frames of 14"):
        prog.run_live([bytes(60), bytes(13)], [1, 1])
    with pytest.raises(ValueError, match="one each"):
        prog.run_live([bytes(60)], [1, 1])


def test_the_c_batch_runner_agrees_with_the_generated_program_on_the_slots() -> None:
    """The C runner writes each frame after its own slot header and refuses frames shorter
    than its own minimum: the header must be the one the generated program reads, and the
    minimum an Ethernet header (the kernel's bound for XDP test frames)."""
    from scapy.layers.l2 import Ether

    from cyberstar.codegen.xdp_layout import REPLAY_HEADER
    from cyberstar.xdp import _live_frames
    from cyberstar.xdp.testrun import MIN_FRAME

    assert _live_frames.SLOT_HEADER == REPLAY_HEADER
    assert _live_frames.MIN_FRAME == MIN_FRAME == len(Ether())
