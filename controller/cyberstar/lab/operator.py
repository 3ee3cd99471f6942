"""The lab's operator: the elasticity actions a scenario event or the autoscaler triggers,
each timed from the signal to the moment it has taken effect.

Every action returns (and records) a dict with `kind`, `t` (the signal, seconds since the
scenario started) and what was measured; times are taken from the events themselves (a
process listening, FM's status, a PP's own forward counter, the health check's verdict).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from cyberstar.lab.hosts import PpHost
from cyberstar.lab.procs import LabError
from cyberstar.lab.telemetry import parse_prometheus
from cyberstar.lab.topo import LabNet, _parallel

log = logging.getLogger(__name__)


class Operator:
    def __init__(self, net: LabNet, clock: Callable[[], float]) -> None:
        self.net = net
        self.clock = clock
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self._group_locks: dict[str, threading.Lock] = {g: threading.Lock() for g in net.groups}
        self._sc_lock = threading.Lock()
        self.closing = threading.Event()  # the scenario has ended: queued actions give up
        self.joined_order: list[PpHost] = []  # scale-outs, most recent last (for scale-in)

    def record(self, rec: dict) -> dict:
        with self._lock:
            self.records.append(rec)
        return rec

    def _skip(self, rec: dict) -> dict:
        """An action still queued when the scenario ended (a slow machine): not run, and no
        failure of the system either."""
        rec["skipped"] = "the scenario ended before it could run"
        log.warning("%s at %.1f s: %s", rec["kind"], rec["t"], rec["skipped"])
        return self.record(rec)

    def _fail(self, rec: dict, message: str) -> dict:
        rec["error"] = message
        log.warning("%s at %.1f s: %s", rec["kind"], rec["t"], message)
        return self.record(rec)

    # ---- PP ---------------------------------------------------------------------------------

    def pp_packets(self, pp: PpHost) -> tuple[float, float]:
        """The node's own counts (its /metrics): packets received (every verdict), and
        packets forwarded."""
        text = self.net.https(pp.metrics, "/metrics", 2).decode()
        received = forwarded = 0.0
        for name, labels, value in parse_prometheus(text):
            if name == "cyberstar_pp_packets_total":
                received += value
                forwarded += value if ("verdict", "forward") in labels else 0.0
        return received, forwarded

    def pp_forwarded(self, pp: PpHost) -> float:
        return self.pp_packets(pp)[1]

    def pp_scale_out(
        self, group: str | None = None, count: int = 1, reason: str = "scenario"
    ) -> list[dict]:
        """Boot spare nodes, wait for FM to program them, add them to the ECMP group and
        measure when each forwards its first packet. An action waits for the group's previous
        one to finish (`queued_s`)."""
        g = self.net.groups[group or next(iter(self.net.groups))]
        t = self.clock()
        base = {"kind": "pp_scale_out", "t": round(t, 3), "group": g.name, "reason": reason}
        with self._group_locks[g.name]:
            started = self.clock()
            if self.closing.is_set():
                return [self._skip(dict(base))]
            nodes: list[PpHost] = []
            for _ in range(count):
                spare = g.spare(exclude=nodes)
                if spare is None:
                    break
                nodes.append(spare)
            if not nodes:
                return [self._fail(dict(base), "no spare PP node left")]
            recs = [{**base, "node": pp.name, "queued_s": round(started - t, 3)} for pp in nodes]
            jobs = [
                lambda p=p, r=r: self._bring_in(p, r, started)
                for p, r in zip(nodes, recs, strict=True)
            ]
            _parallel(jobs)
            return recs

    def _bring_in(self, pp: PpHost, rec: dict, started: float) -> None:
        """Boot one node, wait for FM to program it, join it to its group, and time its first
        packets; the nodes of one scale-out go through this side by side."""
        try:
            pp.boot()
            booted = self.clock()
            rec["boot_s"] = round(booted - started, 3)
            self.net.join(pp, before=lambda: rec.update(_base=self.pp_packets(pp)))
        except LabError as exc:
            self._fail(rec, str(exc))
            return
        joined = self.clock()
        self.joined_order.append(pp)
        rec["program_s"] = round(joined - booted, 3)
        rec["joined_at"] = round(joined, 3)
        arrived, forwarded = self._first_packets(pp, joined, rec.pop("_base"))
        if arrived is None or forwarded is None:
            self._fail(rec, "the new node received or forwarded nothing within 10 s")
            return
        # when traffic arrives (the paper's measure); its first packets may go through FM's
        # slow path before the node forwards on its own
        rec["join_to_traffic_s"] = round(arrived - joined, 3)
        rec["join_to_forward_s"] = round(forwarded - joined, 3)
        rec["signal_to_traffic_s"] = round(arrived - rec["t"], 3)
        self.record(rec)

    def _first_packets(
        self,
        pp: PpHost,
        since: float,
        base: tuple[float, float],
        timeout: float = 10.0,
        poll_s: float = 0.02,
    ) -> tuple[float | None, float | None]:
        """When the node's counters first moved past `base` (taken before it joined):
        received, forwarded."""
        arrived = forwarded = None
        while self.clock() - since < timeout and forwarded is None:
            received, sent = self.pp_packets(pp)
            now = self.clock()
            if arrived is None and received > base[0]:
                arrived = now
            if sent > base[1]:
                forwarded = now
                arrived = arrived or now
            time.sleep(poll_s)
        return arrived, forwarded

    def pp_scale_in(
        self,
        group: str | None = None,
        node: str | None = None,
        drain_s: float = 10.0,
        reason: str = "scenario",
    ) -> dict:
        g = self.net.groups[
            group or (self.net.pps[node].group if node else next(iter(self.net.groups)))
        ]
        t = self.clock()
        rec: dict = {"kind": "pp_scale_in", "t": round(t, 3), "group": g.name, "reason": reason}
        with self._group_locks[g.name]:
            if self.closing.is_set():
                return self._skip(rec)
            members = g.active
            if node is None:
                recent = [p for p in reversed(self.joined_order) if p in members]
                pp = recent[0] if recent else (members[-1] if members else None)
            else:
                pp = self.net.pps[node]
            if pp is None or pp not in members:
                return self._fail(rec, f"{node or 'no node'} is not a member of {g.name}")
            if len(members) < 2:
                return self._fail(rec, f"{pp.name} is the last member of {g.name}")
            rec["node"] = pp.name
            rec["pinned_at_start"] = g.bonding.pinned_connections(pp)
            forwarded = self.pp_forwarded(pp)

            def drained() -> None:  # what the node forwarded for the connections it kept
                rec["forwarded_while_draining"] = self.pp_forwarded(pp) - forwarded

            result = self.net.leave(pp, drain_s, drained)
            rec.update(result)
            if pp in self.joined_order:
                self.joined_order.remove(pp)
            return self.record(rec)

    def pp_crash(self, node: str) -> dict:
        """Kill the node outright (its daemons and links); wait for the health check to take
        it out of its group."""
        pp = self.net.pps[node]
        t = self.clock()
        rec: dict = {"kind": "pp_crash", "t": round(t, 3), "node": node}
        before = len(self.net.removed)
        crashed = time.monotonic()
        pp.crash()
        while time.monotonic() - crashed < 10:
            removed = [r for r in self.net.removed[before:] if r[1] == node]
            if removed:
                rec["removed_after_s"] = round(removed[0][0] - crashed, 3)
                return self.record(rec)
            time.sleep(0.01)
        return self._fail(rec, "the health check did not remove the node within 10 s")

    # ---- FM ---------------------------------------------------------------------------------

    def fm_failover(self, restart_after_s: float | None = None) -> dict:
        t = self.clock()
        rec: dict = {"kind": "fm_failover", "t": round(t, 3)}
        leader = self.net.fm_leader()
        if leader is None:
            return self._fail(rec, "no FM leads")
        others = [fm for fm in self.net.fms.values() if fm is not leader and fm.running]
        if not others:
            return self._fail(rec, "no standby FM runs")
        rec["killed"] = leader.name
        leader.daemons["fm"].kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = self.net.fm_leader()
            if new is not None:
                rec["new_leader"] = new.name
                rec["failover_s"] = round(self.clock() - t, 3)
                break
            time.sleep(0.02)
        else:
            return self._fail(rec, "no standby took over within 30 s")
        self.record(rec)
        if restart_after_s is not None:
            time.sleep(restart_after_s)
            leader.boot()
            rec["restarted_as_standby"] = round(self.clock(), 3)
        return rec

    # ---- SC ---------------------------------------------------------------------------------

    def _chain_size(self, scg: str) -> int:
        assert self.net.etcd is not None
        tls = self.net.admin_tls  # etcd wants a client certificate of the lab CA
        out = self.net.ops.sh(
            "etcdctl",
            "--endpoints",
            f"https://{self.net.etcd.endpoint}",
            *("--cacert", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)),
            "get",
            "--print-value-only",
            f"/cyberstar/scg/{scg}/chain",
            check=False,
        )
        if out.returncode != 0:  # not "no chain yet" (an empty answer): etcd refused us
            raise LabError(f"etcdctl get {scg}'s chain: {out.stderr.strip()}")
        try:
            return len(json.loads(out.stdout)["nodes"])
        except (ValueError, KeyError):
            return 0

    def _shards(self, tenant_id: int) -> dict[str, str]:
        shards = self.net.fm_status()["shards"]
        return {s: scg for s, scg in shards.items() if s.split(":")[0] == str(tenant_id)}

    def sc_scale_out(self, tenant: str, to: str, reason: str = "scenario") -> dict:
        """Start SC group `to` (if off) and move half of the tenant's largest shard to it."""
        t = self.clock()
        rec: dict = {
            "kind": "sc_scale_out",
            "t": round(t, 3),
            "tenant": tenant,
            "to": to,
            "reason": reason,
        }
        with self._sc_lock:
            nodes = self.net.scgs[to]
            _parallel([n.boot for n in nodes if not n.running])
            deadline = time.monotonic() + 30
            try:
                while self._chain_size(to) < len(nodes):
                    if time.monotonic() > deadline:
                        return self._fail(rec, f"{to}'s chain did not form within 30 s")
                    time.sleep(0.1)
            except LabError as exc:
                return self._fail(rec, str(exc))
            rec["group_up_s"] = round(self.clock() - t, 3)
            tid = self.net.tenants[tenant].tenant_id
            shards = {s: g for s, g in self._shards(tid).items() if g != to}
            if not shards:
                return self._fail(rec, f"no shard of tenant {tenant} outside {to}")
            shard = max(shards, key=_shard_width)
            return self._scale(rec, "out", shard, to, t)

    def sc_scale_in(self, tenant: str, to: str, reason: str = "scenario") -> dict:
        """Move a shard of the tenant that another SC group owns back into `to`; stop that
        group if it owns nothing any more."""
        t = self.clock()
        rec: dict = {
            "kind": "sc_scale_in",
            "t": round(t, 3),
            "tenant": tenant,
            "to": to,
            "reason": reason,
        }
        with self._sc_lock:
            tid = self.net.tenants[tenant].tenant_id
            shards = {s: g for s, g in self._shards(tid).items() if g != to}
            if not shards:
                return self._fail(rec, f"every shard of tenant {tenant} is in {to} already")
            shard = min(shards, key=_shard_width)
            source = shards[shard]
            rec = self._scale(rec, "in", shard, to, t)
            owned = set(self.net.fm_status()["shards"].values())
            if "error" not in rec and source not in owned:
                _parallel([n.stop_daemons for n in self.net.scgs[source]])
                rec["stopped"] = source
            return rec

    def _scale(self, rec: dict, kind: str, shard: str, to: str, t: float) -> dict:
        rec["shard"] = shard
        leader = self.net.fm_leader()
        if leader is None:
            return self._fail(rec, "no FM leads")
        try:
            reply = self.net.fm_call(
                leader, "POST", f"/scale?kind={kind}&shard={shard}&to={to}&wait_s=30", 40
            )
        except Exception as exc:
            return self._fail(rec, f"FM /scale: {exc}")
        rec["moved_connections"] = reply.get("moved_connections")
        rec["move_s"] = round(reply.get("seconds") or 0.0, 3)
        rec["shards"] = reply.get("shards")
        rec["signal_to_fin_s"] = round(self.clock() - t, 3)
        return self.record(rec)


def _shard_width(shard: str) -> int:
    lo, hi = shard.split(":")[1].split("-")
    return int(hi) - int(lo)
