"""Coordination through etcd: the key layout, membership leases, chains, the shard map.

Key layout (all under a prefix, `/cyberstar` by default; values are JSON):

| key | value (writer) |
|---|---|
| `members/sc/<node_id>` | `{"scg", "address", "chain", "compute", "incarnation"}` on its lease |
| `members/fm/<id>`, `members/pp/<id>` | `{"address", ...}` on a lease (written by FM) |
| `fm/leader` | leader's node id on its lease; create-if-absent election (FM) |
| `scg/<scg>/chain` | `{"epoch", "nodes": [{"id", "address", "chain", "compute", ...}]}` (locker) |
| `scg/<scg>/lock` | etcd lock: whoever holds it may rewrite the chain (SC nodes) |
| `tenants/<tenant>/claimed` | the SCG that created the tenant's first shard (its head) |
| `shards/<tenant>/<lo>-<hi>` | `{"scg"}`: the SCG owning slots [lo, hi) of the tenant (SCG heads) |
| `scale/<op_id>` | `{"phase", "kind", "shard", "source", "target", "shards", "seconds"}` (source) |

A node that dies stops refreshing its lease, its member key vanishes, and the node of its SCG
that takes the lock first rewrites the chain without it (epoch + 1). A node that (re)starts
registers with a new incarnation and is appended at the tail; its predecessor sends it a
snapshot before it counts as a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc

from cyberstar.sc.flows import ShardId
from cyberstar.tls import TlsFiles, aio_channel, is_local, parse_tls, secure_or_plain_channel
from cyberstar.yamlconf import Section

log = logging.getLogger(__name__)


# -- connecting ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how to talk to it (the `etcd` section of SC.yaml and FM.yaml):

    ```yaml
    etcd:
      endpoints: [127.0.0.1:2379]     # the first is used (aetcd speaks to one)
      tls: {ca: ca.crt, cert: sc1a.crt, key: sc1a.key}   # or plaintext: true (loopback only)
      user: sc                        # optional etcd authentication, with password_file
      password_file: etcd-password    # (with client-cert-auth etcd takes the certificate's
                                      # common name as the user instead)
    ```
    """

    endpoints: tuple[tuple[str, int], ...]
    tls: TlsFiles | None
    user: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        host, port = self.endpoints[0]
        return f"{host}:{port}"


def parse_etcd(top: Section, base: Path) -> EtcdConfig:
    if top.has("etcd") and isinstance(top.data["etcd"], list):
        raise top.error(
            "etcd",
            "expected a section {endpoints: [HOST:PORT], tls: {ca, cert, key}} (or plaintext: "
            "true instead of tls, loopback only); found a bare list of endpoints",
        )
    sec = top.section("etcd")
    endpoints = sec.endpoints("endpoints")
    tls = parse_tls(sec, base, "etcd")
    user = sec.str("user", None)
    password = None
    if sec.has("password_file"):
        path = base / sec.str("password_file")
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise sec.error("password_file", f"cannot read {path}: {exc.strerror}") from None
        if user is None:
            raise sec.error("password_file", "a password needs a user")
    elif user is not None:
        raise sec.error("user", "a user needs a password_file")
    sec.done()
    config = EtcdConfig(tuple(endpoints), tls, user, password)
    if tls is None:
        for host, port in endpoints:
            if not is_local(f"{host}:{port}"):
                raise sec.error(
                    "endpoints",
                    f"{host}:{port} is not local, and etcd is plaintext: configure tls, or use "
                    "127.0.0.1",
                )
    return config


class EtcdClient(aetcd.Client):
    """aetcd's client over mutual TLS (aetcd itself dials plaintext only)."""

    def __init__(self, config: EtcdConfig, timeout: float | None = None) -> None:
        host, port = config.endpoints[0]
        super().__init__(host=host, port=port, username=config.user, password=config.password,
                         timeout=timeout)  # fmt: skip
        self._tls = config.tls
        self.address = config.address

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            self.channel = aio_channel(self.address, self._tls, list(self._options.items()),
                                       "etcd")  # fmt: skip
            rpc = aetcd.rpc
            if self._username is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                except rpc.AioRpcError as exc:
                    raise EtcdError(
                        f"etcd at {self.address} refused user {self._username!r}: "
                        f"{exc.details()} (check user and password_file)"
                    ) from None
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


class EtcdError(ConnectionError):
    """etcd cannot be reached or refused us; the message names etcd and its address."""


