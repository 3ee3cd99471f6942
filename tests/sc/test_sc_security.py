"""An SC group tried as a hostile neighbour would (issue 8): every door is authenticated and
bounded, a refusal gives nothing away, and nothing an outsider sends changes the state.

Each test starts from something that worked on the unhardened code: a hello claiming the
predecessor's name followed by a snapshot replaced a node's shards; any caller could Transfer
shards in; a 64 MiB frame before the hello was buffered; 150 000 requests in one Compute
stalled the head past its lease; a second node on a taken port shared it (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from cyberstar.lab.procs import free_port
from cyberstar.lab.sc import ScLab, ScProcess
from cyberstar.lab.wait import wait_until
from cyberstar.proto import sc_pb2
from cyberstar.sc.client import ScClient
from cyberstar.sc.replication import HELLO_TIMEOUT_S
from cyberstar.sc.routing import ShardMap
from sc import chainwire
from sc.test_chain import TENANTS

pytestmark = pytest.mark.usefixtures("need_etcd")


def run(coro):
    return asyncio.run(coro)


async def inspect(address: str, tls) -> sc_pb2.InspectReply:
    async with ScClient(address, tls) as c:
        return await c.inspect()


async def chain_of(lab: ScLab):
    smap = ShardMap(lab.etcd_config())
    await smap.start()
    try:
        await smap.wait_until(
            lambda m: (
                len(m.chains.get("scg1", ()).nodes if "scg1" in m.chains else ()) == 3
                and len(m.shards) == 1
            ),
            30,
        )
        return smap.chains["scg1"]
    finally:
        await smap.close()


@pytest.fixture(scope="module")
def lab():
    with ScLab(TENANTS, lease_ttl_s=3) as lab:
        lab.add_scg("scg1", 3)
        chain = run(chain_of(lab))
        wait_until(
            lambda: all(run(inspect(n.address, lab.client_tls)).shards for n in chain.nodes),
            30,
            "every node to hold the tenant's shard",
        )
        yield lab


def tail_and_predecessor(lab: ScLab):
    chain = run(chain_of(lab))
    return chain.nodes[2], chain.nodes[1], chain


def test_an_impostor_on_the_chain_link_changes_nothing(lab: ScLab) -> None:
    tail, pred, chain = tail_and_predecessor(lab)
    before = run(inspect(tail.address, lab.client_tls))
    assert [s.id for s in before.shards] == ["7:0-1024"]
    hello = sc_pb2.ChainMessage(hello=sc_pb2.ChainHello(epoch=chain.epoch, from_node=pred.id))
    wipe = sc_pb2.ChainMessage(
        update=sc_pb2.ChainUpdate(
            seq=before.applied_seq + 1,
            snapshot=True,
            ops=b'[{"shards": [], "forwarding": [], "transfers": {}}]',
        )
    )
    # 1. Plaintext, as the unhardened link took it: the TLS listener does not even answer.
    with chainwire.connect(tail.chain, None) as sock:
        chainwire.send_frame(sock, hello.SerializeToString())
        chainwire.send_frame(sock, wipe.SerializeToString())
        assert chainwire.closed_by_peer(sock, 15)
    # 2. A certificate of the lab, but not the predecessor's (an admin's, and another SC
    #    node's: the head claiming to be the middle).
    head = chain.nodes[0]
    for role, name in (("admin", "lab-admin"), ("sc", head.id)):
        with chainwire.connect(tail.chain, lab.certs.files(role, name)) as sock:
            chainwire.send_frame(sock, hello.SerializeToString())
            answer = sc_pb2.ChainAck.FromString(chainwire.read_frame(sock))
            assert answer.refused, answer
            # The refusal says who refused whom, and nothing an impostor could use (no epoch).
            assert re.fullmatch(r"\S+ does not take updates from '[^']*'", answer.refused)
            assert "epoch" not in answer.refused and answer.applied_seq == 0
            with contextlib.suppress(OSError):
                chainwire.send_frame(sock, wipe.SerializeToString())
            assert chainwire.closed_by_peer(sock, 15)
    after = run(inspect(tail.address, lab.client_tls))
    assert [s.id for s in after.shards] == ["7:0-1024"]
    assert after.applied_seq >= before.applied_seq
    assert after.counters["chain_refused"] >= before.counters["chain_refused"] + 2


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_chain_link_frames_and_connections_are_bounded_before_the_hello(lab: ScLab) -> None:
    tail, _, _ = tail_and_predecessor(lab)
    proc = lab.nodes[tail.id].proc
    assert proc is not None
    before = rss_kb(proc.pid)
    admin = lab.certs.files("admin", "lab-admin")
    # A frame announced at 64 MiB is refused at its length, before its bytes are buffered.
    sent = 0
    with chainwire.connect(tail.chain, admin) as sock:
        sock.sendall(chainwire.FRAME.pack(64 << 20))
        chunk = b"\0" * (1 << 20)
        try:
            while sent < 64 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
    assert sent < 16 << 20, f"the node read {sent} bytes of a frame it should have refused"
    assert rss_kb(proc.pid) - before < 16 * 1024
    # Connections that never say hello: a few are held, for a while; the rest are closed.
    socks = [chainwire.connect(tail.chain, admin) for _ in range(12)]
    try:
        early = [s for s in socks if chainwire.closed_by_peer(s, 0.5)]
        assert len(early) >= 4, "more connections without a hello were held than the cap"
        t0 = time.monotonic()
        held = [s for s in socks if s not in early]
        assert all(chainwire.closed_by_peer(s, HELLO_TIMEOUT_S + 10) for s in held)
        assert time.monotonic() - t0 < HELLO_TIMEOUT_S + 10
    finally:
        for s in socks:
            s.close()


async def _call(address: str, tls, method: str, request) -> grpc.StatusCode:
    async with ScClient(address, tls) as c:
        try:
            await getattr(c.stub, method)(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_rpcs_are_open_only_to_their_roles(lab: ScLab) -> None:
    head = run(chain_of(lab)).nodes[0]
    seed = sc_pb2.TransferRequest(
        op_id="evil", kind=sc_pb2.TransferRequest.SEED, shard="9:0-1024",
        payload=b'{"ports": [[[13323780472832, 13323780538368]], []]}', from_scg="scg9",
    )  # fmt: skip
    release = sc_pb2.ReleaseBatch(items=[sc_pb2.ReleaseItem(flow=sc_pb2.Flow(tenant_id=7))])
    scale = sc_pb2.ScaleRequest(op_id="x", shard="7:0-1024", target_scg="scg2")
    certs = lab.certs
    cases = [
        (certs.files("admin", "lab-admin"), "Transfer", seed, grpc.StatusCode.PERMISSION_DENIED),
        (certs.files("fm", "fm-x"), "Transfer", seed, grpc.StatusCode.PERMISSION_DENIED),
        (certs.files("pp", "pp-x"), "Release", release, grpc.StatusCode.PERMISSION_DENIED),
        (certs.files("pp", "pp-x"), "Scale", scale, grpc.StatusCode.PERMISSION_DENIED),
        (certs.files("sc", "sc-x"), "Scale", scale, grpc.StatusCode.PERMISSION_DENIED),
        (certs.files("fm", "fm-x"), "Inspect", sc_pb2.InspectRequest(), grpc.StatusCode.OK),
    ]
    for tls, method, request, want in cases:
        assert run(_call(head.address, tls, method, request)) == want, (tls.cert.name, method)
    info = run(inspect(head.address, lab.client_tls))
    assert [s.id for s in info.shards] == ["7:0-1024"], "a refused Transfer left a shard"

    # Without a certificate of the lab CA the TLS handshake fails.
    async def anonymous() -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(certs.ca.cert_path.read_bytes())
        async with grpc.aio.secure_channel(head.address, creds) as ch:
            call = ch.unary_unary("/cyberstar.sc.v1.ServiceComputing/Inspect")
            try:
                await call(b"", timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert run(anonymous()) == grpc.StatusCode.UNAVAILABLE


def test_a_huge_compute_batch_is_refused_and_the_head_keeps_its_place(lab: ScLab) -> None:
    head = run(chain_of(lab)).nodes[0]
    flow = sc_pb2.Flow(tenant_id=7, ingress_port=1, src_addr=0x0A000001, dst_addr=0x5DB8D801,
                       protocol=6, src_port=1, dst_port=443)  # fmt: skip
    huge = sc_pb2.RuleBatch(requests=[sc_pb2.RuleRequest(request_id=i, flow=flow)
                                      for i in range(150_000)])  # fmt: skip
    t0 = time.monotonic()
    assert run(_call(head.address, lab.client_tls, "Compute", huge)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert time.monotonic() - t0 < 5
    one = sc_pb2.RuleBatch(requests=[sc_pb2.RuleRequest(request_id=1, flow=flow)])

    async def compute() -> sc_pb2.RuleReplyBatch:
        async with ScClient(head.address, lab.client_tls) as c:
            return await c.stub.Compute(one, timeout=10)

    assert run(compute()).replies[0].status.code == sc_pb2.OK
    info = run(inspect(head.address, lab.client_tls))
    assert info.role == "head" and info.counters["lease_lost"] == 0


async def _garbage(address: str, tls, n: int) -> list[grpc.StatusCode]:
    from cyberstar.tls import channel_credentials

    codes = []
    async with grpc.aio.secure_channel(address, channel_credentials(tls)) as ch:
        call = ch.unary_unary("/cyberstar.sc.v1.ServiceComputing/Compute")
        for i in range(n):
            try:
                await call(b"\xff\xff\xff" + bytes([i]), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
    return codes


def test_garbage_calls_are_refused_and_logged_once_per_peer(lab: ScLab) -> None:
    head = run(chain_of(lab)).nodes[0]
    log = lab.nodes[head.id].log
    start = log.stat().st_size
    refused = run(inspect(head.address, lab.client_tls)).counters["refused_calls"]
    codes = run(_garbage(head.address, lab.client_tls, 20))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 20
    info = run(inspect(head.address, lab.client_tls))
    assert info.counters["refused_calls"] == refused + 20
    written = log.read_text()[start:]
    assert "Traceback" not in written
    # Once a minute per peer: earlier tests' refusals may already have used this minute's line.
    assert len(re.findall(r"bad request from 127\.0\.0\.1", written)) <= 1, written
    assert re.search(r"bad request from 127\.0\.0\.1: \w+", log.read_text())


def _serve(config: dict, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess:
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "cyberstar.cli", "sc", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_taken_port_is_refused_naming_the_address(lab: ScLab, tmp_path) -> None:
    """The holder is a gRPC server with gRPC's defaults (SO_REUSEPORT on), as an SC node of
    the unhardened code was: a second node used to bind next to it and take half its calls."""
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import grpc, time\nfrom concurrent import futures\n"
         "s = grpc.server(futures.ThreadPoolExecutor(1))\n"
         f"s.add_insecure_port('127.0.0.1:{port}')\ns.start()\nprint('up', flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "up"
        config = lab.node_config("intruder", "scg1")
        config["listen"] = f"127.0.0.1:{port}"
        proc = _serve(config, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "in use" in proc.stderr, proc.stderr


def test_etcd_unreachable_is_named(lab: ScLab, tmp_path) -> None:
    config = lab.node_config("lonely", "scg9")
    dead = free_port()
    config["etcd"]["endpoints"] = [f"127.0.0.1:{dead}"]
    t0 = time.monotonic()
    proc = _serve(config, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"etcd at 127.0.0.1:{dead} does not answer" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 40


def test_plaintext_must_be_asked_for_and_stay_on_loopback(lab: ScLab, tmp_path) -> None:
    config = lab.node_config("plain", "scg9")
    del config["tls"]
    proc = _serve(config, tmp_path)
    assert proc.returncode == 2 and "missing key 'tls'" in proc.stderr, proc.stderr
    config["plaintext"] = True
    config["listen"] = f"{_host_address()}:{free_port()}"
    proc = _serve(config, tmp_path)
    assert proc.returncode == 2 and "not a loopback address" in proc.stderr, proc.stderr


def test_plaintext_metrics_stay_on_loopback(lab: ScLab, tmp_path) -> None:
    config = lab.node_config("plainm", "scg9")
    del config["tls"]
    config["plaintext"] = True
    config["metrics"] = f"{_host_address()}:{free_port()}"
    proc = _serve(config, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "metrics" in proc.stderr and "not a loopback address" in proc.stderr, proc.stderr


def test_metrics_are_https_wanting_a_client_certificate(tmp_path) -> None:
    """The lab scrapes every SC node's /metrics across its management network: a node that
    has TLS serves them only to a client with a certificate of the CA, as its gRPC."""
    with ScLab(TENANTS, workdir=tmp_path, lease_ttl_s=3) as lab:
        config = lab.node_config("solo", "scg1")
        config["metrics"] = f"127.0.0.1:{free_port()}"
        node = ScProcess(config, lab.workdir)
        lab.nodes[node.node_id] = node
        node.start()
        host, _, port = config["metrics"].rpartition(":")
        wait_until(lambda: _listening(host, int(port)), 30, "the metrics endpoint to listen")
        url = f"https://{config['metrics']}/metrics"
        tls = lab.client_tls
        admin = ssl.create_default_context(cafile=str(tls.ca))
        admin.load_cert_chain(str(tls.cert), str(tls.key))
        # Alone in tenant 7's home group: the node heads its chain and claims the tenant's
        # shard (all of its slots).
        labels = 'node="solo",scg="scg1"'
        wait_until(
            lambda: f'cyberstar_sc_shard_connections{{{labels},shard="7:' in _get(url, admin),
            30, "the node to report tenant 7's shard",
        )  # fmt: skip
        assert f"cyberstar_sc_head{{{labels}}} 1" in _get(url, admin)
        stranger = ssl.create_default_context(cafile=str(tls.ca))  # no client certificate
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            _get(url, stranger)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _get(url: str, context: ssl.SSLContext) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        return resp.read().decode()


def _host_address() -> str:
    """An address of this host that is not loopback (a documentation one if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "192.0.2.10"


def test_half_open_grpc_connections_are_closed(lab: ScLab) -> None:
    """Hundreds of connections that never finish the TLS handshake are dropped after the
    handshake timeout (10 s); the unhardened node kept them for ever."""
    head = run(chain_of(lab)).nodes[0]
    host, _, port = head.address.rpartition(":")
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(300)]
    try:
        t0 = time.monotonic()
        closed = [chainwire.closed_by_peer(s, 25) for s in socks]
        assert all(closed), f"{closed.count(False)} half-open connections still open"
        assert time.monotonic() - t0 < 25
    finally:
        for s in socks:
            s.close()
    assert run(inspect(head.address, lab.client_tls)).role == "head"
