#!/usr/bin/env python3
"""SC plane: rule-request throughput of one SC group, and the cost of scaling a big shard.

Starts a private etcd and two SC groups of three `cyberstar sc serve` processes on loopback,
then prints one JSON object:

* `compute`: new-connection rule requests per second one SCG of 3 sustains (every request
  allocates a SNAT mapping, replicated head → middle → tail before its reply), for batches of
  1, 100 and 1000 requests per Compute call, with `clients` concurrent callers; and repeated
  requests (answered from stored connections) with batches of 1000.
* `scale_out`: a shard holding `--mappings` mappings (default 100 000) is split and its upper
  half moved to the second SCG: seconds from the Scale request to the shard map FM routes by
  naming the new owner (goal < 1 s; SC's own start-to-fin figure beside it), connections moved,
  when each phase was reached, and the new-flow rate a background load (4 concurrent batches
  of 100 through the FM-side router) got in the `--window` seconds before the start and
  between start and fin.
* `scale_in`: the moved half merges back (whole-shard move), same figures.
* `compute_latency`: milliseconds per Compute call of 1, 3 and 10 new-connection requests
  (one caller, one call at a time: FM's latency for a small slow-path batch), and with 4
  callers of 3 (median and the requests per second they got); through gRPC, through the
  compute link with the head answering (`compute_link`) and with the chain's tail answering as
  it does FM (`compute_link_tail_answers`: the caller listens on the tail, packet-pass-through),
  run after each other in that order, with the CPU time per call of the caller (this process)
  and of the three SC nodes (/proc).

Run from the repository: .venv/bin/python bench/sc_scale.py [--mappings 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from cyberstar.lab.cpu import process_cpu_s
from cyberstar.lab.sc import ScLab
from cyberstar.lab.wait import wait_until_async
from cyberstar.sc.client import Request, ScClient
from cyberstar.sc.compute_link import ComputeLinkClient
from cyberstar.sc.flows import FlowKey, Packet
from cyberstar.sc.routing import ScRouter, ShardMap
from cyberstar.tls import client_ssl

TENANT = 7
TENANTS = [
    {
        "id": TENANT,
        "chain": ["nat"],
        "forward_nexthop": 2,
        "return_nexthop": 1,
        "home_scg": "scg1",
        "nfs": {"nat": {"kind": "snat", "pool": ["203.0.113.0/29:1024-65535"]}},
    }
]


class Flows:
    """Distinct client flows: 10.<i> clients to a few servers."""

    def __init__(self) -> None:
        self.n = 0

    def take(self, count: int) -> list[Request]:
        out = []
        for _ in range(count):
            self.n += 1
            i = self.n
            key = FlowKey(6, 0x0A000000 + i // 60000, 0x5DB8D800 + i % 8, 1024 + i % 60000, 443)
            out.append(Request(i, Packet(TENANT, 1, 0, key)))
        return out


def check(replies) -> None:
    bad = [r for r in replies if r.status.code != 0]
    if bad:
        raise SystemExit(f"request {bad[0].request_id} failed: {bad[0].status.message}")


async def rate(client: ScClient, flows: Flows, batch: int, clients: int, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            check(await client.compute(flows.take(batch)))
            done += batch

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / (time.monotonic() - start)


def cpu_s(pids: list[int]) -> float:
    """utime + stime of the processes `pids`, in seconds."""
    return sum(process_cpu_s(pid) for pid in pids)


async def latency(client: ScClient | ComputeLinkClient, flows: Flows, batch: int, callers: int,
                  seconds: float, sc_pids: list[int]) -> dict:  # fmt: skip
    """Per-call latency of Compute batches of new flows, `callers` calls in flight, and the CPU
    per call of this process and of the SC nodes."""
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    caller_cpu, sc_cpu = time.process_time(), cpu_s(sc_pids)

    async def caller() -> None:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            check(await client.compute(flows.take(batch)))
            lat.append(time.perf_counter() - t0)

    start = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.monotonic() - start
    caller_cpu, sc_cpu = time.process_time() - caller_cpu, cpu_s(sc_pids) - sc_cpu
    lat.sort()
    return {
        "callers": callers,
        "median_ms": round(statistics.median(lat) * 1e3, 3),
        "p90_ms": round(lat[int(len(lat) * 0.9)] * 1e3, 3),
        "requests_per_s": round(len(lat) * batch / elapsed),
        "cpu_us_per_call": {
            "caller": round(caller_cpu / len(lat) * 1e6),
            "sc_group": round(sc_cpu / len(lat) * 1e6),
        },
    }


async def repeated_rate(client: ScClient, reqs: list[Request], seconds: float) -> float:
    done, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        for i in range(0, len(reqs), 1000):
            check(await client.compute(reqs[i : i + 1000]))
            done += len(reqs[i : i + 1000])
    return done / (time.monotonic() - start)


class Background:
    """A steady load of new flows through the router; counts answers per time window."""

    def __init__(self, router: ScRouter, flows: Flows, batch: int, concurrency: int) -> None:
        self.router, self.flows, self.batch, self.concurrency = router, flows, batch, concurrency
        self.stamps: list[tuple[float, int]] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.concurrency)))

    async def _worker(self) -> None:
        while not self.stop.is_set():
            check(await self.router.compute(self.flows.take(self.batch)))
            self.stamps.append((time.monotonic(), self.batch))

    def rate(self, t0: float, t1: float) -> float:
        n = sum(c for t, c in self.stamps if t0 < t <= t1)
        return n / max(t1 - t0, 1e-9)


async def scale(
    shard_map: ShardMap, bg: Background, kind: str, shard: str, target: str, window: float
) -> dict:
    """Seconds from the Scale request to the moment the shard map FM routes by (the etcd
    watch) names `target` for the moved slots: the move is done for FM only then. SC's own
    figure (`seconds_reported_by_sc`) is taken before its final etcd transaction."""
    sid = next(s for s in shard_map.shards if str(s) == shard)
    await asyncio.sleep(window)  # let the background load run a window before the start
    async with ScClient(shard_map.head(shard_map.shards[sid]), bg.router.tls) as client:
        info = await client.inspect()
        held = next(s.connections for s in info.shards if s.id == shard)
        before = set(shard_map.shards)
        t0 = time.monotonic()
        op = await (client.scale_out if kind == "out" else client.scale_in)(shard, target)
        reply = await client.scale_status(op, wait_s=120)
        if reply.phase != "fin":
            raise SystemExit(f"scale {kind} of {shard} ended {reply.phase}: {reply.status.message}")
        produced = set(reply.shards)
        await shard_map.wait_until(
            lambda m: any(str(s) in produced and scg == target and s not in before
                          for s, scg in m.shards.items()), 30)  # fmt: skip
        t1 = time.monotonic()
    return {
        "shard": shard,
        "connections_in_shard_at_start": held,
        "target": target,
        "seconds_request_to_new_map": round(t1 - t0, 4),
        "seconds_reported_by_sc": round(reply.seconds, 4),
        "moved_connections": reply.moved_connections,
        "phase_seconds": dict(sorted(reply.phase_seconds.items(), key=lambda kv: kv[1])),
        "requests_per_s_before": round(bg.rate(t0 - window, t0)),
        "requests_per_s_during": round(bg.rate(t0, t1)),
        "result_shards": list(reply.shards),
    }


async def main(args: argparse.Namespace) -> dict:
    with ScLab(TENANTS, lease_ttl_s=3, workdir=args.workdir) as lab:
        lab.add_scg("scg1", 3)
        lab.add_scg("scg2", 3)
        shard_map = ShardMap(lab.etcd_config())
        await shard_map.start()
        await shard_map.wait_until(
            lambda m: (
                len(m.shards) == 1
                and all(len(c.nodes) == 3 for c in m.chains.values())
                and len(m.chains) == 2
            ),
            60,
        )
        head = shard_map.head("scg1")
        flows = Flows()
        result: dict = {"scg_size": 3, "mappings": args.mappings}
        async with ScClient(head, lab.client_tls, timeout_s=120) as client:
            t0 = time.monotonic()
            while flows.n < args.mappings:
                check(await client.compute(flows.take(min(1000, args.mappings - flows.n))))
            result["fill_per_s"] = round(args.mappings / (time.monotonic() - t0))
        router = ScRouter(shard_map, lab.client_tls, attempts=400, pause_s=0.01)
        bg = Background(router, flows, batch=100, concurrency=4)
        task = asyncio.create_task(bg.run())
        try:
            result["scale_out"] = await scale(shard_map, bg, "out", "7:0-1024", "scg2", args.window)
            await shard_map.wait_until(lambda m: len(m.shards) == 2, 10)
            result["scale_in"] = await scale(shard_map, bg, "in", "7:512-1024", "scg1", args.window)
            await shard_map.wait_until(lambda m: len(m.shards) == 1, 10)
        finally:
            bg.stop.set()
            await task
            await router.close()
        result["background"] = {"batch": bg.batch, "concurrent_batches": bg.concurrency}
        result["compute"] = {}
        async with ScClient(shard_map.head("scg1"), lab.client_tls, timeout_s=120) as client:
            for batch, clients in ((1, 8), (100, 4), (1000, 2)):
                r = await rate(client, flows, batch, clients, args.seconds)
                result["compute"][f"new_batch_{batch}"] = {"clients": clients, "per_s": round(r)}
            sample = Flows().take(10_000)
            result["compute"]["repeated_batch_1000"] = {
                "clients": 1,
                "per_s": round(await repeated_rate(client, sample, args.seconds)),
            }
        head = shard_map.chains["scg1"].head
        assert head is not None and head.compute, "the SC head publishes no compute link"
        sc_pids = [p.proc.pid for n, p in lab.nodes.items() if n.startswith("scg1") and p.proc]
        link = ComputeLinkClient(head.compute, client_ssl(lab.client_tls), timeout_s=120)
        passing = ComputeLinkClient(head.compute, client_ssl(lab.client_tls), timeout_s=120)
        passing.use_tail(shard_map.chains["scg1"].nodes[-1].compute)
        await wait_until_async(lambda: passing.listening, 30, "the tail to take the token")
        result["compute_latency"] = {}
        async with ScClient(head.address, lab.client_tls, timeout_s=120) as client:
            for name, via in (
                ("grpc", client),
                ("compute_link", link),
                ("compute_link_tail_answers", passing),
            ):
                result["compute_latency"][name] = {
                    f"batch_{batch}" + ("" if callers == 1 else f"_x{callers}"): await latency(
                        via, flows, batch, callers, args.seconds, sc_pids
                    )
                    for batch, callers in ((1, 1), (3, 1), (10, 1), (3, 4))
                }
        await link.close()
        await passing.close()
        await shard_map.close()
        return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mappings", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput figure")
    parser.add_argument("--window", type=float, default=2.0, help="rate window before start")
    parser.add_argument("--workdir", type=Path, help="keep etcd data and node logs here")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args)), indent=2))
    sys.exit(0)
