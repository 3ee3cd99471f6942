"""finsy 0.30, an asyncio P4Runtime controller framework, drives both PP node kinds: bmv2
(simple_switch_grpc running the generated P4) and the XDP node (`cyberstar pp serve`), one of
each for the module, over mutual TLS as a user would connect. Everything on the controller side
is finsy's own API: `Switch`, `SwitchOptions`, `GRPCCredentialsTLS` and its P4 entities.

Expected values are what the test wrote and frames scapy built, never our code's answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address

import needs
import pytest
from finsy import (
    GRPCCredentialsTLS,
    P4ClientError,
    P4PacketIn,
    P4PacketOut,
    P4TableAction,
    P4TableEntry,
    P4TableMatch,
    Switch,
    SwitchOptions,
)
from finsy.grpcutil import GRPCStatusCode
from google.protobuf import text_format
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from cyberstar import netns
from cyberstar.codegen.p4info import build_p4info
from cyberstar.lab.pp_process import PpNode, start_pp_node
from cyberstar.lab.procs import free_port
from cyberstar.pipeline.pp import PIPELINE

pytestmark = [pytest.mark.root, pytest.mark.bmv2]
TIMEOUT_S = 60.0
PORT1, PORT2 = 1, 2  # pp1 and pp2: the nodes' ports, in the order they are given
ETH_P_ALL = 3


@pytest.fixture(scope="module", params=["bmv2", "xdp"])
def node(request) -> PpNode:
    """A node of the kind with no pipeline until the module's first test connects (tests run
    in file order, each param's in turn), P4Runtime over mutual TLS: the XDP node on
    loopback TCP, as the README's example dials it; bmv2, which listens in its namespace, on a
    unix socket."""
    needs.root()
    address = None  # a unix socket
    if request.param == "bmv2":
        request.getfixturevalue("bmv2_tools")
    else:
        address = f"127.0.0.1:{free_port()}"
    with netns.with_pp_ports(f"cs-fin{request.param[0]}-{os.getpid()}") as ns:
        n = start_pp_node(request.param, ns, ["pp1", "pp2"], address=address)
        try:
            yield n
        finally:
            n.stop()


@pytest.fixture(scope="module")
def options(node: PpNode, tmp_path_factory) -> SwitchOptions:
    """What a finsy user writes: the P4Info text file, the target's blob (p4c's JSON for bmv2;
    the XDP node takes an empty one), the node's device id and the controller's certificate."""
    p4info = tmp_path_factory.mktemp("finsy") / "pp.p4info.txtpb"
    p4info.write_text(text_format.MessageToString(build_p4info(PIPELINE)))
    tls = node.tls
    # gRPC names a unix socket by its path: check the node's certificate for `localhost`
    name = "localhost" if node.address.startswith("unix:") else ""
    credentials = GRPCCredentialsTLS(cacert=tls.ca, cert=tls.cert, private_key=tls.key,
                                     target_name_override=name)  # fmt: skip
    return SwitchOptions(p4info=p4info, p4blob=node.device_config, device_id=node.device_id,
                         channel_credentials=credentials)  # fmt: skip


@pytest.fixture(scope="module")
def runner():
    """One event loop for the module: grpc.aio keeps its poller on the first loop it ran in."""
    with asyncio.Runner() as r:
        yield r


def control(runner: asyncio.Runner, node: PpNode, options: SwitchOptions,
            body: Callable[[Switch], Awaitable[object]]) -> object:  # fmt: skip
    """Run `body` as finsy's ready handler and return what it returned: finsy connects,
    arbitrates, sets the pipeline unless the node has its cookie, then calls the handler."""

    async def run() -> object:
        done = asyncio.get_running_loop().create_future()

        async def ready(sw: Switch) -> None:
            try:
                result = await body(sw)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(result)

        sw = Switch(f"{node.kind}-node", node.address, options(ready_handler=ready))
        async with asyncio.timeout(TIMEOUT_S), sw:
            assert sw.is_primary
            return await done

    return runner.run(run())


def next_hop(nexthop_id: int, port: int, dmac: int) -> P4TableEntry:
    return P4TableEntry(
        "next_hop",
        match=P4TableMatch(nexthop_id=nexthop_id),
        action=P4TableAction("set_next_hop", port=port, smac=0x02_00_00_00_00_01, dmac=dmac),
    )


def pipeline_pushes(caplog) -> int:
    return sum("Pipeline installed" in r.getMessage() for r in caplog.records)


async def read_all(sw: Switch, table: str) -> list[P4TableEntry]:
    return [e async for e in sw.read(P4TableEntry(table))]


def test_finsy_sets_the_pipeline_on_first_connect_and_keeps_it_when_the_cookie_matches(
    runner, node, options, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="finsy")
    kept = next_hop(7, PORT2, 0x02_00_00_00_00_07)

    async def first(sw: Switch) -> None:
        await sw.insert([kept])

    control(runner, node, options, first)
    assert pipeline_pushes(caplog) == 1  # the fresh node had no pipeline
    caplog.clear()

    async def second(sw: Switch) -> list[P4TableEntry]:
        try:
            return await read_all(sw, "next_hop")
        finally:
            await sw.delete([kept])

    found = control(runner, node, options, second)
    # Same P4Info and blob, same cookie: no push, so the entry written before survives.
    assert pipeline_pushes(caplog) == 0
    assert [(e.match, e.action) for e in found] == [(kept.match, kept.action)]


def test_finsy_inserts_reads_modifies_and_deletes_a_table_entry(runner, node, options) -> None:
    written = next_hop(9, PORT1, 0x02_00_00_00_00_09)
    changed = next_hop(9, PORT2, 0x02_00_00_00_00_0A)

    async def body(sw: Switch) -> dict[str, object]:
        seen: dict[str, object] = {}
        await sw.insert([written])
        seen["after insert"] = await read_all(sw, "next_hop")
        with pytest.raises(P4ClientError) as again:
            await sw.insert([written])
        seen["insert again"] = [
            again.value.code,
            *(d.canonical_code for d in again.value.details.values()),
        ]
        await sw.modify([changed])
        seen["after modify"] = await read_all(sw, "next_hop")
        await sw.delete([changed])
        seen["after delete"] = await read_all(sw, "next_hop")
        return seen

    seen = control(runner, node, options, body)
    assert [(e.match, e.action) for e in seen["after insert"]] == [(written.match, written.action)]
    assert seen["insert again"] == [GRPCStatusCode.UNKNOWN, GRPCStatusCode.ALREADY_EXISTS]
    assert [(e.match, e.action) for e in seen["after modify"]] == [(changed.match, changed.action)]
    assert seen["after delete"] == []


@contextlib.contextmanager
def raw_socket(ns: str, iface: str):
    with netns.entered(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        s.bind((iface, 0))
        s.setblocking(False)
        yield s
    finally:
        s.close()


async def received(s: socket.socket, want: bytes, within: float = 10.0) -> bool:
    """Whether `want` arrives on `s` within the time (other frames, IPv6 chatter, are skipped)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            while await loop.sock_recv(s, 4096) != want:
                pass
    except TimeoutError:
        return False
    return True


