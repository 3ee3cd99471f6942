"""A single-machine SC lab: a private etcd and SC node processes on loopback.

Used by the tests, the benchmarks and anyone trying SC on one machine. Everything binds to
127.0.0.1 on free ports, lives in a temporary directory, and is torn down by `close()` (also
on errors: use the context managers). Every channel is mutual TLS with certificates of a lab CA
made in that directory (`lab.certs`), etcd's included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cyberstar.lab.certs import LabCerts
from cyberstar.lab.procs import LabError, free_port, terminate, wait_port
from cyberstar.sc.client import ReleaseKey, Request, ScClient
from cyberstar.sc.coord import EtcdConfig
from cyberstar.sc.flows import FlowKey, Packet
from cyberstar.sc.pool import AddressPool
from cyberstar.subprocs import tied_to_parent
from cyberstar.tls import TlsFiles

ETCD_BIN = "etcd"


class LocalEtcd:
    """`etcd` on loopback with random ports and a temporary data directory; clients and the
    (single) peer speak mutual TLS with the lab CA's certificates."""

    def __init__(self, workdir: Path, certs: LabCerts, extra: list[str] | None = None) -> None:
        if shutil.which(ETCD_BIN) is None:
            raise LabError("etcd is not installed (Debian package etcd-server)")
        self.certs = certs
        self.client_port = free_port()
        peer_port = free_port()
        self.dir = workdir / "etcd"
        self.log = workdir / "etcd.log"
        url = f"https://127.0.0.1:{self.client_port}"
        peer = f"https://127.0.0.1:{peer_port}"
        tls = certs.files("etcd", "etcd")
        cmd = [ETCD_BIN, "--name", "lab", "--data-dir", str(self.dir),
               "--listen-client-urls", url, "--advertise-client-urls", url,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"lab={peer}", "--log-level", "warn",
               "--cert-file", str(tls.cert), "--key-file", str(tls.key),
               "--trusted-ca-file", str(tls.ca), "--client-cert-auth",
               "--peer-cert-file", str(tls.cert), "--peer-key-file", str(tls.key),
               "--peer-trusted-ca-file", str(tls.ca), "--peer-client-cert-auth",
               *(extra or [])]  # fmt: skip
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                tied_to_parent(cmd), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_port(self.client_port, self.proc, 20, "etcd", self.log)

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.client_port)

    def config(self, role: str, name: str) -> EtcdConfig:
        """How process `name` (of `role`) reaches this etcd."""
        return EtcdConfig((self.endpoint,), self.certs.files(role, name))

    def section(self, role: str, name: str) -> dict:
        """The `etcd:` section of a YAML config for process `name`."""
        return {
            "endpoints": [f"127.0.0.1:{self.client_port}"],
            "tls": self.certs.section(role, name),
        }

    def close(self) -> None:
        terminate(self.proc)


