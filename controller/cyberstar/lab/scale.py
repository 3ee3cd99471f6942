"""A PP node filled with many flows, as FM fills it, and what it costs: the harness of
`bench/scale.py` and of the suite's scale test (which runs it small).

The node is a real agent (`cyberstar pp serve`) on veths; the flows are FM-shaped flow-table
entries (a connection's forward and return rule, FM's cookie as metadata, an idle timeout),
written through P4Runtime in batches of 1000. Requests are built before the clock starts and
sent as bytes, so the rates are the node's (and gRPC's), not the harness's protobuf code.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from finsy.proto import p4r

from cyberstar import netns
from cyberstar.codegen.p4info import build_p4info
from cyberstar.fm.cache import connection_cookie
from cyberstar.lab.certs import LabCerts
from cyberstar.lab.pp_process import CYBERSTAR, PpNode, start_agent
from cyberstar.lab.procs import free_port
from cyberstar.lab.sc import LocalEtcd
from cyberstar.lab.wait import wait_until
from cyberstar.p4rt import wire
from cyberstar.p4rt.arbitration import election_int
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.paths import REPO_ROOT
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.subprocs import tied_to_parent

BATCH = 1000
FLOW = PIPELINE.table("flow_table")
SNAT, DNAT = PIPELINE.action("snat"), PIPELINE.action("dnat")


def cookie_of(conn: int) -> bytes:
    """FM's cookie of connection `conn` (slot `conn` mod 1024)."""
    return connection_cookie(conn, conn % 1024)


def flow_rule(i: int, idle_timeout_ns: int) -> bytes:
    """Rule `i` as a serialized Entity: even rules are a connection's forward SNAT rule, odd
    ones its return DNAT rule, both with the connection's cookie."""
    conn = i // 2
    src = 0x0A000000 + conn // 60000  # 10.x.y.z clients, 60 000 ports each
    sport = 1024 + conn % 60000
    public = 20000 + conn % 40000
    cookie = cookie_of(conn)
    if i % 2 == 0:
        match, action = (7, src, 0xC0A80005, 6, sport, 80), SNAT.id
        params: tuple[int, ...] = (0xCB007109 + conn // 40000, public, 2)
    else:
        match, action = (7, 0xC0A80005, 0xCB007109 + conn // 40000, 6, 80, public), DNAT.id
        params = (src, sport, 1)
    return _WRITER.entity(match, action, params, idle_timeout_ns, cookie)


_WRITER = wire.ExactEntryWriter(
    FLOW.id,
    list(range(1, len(FLOW.key) + 1)),
    {a.id: list(range(1, len(a.params) + 1)) for a in (SNAT, DNAT)},
)


def write_requests(start: int, count: int, election_id: int, idle_timeout_ns: int,
                   kind: int = p4r.Update.INSERT) -> list[bytes]:  # fmt: skip
    """Serialized WriteRequests (device 1) of rules start..start+count, BATCH per request."""
    head = wire.tag(1, 0) + wire.varint(1)  # device_id
    head += wire.field(3, wire.tag(1, 0) + wire.varint(election_id >> 64)
                       + wire.tag(2, 0) + wire.varint(election_id & (2**64 - 1)))  # fmt: skip
    out = []
    for b in range(start, start + count, BATCH):
        kind_field = wire.tag(1, 0) + wire.varint(kind)  # Update.type
        updates = [
            wire.field(4, kind_field + wire.field(2, flow_rule(i, idle_timeout_ns)))
            for i in range(b, min(b + BATCH, start + count))
        ]
        out.append(head + b"".join(updates))
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def map_memory(name: str) -> int | None:
    """The kernel's memory for a BPF map by name (bpftool's memlock), if bpftool says it."""
    try:
        out = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                             timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    sizes = [m.get("bytes_memlock") for m in json.loads(out or "[]") if m.get("name") == name]
    return max((s for s in sizes if s), default=None)


@dataclass
class ScaleNode:
    node: PpNode
    client: P4RuntimeClient
    written: int = 0

    @property
    def pid(self) -> int:
        return self.node.proc.pid

    def fill(self, upto: int, idle_timeout_ns: int) -> tuple[int, float]:
        """Insert rules written..upto; (rules, seconds) of the Writes alone."""
        requests = write_requests(self.written, upto - self.written, self.client.election_id,
                                  idle_timeout_ns)  # fmt: skip
        send = self.client.channel.unary_unary("/p4.v1.P4Runtime/Write")
        t0 = time.perf_counter()
        for req in requests:
            send(req, timeout=60)
        seconds = time.perf_counter() - t0
        n, self.written = upto - self.written, upto
        return n, seconds

    def read_all(self) -> tuple[int, float]:
        """Read the whole flow table; (entries, seconds)."""
        t0 = time.perf_counter()
        n = 0
        entity = p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))
        for resp in self.client.read_stream([entity]):
            n += len(resp.entities)
        return n, time.perf_counter() - t0

    def retake(self) -> None:
        """Be primary again after an FM took the node and left: arbitrate with the highest
        election id the node has seen, which its last notification names."""
        note = None
        while not self.client.arbitrations.empty():
            note = self.client.arbitrations.get_nowait()
        if note is None or note.status.code == 0:
            return
        self.client.arbitrate(election_int(note.election_id))
        wait_until(lambda: self._primary_again(), 10, "the bench to be primary again")

    def _primary_again(self) -> bool:
        while not self.client.arbitrations.empty():
            if self.client.arbitrations.get_nowait().status.code == 0:
                return True
        return False

    def read_back(self) -> list[bytes]:
        """Every flow entry, serialized in canonical form (for comparison)."""
        entity = p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))
        return [e.SerializeToString(deterministic=True)
                for resp in self.client.read_stream([entity]) for e in resp.entities]  # fmt: skip