def test_finsy_gets_a_punted_frame_as_packet_in_and_sends_a_packet_out(
    runner, node, options
) -> None:
    tenant = 0x2A
    classify = P4TableEntry(
        "tenant_classify",
        match=P4TableMatch(ingress_port=PORT1, vni=0, dst_addr="10.9.0.0/16"),
        action=P4TableAction("set_tenant", tenant_id=tenant),
    )
    # No flow_table entry: the tenant's first packet misses, and the node punts it.
    punted = bytes(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
                   / IP(src="10.8.0.1", dst="10.9.0.2") / UDP(sport=4000, dport=5000)
                   / b"finsy packet in")  # fmt: skip
    sent = bytes(Ether(src="02:00:00:00:02:01", dst="02:00:00:00:02:02")
                 / IP(src="10.8.0.3", dst="10.8.0.4") / UDP(sport=4001, dport=5001)
                 / b"finsy packet out")  # fmt: skip

    async def body(sw: Switch) -> tuple[P4PacketIn | None, bool]:
        await sw.insert([classify])
        try:
            packets = sw.read_packets()
            first = asyncio.ensure_future(anext(packets))
            with raw_socket(node.ns, "peer1") as tx, raw_socket(node.ns, "peer2") as rx:
                pin = None
                for _ in range(20):  # resent until one arrives: nothing is lost to start-up
                    tx.send(punted)
                    done, _ = await asyncio.wait([first], timeout=0.5)
                    if done:
                        pin = first.result()
                        break
                await sw.write(
                    [P4PacketOut(sent, egress_port=PORT2, ingress_port=0, submit_to_ingress=0)]
                )
                out = await received(rx, sent)
            await packets.aclose()
            return pin, out
        finally:
            await sw.delete([classify])

    pin, out = control(runner, node, options, body)
    assert pin is not None, "no PacketIn for a frame that missed the flow table"
    assert pin.payload == punted
    # packet_in's fields (pipeline/pp.py): the port it came in on, reason 1 = "miss", the tenant
    assert dict(pin.metadata) == {"ingress_port": PORT1, "reason": 1, "tenant_id": tenant}
    assert out, "the PacketOut's frame did not leave port 2"


def test_finsy_is_told_of_an_idle_flow_entry(runner, node, options) -> None:
    idle = P4TableEntry(
        "flow_table",
        match=P4TableMatch(
            tenant_id=0x2B,
            src_addr=int(IPv4Address("10.7.0.1")),
            dst_addr=int(IPv4Address("10.7.0.2")),
            protocol=17,
            src_port=1000,
            dst_port=2000,
        ),
        action=P4TableAction("forward", nexthop_id=3),
        idle_timeout_ns=300_000_000,
    )

    async def body(sw: Switch) -> list[P4TableEntry]:
        timeouts = sw.read_idle_timeouts()
        first = asyncio.ensure_future(anext(timeouts))
        await asyncio.sleep(0)  # the queue is open before the entry can expire
        await sw.insert([idle])
        try:
            async with asyncio.timeout(15):
                note = await first
        finally:
            await timeouts.aclose()
            await sw.delete([idle])
        return note.table_entry

    entries = control(runner, node, options, body)
    assert [(e.table_id, e.match, e.idle_timeout_ns) for e in entries] == [
        ("flow_table", idle.match, idle.idle_timeout_ns)
    ]
