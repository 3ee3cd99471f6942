"""A busy PP node coalesces its punts: after a read of the kernel's punt buffer that found
several, the agent waits `--punt-coalesce-us` before the next, so the punts that arrive
meanwhile leave together; a lone punt is sent at once. A real agent with a long pause (100 ms)
makes both visible on the wire, through a controller that asked for PacketInBatch messages,
and shows that what came during a pause leaves when it ends."""

from __future__ import annotations

import math
import time

import pytest

from pp.conftest import agent_node
from pp.test_stream_batching import RawStream, frames, opt_in, packet_ins, primed, send_burst

pytestmark = pytest.mark.root
PAUSE_S = 0.1


@pytest.fixture(scope="module")
def coalescing_node():
    yield from agent_node("ppc", extra=["--punt-coalesce-us", str(int(PAUSE_S * 1e6))])


@pytest.fixture
def batching_stream(coalescing_node):
    s = primed(RawStream(coalescing_node))
    s.send(opt_in(64))
    time.sleep(PAUSE_S * 2)  # the opt-in is read, and a pause left by an earlier test is over
    yield s
    s.close()


def test_punts_arriving_while_the_node_is_busy_leave_together(batching_stream, coalescing_node):
    ns = coalescing_node.ns
    burst, paced = frames(10, 31000), frames(100, 32000)
    send_burst(ns, burst)  # one poll finds several: the node pauses
    started = time.monotonic()
    for frame in paced:  # one every 2 ms or more: without the pause, one poll each
        send_burst(ns, [frame])
        time.sleep(0.002)
    sending = time.monotonic() - started
    got = packet_ins(batching_stream, len(burst) + len(paced))
    # Every punt once (the kernel keeps one punt ring per CPU: the sender may have moved).
    assert sorted(p.payload for _, pins in got for p in pins) == sorted(burst + paced)
    # A read keeping up with the burst sends its punts one by one until one finds several;
    # from then on punts leave once per pause of 100 ms, however fast the sender went
    # (≥ 200 ms; slower on a busy machine): one message per pause, one more for the last.
    # Without the pause: one message per punt, ~100.
    sizes = [len(pins) for _, pins in got]
    pauses = math.ceil(sending / PAUSE_S)
    assert pauses < len(paced) // 2, f"the sender took {sending:.2f} s: too slow to tell"
    first = next((i for i, n in enumerate(sizes) if n > 1), len(sizes))
    assert first < len(burst), ("no read found several punts", sizes)
    assert len(sizes) - first <= pauses + 1, (sending, sizes)


def test_a_lone_punt_is_sent_at_once(batching_stream, coalescing_node):
    for port in (33000, 33001):  # the second right after the first: no pause after a lone one
        frame = frames(1, port)
        t0 = time.monotonic()
        send_burst(coalescing_node.ns, frame)
        (got,) = packet_ins(batching_stream, 1)
        took = time.monotonic() - t0
        assert [p.payload for p in got[1]] == frame
        assert took < PAUSE_S / 2, f"a lone punt took {took * 1e3:.0f} ms"


def test_a_punt_that_comes_during_the_pause_leaves_when_it_ends(batching_stream, coalescing_node):
    # Nothing comes after it: only the end of the pause can send it.
    burst, late = frames(10, 34000), frames(1, 34100)
    t0 = time.monotonic()
    send_burst(coalescing_node.ns, burst)  # several in one read: the node pauses
    time.sleep(PAUSE_S / 4)
    send_burst(coalescing_node.ns, late)
    got = packet_ins(batching_stream, len(burst) + len(late))
    took = time.monotonic() - t0
    assert sorted(p.payload for _, pins in got for p in pins) == sorted(burst + late)
    assert took < PAUSE_S * 5, f"the punt sent during the pause came {took * 1e3:.0f} ms later"