class ScProcess:
    """One `cyberstar sc serve` process."""

    def __init__(self, config: dict, workdir: Path) -> None:
        self.config = config
        self.node_id = config["node_id"]
        self.address = config["listen"]
        self.path = workdir / f"{self.node_id}.yaml"
        self.log = workdir / f"{self.node_id}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                tied_to_parent(
                    [
                        sys.executable,
                        "-m",
                        "cyberstar.cli",
                        "-v",
                        "sc",
                        "serve",
                        "--config",
                        str(self.path),
                    ]
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        port = int(self.address.rsplit(":", 1)[1])
        wait_port(port, self.proc, 30, f"SC node {self.node_id}", self.log)

    def kill(self) -> None:
        """SIGKILL: the node dies without a word, as a crashed machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ScLab:
    """etcd + SC groups of processes. `add_scg("scg1", 3)` starts a group of three nodes."""

    def __init__(self, tenants: list[dict], lease_ttl_s: int = 2, workdir: Path | None = None):
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cyberstar-sc-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.tenants = tenants
        self.lease_ttl_s = lease_ttl_s
        self.certs = LabCerts(workdir / "certs")
        self.etcd: LocalEtcd | None = None
        self.nodes: dict[str, ScProcess] = {}

    def __enter__(self) -> ScLab:
        try:
            self.etcd = LocalEtcd(self.workdir, self.certs)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client_tls(self) -> TlsFiles:
        """A certificate for tests and tools talking to the SC nodes (role admin)."""
        return self.certs.files("admin", "lab-admin")

    def etcd_config(self, role: str = "admin", name: str = "lab-admin") -> EtcdConfig:
        assert self.etcd is not None
        return self.etcd.config(role, name)

    def node_config(self, node_id: str, scg: str) -> dict:
        assert self.etcd is not None
        return {
            "node_id": node_id,
            "listen": f"127.0.0.1:{free_port()}",
            "tls": self.certs.section("sc", node_id),
            "etcd": self.etcd.section("sc", node_id),
            "scg": scg,
            "lease_ttl_s": self.lease_ttl_s,
            "tenants": self.tenants,
        }

    def start_node(self, node_id: str, scg: str) -> ScProcess:
        node = ScProcess(self.node_config(node_id, scg), self.workdir)
        self.nodes[node_id] = node
        node.start()
        return node

    def restart_node(self, node_id: str) -> ScProcess:
        old = self.nodes[node_id]
        old.stop()
        node = ScProcess(old.config, self.workdir)
        self.nodes[node_id] = node
        node.start()
        return node

    def add_scg(self, scg: str, size: int = 3) -> list[ScProcess]:
        return [self.start_node(f"{scg}-{i}", scg) for i in range(size)]

    def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
        if self.etcd is not None:
            self.etcd.close()
        if self._tmp is not None:
            self._tmp.cleanup()


class SnatLoad:
    """Keeps asking for new SNAT'd flows (and releasing some) through a router, and checks
    what FM would see: every request ends OK, and no element is held by two live flows."""

    def __init__(self, router, tenant_id: int, batch: int = 20, release_ratio: float = 0.5):
        self.router = router
        self.tenant_id = tenant_id
        self.batch = batch
        self.release_ratio = release_ratio
        self.live: dict = {}  # forward key → (slot, keys, element)
        self.held: dict[int, object] = {}  # element → forward key
        self.ok = 0
        self.failed: list[str] = []
        self.released = 0
        self._next = 0
        self._stop = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.progress = asyncio.Condition()
        self.timeline: list[tuple[float, int]] = []  # (monotonic time, flows answered OK)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self.task is not None:
            await self.task

    async def wait_for_more(self, n: int, timeout: float) -> None:
        target = self.ok + n
        async with self.progress:
            await asyncio.wait_for(self.progress.wait_for(lambda: self.ok >= target), timeout)

    def _key(self, i: int):
        # 10.x.y.z clients to a handful of servers, fresh source ports
        return FlowKey(6, 0x0A000000 + i // 50000, 0x5DB8D800 + i % 4, 1024 + i % 50000, 443)

    async def _run(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            reqs = []
            for _ in range(self.batch):
                self._next += 1
                key = self._key(self._next)
                reqs.append(Request(self._next, Packet(self.tenant_id, 1, 0, key)))
            replies = await self.router.compute(reqs)
            for req, rep in zip(reqs, replies, strict=True):
                if rep.status.code != 0:
                    self.failed.append(f"{req.packet.key}: {rep.status.message}")
                    continue
                fwd = rep.rules[0]
                if fwd.action != "snat":
                    self.failed.append(f"{req.packet.key}: unexpected action {fwd.action}")
                    continue
                elem = fwd.params["src_addr"] << 16 | fwd.params["src_port"]
                if elem in self.held:
                    self.failed.append(f"element {elem:#x} handed out twice")
                    continue
                keys = [rule_key(r) for r in rep.rules]
                self.live[req.packet.key] = (rep.slot, keys, elem)
                self.held[elem] = req.packet.key
                self.ok += 1
            self.timeline.append((time.monotonic(), self.ok))
            async with self.progress:
                self.progress.notify_all()
            victims = [k for k in self.live if rng.random() < self.release_ratio]
            if victims:
                await self.release(victims)

    async def release(self, keys) -> None:
        items = []
        for k in keys:
            slot, rule_keys, _ = self.live[k]
            items += [ReleaseKey(self.tenant_id, rk, slot) for rk in rule_keys]
        done = await self.router.release(items)
        if done.failed:
            self.failed.append(f"release: {done.reply.status.message}")
            return
        for k in keys:
            _, _, elem = self.live.pop(k)
            del self.held[elem]
            self.released += 1


def rule_key(rule) -> FlowKey:
    """The 5-tuple of a flow_table rule SC returned (`sc_pb2.Rule`): the key it is released by."""
    m = {f.name: f.value for f in rule.match}
    return FlowKey(m["protocol"], m["src_addr"], m["dst_addr"], m["src_port"], m["dst_port"])


async def cluster_census(addresses: list[str], tls: TlsFiles) -> dict[str, tuple]:
    """Per node: (free elements, held elements as a list, shards) from Inspect."""
    out = {}
    for address in addresses:
        async with ScClient(address, tls) as client:
            info = await client.inspect(elements=True)
        free: list[int] = []
        held: list[int] = []
        shards = []
        for s in info.shards:
            d = json.loads(s.detail_json)
            for pool in d["free"].values():
                free += list(AddressPool.decode(pool))
            held += d["held"]
            shards.append((s.id, s.state, s.connections))
        out[info.node_id] = (free, held, shards, info)
    return out