async def connect(config: EtcdConfig, what: str, timeout: float = 10.0) -> EtcdClient:
    """A connected client; raises EtcdError naming etcd when it does not answer in time."""
    client = EtcdClient(config)
    try:
        await client.connect()
        # Status needs no permission on any key: it tests reachability, TLS and the user.
        status = aetcd.rpc.StatusRequest()
        await client.maintenancestub.Status(status, timeout=timeout, metadata=client.metadata)
    except EtcdError:
        raise
    except Exception as exc:
        with contextlib.suppress(Exception):
            await client.close()
        reason = reason_of(exc)
        raise EtcdError(
            f"{what}: etcd at {config.address} does not answer ({reason}); is etcd running "
            "there, and do the etcd endpoints, tls and user settings match it?"
        ) from None
    return client


def reason_of(exc: BaseException) -> str:
    """What went wrong, in one line (a gRPC error's details, else the exception)."""
    details = getattr(exc, "details", None)
    if callable(details):
        return str(details())
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Keys:
    """The etcd key layout, one place for every process that reads or writes it."""

    def __init__(self, prefix: str = "/cyberstar") -> None:
        self.prefix = prefix.rstrip("/")

    def _k(self, *parts: str) -> bytes:
        return "/".join((self.prefix, *parts)).encode()

    def members(self, kind: str = "sc") -> bytes:
        return self._k("members", kind, "")

    def member(self, node_id: str, kind: str = "sc") -> bytes:
        return self._k("members", kind, node_id)

    def fm_leader(self) -> bytes:
        return self._k("fm", "leader")

    def chains(self) -> bytes:
        return self._k("scg", "")

    def chain(self, scg: str) -> bytes:
        return self._k("scg", scg, "chain")

    def chain_lock(self, scg: str) -> bytes:
        return self._k("scg", scg, "lock")

    def claim(self, tenant_id: int) -> bytes:
        return self._k("tenants", str(tenant_id), "claimed")

    def shards(self, tenant_id: int | None = None) -> bytes:
        return self._k("shards", "") if tenant_id is None else self._k("shards", str(tenant_id), "")

    def shard(self, sid: ShardId) -> bytes:
        return self._k("shards", str(sid.tenant_id), f"{sid.lo}-{sid.hi}")

    def shard_of_key(self, key: bytes) -> ShardId:
        tenant, rng = key.decode().rsplit("/", 2)[-2:]
        return ShardId.parse(f"{tenant}:{rng}")

    def scale(self, op_id: str = "") -> bytes:
        return self._k("scale", op_id)


@dataclass(frozen=True)
class ChainNode:
    id: str
    address: str  # gRPC (FM, other SCGs)
    incarnation: str
    chain: str = ""  # replication listener (its predecessor connects to it)
    compute: str = ""  # compute link (FM's Compute without gRPC; "" = gRPC only)


@dataclass(frozen=True)
class Chain:
    scg: str
    epoch: int
    nodes: tuple[ChainNode, ...]

    @property
    def head(self) -> ChainNode | None:
        return self.nodes[0] if self.nodes else None

    def to_json(self) -> bytes:
        nodes = [
            {
                "id": n.id,
                "address": n.address,
                "chain": n.chain,
                "compute": n.compute,
                "incarnation": n.incarnation,
            }
            for n in self.nodes
        ]
        return json.dumps({"epoch": self.epoch, "nodes": nodes}).encode()


