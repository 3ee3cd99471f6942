"""SNAT pools under allocation, release, split and merge: no element twice, none leaked.

Two drivers over the same model (`model.World`): a hypothesis state machine (shrinks a failure
to a short story) and a seeded random walk of 100 000 operations."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cyberstar.sc.flows import FlowKey
from cyberstar.sc.pool import AddressPool, PoolError
from sc.model import World

SCGS = ("a", "b", "c", "d")
MIN_SPLIT = 64  # at most 16 shards: the regime a tenant lives in


def flow(client: int, port: int, server: int) -> FlowKey:
    return FlowKey(6, 0x0A000000 + client, 0x08080800 + server, 20000 + port, 443)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World(SCGS)

    @rule(c=st.integers(0, 30), p=st.integers(0, 40), s=st.integers(0, 3))
    def allocate(self, c: int, p: int, s: int) -> None:
        self.world.allocate(flow(c, p, s))

    @precondition(lambda self: self.world.live)
    @rule(data=st.data(), directions=st.sampled_from([1, 2]))
    def release(self, data, directions: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.world.live)))
        self.world.release(key, directions)

    @rule(data=st.data(), dst=st.sampled_from(SCGS))
    def scale_out(self, data, dst: str) -> None:
        shards = [s for s in self.world.map if s.hi - s.lo >= MIN_SPLIT and not self.world.busy(s)]
        shards = [s for s in shards if self.world.map[s] != dst]
        if shards:
            self.world.start_out(data.draw(st.sampled_from(sorted(shards))), dst)

    @rule(data=st.data())
    def scale_in(self, data) -> None:
        shards = [s for s in self.world.map if not self.world.busy(s)]
        if shards:
            self.world.start_in(data.draw(st.sampled_from(sorted(shards))))

    @precondition(lambda self: self.world.moves)
    @rule(data=st.data())
    def advance(self, data) -> None:
        self.world.advance(data.draw(st.sampled_from(self.world.moves)))

    @invariant()
    def each_element_once(self) -> None:
        self.world.census()

    def teardown(self) -> None:
        self.world.finish()


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)


def test_random_walk_100k_operations() -> None:
    rng = random.Random(20240401)
    world = World(SCGS)
    counts = {"allocate": 0, "release": 0, "out": 0, "in": 0, "advance": 0}
    for step in range(100_000):
        r = rng.random()
        if r < 0.5:
            world.allocate(flow(rng.randrange(60), rng.randrange(80), rng.randrange(4)))
            counts["allocate"] += 1
        elif r < 0.9 and world.live:
            key = rng.choice(list(world.live))
            world.release(key, rng.choice((1, 2, 2)))
            counts["release"] += 1
        elif r < 0.94:
            shards = [s for s in world.map if s.hi - s.lo >= MIN_SPLIT and not world.busy(s)]
            dst = rng.choice(SCGS)
            shards = [s for s in shards if world.map[s] != dst]
            if shards:
                world.start_out(rng.choice(shards), dst)
                counts["out"] += 1
        elif r < 0.97:
            shards = [s for s in world.map if not world.busy(s)]
            if shards and world.start_in(rng.choice(shards)):
                counts["in"] += 1
        elif world.moves:
            world.advance(rng.choice(world.moves))
            counts["advance"] += 1
        if step % 500 == 0:
            world.census()
    world.census()
    world.finish()
    assert counts["out"] > 100 and counts["in"] > 100, counts
    assert world.exhausted > 0  # the pool ran dry at times: exhaustion was exercised too


def test_pool_split_merge_roundtrip() -> None:
    pool = AddressPool([(100, 200), (300, 310)])
    for e in (100, 150, 305):
        pool.take(e)
    pool.give(150)
    half = pool.split()
    assert len(half) + len(pool) == 108
    assert not set(half) & set(pool)
    pool.merge(half)
    assert set(pool) == (set(range(101, 200)) | set(range(300, 310))) - {305}
    assert AddressPool.decode(pool.encode()).encode() == pool.encode()


def test_pool_refuses_double_free_and_foreign_take() -> None:
    pool = AddressPool([(10, 20)])
    pool.take(12)
    try:
        pool.give(13)
    except PoolError as exc:
        assert "already free" in str(exc)
    else:
        raise AssertionError("giving a free element must fail")
    try:
        pool.take(25)
    except PoolError as exc:
        assert "not free" in str(exc)
    else:
        raise AssertionError("taking a foreign element must fail")
    other = AddressPool([(19, 21)])
    try:
        pool.merge(other)
    except PoolError:
        pass
    else:
        raise AssertionError("merging overlapping pools must fail")
