"""End to end: real TCP connections through the XDP PP node, FM and SC groups (processes).

Tenant clients → PP (XDP) → servers, with FM and SC groups of three nodes as real processes
(see `cyberstar.lab.slowpath`). Connections go through SNAT and through the load balancer; the
PP agent restarts under established connections (FM answers from its cache, SC is not asked);
SC scales out 1 → 2 → 4 SC groups and back to 1 while connections keep coming; a standby FM
takes over from a killed leader without losing rules.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from cyberstar.lab.slowpath import (
    PUBLIC_IP,
    SERVER_PORT,
    SERVERS,
    VIP,
    VIP_PORT,
    SlowPathLab,
)
from cyberstar.lab.wait import wait_until
from fm.helpers import open_connections, running_lab, sc_requests

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab():
    with running_lab(scgs=2, nodes_per_scg=3, mode="native") as lab:
        yield lab


def test_membership_in_etcd(lab) -> None:
    """SC nodes register themselves; FM registers itself and the PP nodes it reaches."""
    from cyberstar.sc import coord

    async def members() -> set[str]:
        client = await coord.connect(lab.sc.etcd_config(), "test")
        async with client:
            out = set()
            for kv in await client.get_prefix(b"/cyberstar/members/"):
                out.add(kv.key.decode().removeprefix("/cyberstar/members/"))
            return out

    wait_until(lambda: "pp/pp1" in asyncio.run(members()), 15, "members/pp/pp1 in etcd")
    found = asyncio.run(members())
    assert {"fm/fm1", "pp/pp1"} <= found
    assert sum(1 for m in found if m.startswith("sc/")) == 6


def test_a_thousand_connections_through_snat(lab) -> None:
    before = len(lab.accepted)
    asked, packed = sc_requests(lab), sc_requests(lab, "packed_replies")
    _, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 1000)
    assert errors == []
    # FM asked for its packed records, and every new connection's rules came that way.
    assert sc_requests(lab, "packed_replies") - packed == sc_requests(lab) - asked >= 1000
    seen = [peer for _, peer in lab.accepted[before:]]
    assert len(seen) == 1000
    assert {ip for ip, _ in seen} == {PUBLIC_IP}
    assert len({port for _, port in seen}) == 1000, "a public port was handed out twice"


def test_a_thousand_connections_through_the_load_balancer(lab) -> None:
    before = len(lab.accepted)
    _, errors = open_connections(lab, VIP, VIP_PORT, 1000)
    assert errors == []
    assert len(lab.accepted) - before == 1000


def test_pp_restart_keeps_established_connections_from_fm_cache(lab) -> None:
    sockets, errors = open_connections(lab, SERVERS[1], SERVER_PORT, 50, keep=True)
    assert errors == []
    asked = sc_requests(lab)
    lab.restart_pp()
    try:
        for s in sockets:  # every established connection still works, through a fresh PP
            s.sendall(b"still there?")
            assert s.recv(100) == b"echo:still there?"
        assert sc_requests(lab) == asked, "FM should answer repeated requests from its cache"
        status = lab.fm_get("fm1", "/status")
        assert status["slow_path"]["cache_hits"] >= 50
    finally:
        for s in sockets:
            s.close()


def tenant_shards(lab: SlowPathLab, tenant: int = 7) -> dict[str, str]:
    shards = lab.fm_get("fm1", "/status")["shards"]
    return {sid: scg for sid, scg in shards.items() if sid.startswith(f"{tenant}:")}


def test_scale_out_to_four_groups_and_back_while_connections_flow(lab) -> None:
    lab.sc.add_scg("scg3", 2)
    lab.sc.add_scg("scg4", 2)
    stop, errors, done = threading.Event(), [], [0]

    def traffic() -> None:
        while not stop.is_set():
            _, errs = open_connections(lab, SERVERS[0], SERVER_PORT, 16, workers=8)
            errors.extend(errs)
            done[0] += 16

    t = threading.Thread(target=traffic)
    t.start()
    try:
        out1 = lab.fm_post("fm1", "/scale?kind=out&shard=7:0-1024&to=scg2")
        assert out1["phase"] == "fin"
        shards = tenant_shards(lab)
        by_scg = {scg: sid for sid, scg in shards.items()}
        lab.fm_post("fm1", f"/scale?kind=out&shard={by_scg['scg1']}&to=scg3")
        lab.fm_post("fm1", f"/scale?kind=out&shard={by_scg['scg2']}&to=scg4")
        shards = tenant_shards(lab)
        assert sorted(shards.values()) == ["scg1", "scg2", "scg3", "scg4"]
        # back to one group: merge every shard into scg1's, neighbour by neighbour
        while len(shards) > 1:
            order = sorted(shards, key=lambda s: int(s.split(":")[1].split("-")[0]))
            moving = next(s for s in order if shards[s] != "scg1")
            lab.fm_post("fm1", f"/scale?kind=in&shard={moving}&to=scg1")
            shards = tenant_shards(lab)
        assert list(shards.values()) == ["scg1"]
    finally:
        stop.set()
        t.join(60)
    assert errors == [], f"{len(errors)} of {done[0]} connections failed: {errors[:3]}"
    assert done[0] > 0


def test_bad_requests_are_counted_not_fatal(lab) -> None:
    """A tenant SC does not know, and an exhausted SNAT pool: errors and an alarm, no crash."""
    from cyberstar.lab.slowpath import SMALL_POOL_SIZE, SMALL_SERVER, UNKNOWN_TENANT_SERVER

    with pytest.raises(OSError):
        lab.connect(UNKNOWN_TENANT_SERVER, SERVER_PORT, timeout=1.5)
    stats = lab.fm_get("fm1", "/status")["slow_path"]
    assert stats.get("unknown_tenant", 0) >= 1

    held, errors = open_connections(lab, SMALL_SERVER, SERVER_PORT, SMALL_POOL_SIZE, keep=True)
    assert errors == []
    try:
        with pytest.raises(OSError):  # the pool is empty: the PP gets a drop rule
            lab.connect(SMALL_SERVER, SERVER_PORT, timeout=1.5)
        stats = lab.fm_get("fm1", "/status")["slow_path"]
        assert stats.get("pool_exhausted_alarms", 0) >= 1
        for s in held:  # the connections holding the pool are untouched
            s.sendall(b"ok?")
            assert s.recv(100) == b"echo:ok?"
    finally:
        for s in held:
            s.close()
    # FM and the PP are still serving
    _, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 5)
    assert errors == []


def test_standby_fm_takes_over_without_losing_rules(lab) -> None:
    lab.start_fm("fm2")
    wait_until(lambda: lab.fm_get("fm2", "/status")["pp_nodes"]["pp1"]["connections"], 30,
             "fm2 to connect to pp1 as a standby")  # fmt: skip
    sockets, errors = open_connections(lab, SERVERS[0], SERVER_PORT, 30, keep=True)
    assert errors == []
    lab.kill_fm("fm1")
    wait_until(lambda: lab.fm_get("fm2", "/status")["leader"], 30, "fm2 to lead")
    status = lab.fm_get("fm2", "/status")
    assert status["cached_connections"] >= 30, "the new leader rebuilt the cache from the PP"
    asked = sc_requests(lab)
    lab.restart_pp()  # established connections now depend on fm2's rebuilt cache
    try:
        for s in sockets:
            s.sendall(b"after failover")
            assert s.recv(100) == b"echo:after failover"
        assert sc_requests(lab) == asked
        _, errors = open_connections(lab, SERVERS[1], SERVER_PORT, 20)
        assert errors == []  # and new connections go through the new leader
    finally:
        for s in sockets:
            s.close()