async def watch_prefix(
    client: aetcd.Client,
    prefix: bytes,
    on_change: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
) -> None:
    """Call `on_change` once now and after every change under `prefix`, until `stop`."""
    while not stop.is_set():
        try:
            watch = await client.watch_prefix(prefix)
            try:
                await on_change()
                async for _event in watch:
                    await on_change()
                    if stop.is_set():
                        break
            finally:
                with contextlib.suppress(Exception):
                    await watch.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("etcd watch on %s failed (%s); retrying", prefix.decode(), exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


# A loop that has not answered for this long (or the lease's TTL, if longer) is taken as stuck.
STALL_LIMIT_S = 10.0


class LeaseKeeper:
    """Keeps an etcd lease alive from a thread of its own (its own gRPC channel), so that a
    busy or briefly stalled event loop does not let the lease lapse and get a live node taken
    for dead. It stops refreshing once the owner has not `beat()` for `stall_limit_s`: a node
    whose loop is really stuck is still declared dead, after `stall_limit_s` + the TTL.

    `expired` is set when etcd says the lease is gone (the owner must re-register)."""

    def __init__(self, config: EtcdConfig, lease_id: int, ttl_s: int, stall_limit_s: float,
                 what: str) -> None:  # fmt: skip
        self.config = config
        self.lease_id = lease_id
        self.interval_s = max(ttl_s / 5, 0.2)
        self.stall_limit_s = stall_limit_s
        self.what = what
        self.expired = threading.Event()
        self._stop = threading.Event()
        self._last_beat = time.monotonic()
        self._metadata: tuple | None = None
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        channel = secure_or_plain_channel(self.config.address, self.config.tls, [], "etcd")
        stalled = failing = False
        try:
            while not self._stop.wait(self.interval_s):
                quiet = time.monotonic() - self._last_beat
                if quiet > self.stall_limit_s:
                    if not stalled:
                        log.error(
                            "%s: event loop stuck for %.1f s: letting the lease lapse",
                            self.what,
                            quiet,
                        )
                    stalled = True
                    continue
                stalled = False
                try:
                    ttl = self._refresh(channel)
                except Exception as exc:  # etcd down or slow: try again next interval
                    self._metadata = None  # a token etcd forgot (a restart) is asked for again
                    if not failing:
                        log.warning("%s: lease refresh at etcd %s failed: %s", self.what,
                                    self.config.address, reason_of(exc))  # fmt: skip
                    failing = True
                    continue
                if failing:
                    log.info("%s: lease refresh works again", self.what)
                failing = False
                if ttl <= 0:
                    self.expired.set()
                    return
        finally:
            channel.close()

    def _refresh(self, channel: grpc.Channel) -> int:
        rpc = aetcd.rpc
        if self.config.user is not None and self._metadata is None:
            request = rpc.AuthenticateRequest(name=self.config.user, password=self.config.password)
            auth = rpc.AuthStub(channel).Authenticate(request, timeout=5)
            self._metadata = (("token", auth.token),)
        metadata = self._metadata
        keepalive = iter([rpc.LeaseKeepAliveRequest(ID=self.lease_id)])
        timeout = max(self.interval_s, 2.0)
        replies = rpc.LeaseStub(channel).LeaseKeepAlive(keepalive, timeout=timeout,
                                                        metadata=metadata)  # fmt: skip
        return next(replies).TTL


# -- reading what is stored under our prefix ------------------------------------------------------
class BadValues:
    """Values under our prefix that do not parse are skipped, never retried in a loop: each
    (key, revision) is logged once and counted."""

    MEMORY = 10_000

    def __init__(self) -> None:
        self._seen: set[tuple[bytes, int]] = set()
        self.count = 0

    def skip(self, kv: Any, problem: str) -> None:
        mark = (bytes(kv.key), int(getattr(kv, "mod_revision", 0)))
        if mark in self._seen:
            return
        if len(self._seen) >= self.MEMORY:
            self._seen.clear()
        self._seen.add(mark)
        self.count += 1
        key = kv.key.decode(errors="replace")
        log.error("etcd %s: skipping a malformed value (%s): %.120r", key, problem, bytes(kv.value))


def _json_object(raw: bytes, fields: dict[str, type]) -> dict:
    """A JSON object with (at least) these fields of these types; ValueError otherwise."""
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError("expected a JSON object")
    for name, kind in fields.items():
        if not isinstance(d.get(name), kind) or isinstance(d.get(name), bool):
            raise ValueError(f"field {name!r}: expected {kind.__name__}")
    return d


def parse_chain(scg: str, raw: bytes) -> Chain:
    d = _json_object(raw, {"epoch": int, "nodes": list})
    nodes = []
    for n in d["nodes"]:
        if not isinstance(n, dict):
            raise ValueError("a chain node is not an object")
        fields = {k: n.get(k) for k in ("id", "address", "incarnation", "chain")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise ValueError("a chain node needs string id, address, incarnation, chain")
        compute = n.get("compute", "")  # absent in chains written before the compute link
        if not isinstance(compute, str):
            raise ValueError("a chain node's compute address must be a string")
        nodes.append(ChainNode(**fields, compute=compute))
    return Chain(scg, d["epoch"], tuple(nodes))


def parse_member(raw: bytes) -> dict:
    d = _json_object(raw, {"scg": str, "address": str, "incarnation": str})
    for key in ("chain", "compute"):
        if not isinstance(d.get(key, ""), str):
            raise ValueError(f"field {key!r}: expected str")
    return d


def parse_owner(raw: bytes) -> str:
    return _json_object(raw, {"scg": str})["scg"]


async def read_chains(client: aetcd.Client, keys: Keys, bad: BadValues) -> dict[str, Chain]:
    chains = {}
    for kv in await client.get_prefix(keys.chains()):
        parts = kv.key.decode(errors="replace").split("/")
        if parts[-1] == "chain":
            try:
                chains[parts[-2]] = parse_chain(parts[-2], kv.value)
            except ValueError as exc:
                bad.skip(kv, str(exc))
    return chains


async def read_shard_map(client: aetcd.Client, keys: Keys, bad: BadValues) -> dict[ShardId, str]:
    out = {}
    for kv in await client.get_prefix(keys.shards()):
        try:
            out[keys.shard_of_key(kv.key)] = parse_owner(kv.value)
        except (ValueError, UnicodeDecodeError) as exc:
            bad.skip(kv, str(exc))
    return out