@contextmanager
def scale_node(flow_table_size: int, mode: str = "skb") -> Iterator[ScaleNode]:
    """A PP agent whose flow table holds `flow_table_size` entries, with a primary client."""
    with netns.with_pp_ports(f"cs-scale-{os.getpid()}") as ns:
        node = start_agent(ns, ["pp1", "pp2"], mode=mode,
                           extra=["--flow-table-size", str(flow_table_size)])  # fmt: skip
        try:
            client = node.client(election_id=1)
            client.timeout = 60
            client.set_pipeline(build_p4info(PIPELINE), b"")
            yield ScaleNode(node, client)
        finally:
            node.stop()


@dataclass
class Takeover:
    seconds: float  # FM started → FM leads (cache rebuilt, slow path serving)
    rebuild_seconds: float
    connections: int
    rules: int
    rss_bytes: int


@contextmanager
def etcd() -> Iterator[LocalEtcd]:
    with tempfile.TemporaryDirectory(prefix="cyberstar-scale-") as tmp:
        server = LocalEtcd(Path(tmp), LabCerts(Path(tmp) / "certs"))
        try:
            yield server
        finally:
            server.close()


def fm_takeover(node: PpNode, store: LocalEtcd, fm_id: str, timeout: float = 1800
                ) -> Takeover:  # fmt: skip
    """Start an FM for `node`, wait until it leads (it becomes primary and rebuilds its cache
    from the node's flow table), then stop it."""
    with tempfile.TemporaryDirectory(prefix="cyberstar-fm-") as tmp:
        port = free_port()
        token = secrets.token_hex(16)
        (Path(tmp) / "fm-admin.token").write_text(token + "\n")
        config = {
            "fm_id": fm_id,
            "tls": node.certs.section("fm", fm_id),  # the node's CA: FM is its controller
            "etcd": store.section("fm", fm_id),
            "lease_ttl_s": 10,
            "http": {"listen": f"127.0.0.1:{port}", "token_file": "fm-admin.token"},
            "pp_nodes": [{"id": "pp1", "address": node.address, "device_id": node.device_id}],
        }
        https = ssl.create_default_context(cafile=str(node.certs.ca.cert_path))
        path = Path(tmp) / "fm.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (Path(tmp) / "fm.log").open("w")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            tied_to_parent([*CYBERSTAR, "-v", "fm", "serve", "--config", str(path)]),
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )  # fmt: skip
        try:

            def status() -> dict:
                req = urllib.request.Request(
                    f"https://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {token}"}
                )
                try:
                    with urllib.request.urlopen(req, timeout=5, context=https) as r:
                        return json.load(r)
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError((Path(tmp) / "fm.log").read_text()[-2000:]) from None
                    return {}

            wait_until(lambda: status().get("leader"), timeout, "FM to lead", interval=0.2)
            seconds = time.perf_counter() - t0
            st = status()
            return Takeover(seconds, st["cache_rebuild"].get("seconds", 0.0),
                            st["cached_connections"], st["cached_rules"],
                            rss_bytes(proc.pid))  # fmt: skip
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
