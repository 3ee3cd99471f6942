#!/usr/bin/env python3
"""What one hop of the slow path costs before any work: the CPU of a grpc.aio unary call (a
Write to a node without stream writes, the SC Release), of a round trip of two messages on a
grpc.aio stream (a StreamWrite and its result on the P4Runtime stream), and of a plain asyncio
TCP round trip, on this machine.

Client and server run in one process and one event loop, so the process's CPU time over N
sequential calls of a 200-byte echo is the whole cost of a call, both ends; the stream round
trip is measured between two processes too (`..._two_processes`: each message wakes the other
process, as between FM and a PP node), with each process's CPU. Prints JSON: wall and CPU time
per call, with mutual TLS (certificates of a lab CA, as every cyberstar channel) and without
(unary), once for each choice of gRPC's transports (`cyberstar.grpc_transport`): gRPC's
defaults (`grpc_defaults`) and the one cyberstar's processes make (`cyberstar`), in separate
processes since gRPC reads the choice when it starts, rounds interleaved.
Run from the repository: `.venv/bin/python bench/grpc_floor.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from cyberstar.grpc_transport import EXPERIMENTS
from cyberstar.lab.certs import LabCerts

PAYLOAD = b"x" * 200


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _echo(request: bytes, _context) -> bytes:
    return request


async def _echo_stream(requests, _context):
    async for request in requests:
        yield request


def _tls_server(server: grpc.aio.Server, certs: LabCerts) -> int:
    s = certs.files("pp", "pp")
    return server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(s.key.read_bytes(), s.cert.read_bytes())], s.ca.read_bytes(), True))  # fmt: skip


def _tls_channel(port: int, certs: LabCerts) -> grpc.aio.Channel:
    c = certs.files("fm", "fm")
    creds = grpc.ssl_channel_credentials(c.ca.read_bytes(), c.key.read_bytes(),
                                         c.cert.read_bytes())  # fmt: skip
    options = [("grpc.ssl_target_name_override", "pp")]
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options)


async def grpc_call_cost(calls: int, tls: bool, certs: LabCerts,
                         stream: bool = False) -> dict[str, float]:  # fmt: skip
    """Per unary call, or per request and response on one open stream (`stream`)."""
    server = grpc.aio.server()
    handlers = {"E": grpc.unary_unary_rpc_method_handler(_echo),
                "S": grpc.stream_stream_rpc_method_handler(_echo_stream)}  # fmt: skip
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    if tls:
        channel = _tls_channel(_tls_server(server, certs), certs)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    await server.start()
    if stream:
        open_stream = channel.stream_stream("/t.T/S")()

        async def call(payload: bytes) -> bytes:
            await open_stream.write(payload)
            return await open_stream.read()
    else:
        call = channel.unary_unary("/t.T/E")
    for _ in range(50):  # connection set up and warm
        await call(PAYLOAD)
    cpu0, t0 = _cpu(), time.perf_counter()
    for _ in range(calls):
        await call(PAYLOAD)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    if stream:
        await open_stream.done_writing()
        await open_stream.code()  # the server ended the stream: close without a GOAWAY
    await channel.close()
    await server.stop(None)
    return {"wall_us": round(wall / calls * 1e6, 1), "cpu_us": round(cpu / calls * 1e6, 1)}


async def tcp_round_trip_cost(trips: int) -> dict[str, float]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(await reader.readexactly(len(PAYLOAD)))
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    cpu0, t0 = _cpu(), time.perf_counter()
    for _ in range(trips):
        writer.write(PAYLOAD)
        await reader.readexactly(len(PAYLOAD))
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    writer.close()
    server.close()
    return {"wall_us": round(wall / trips * 1e6, 1), "cpu_us": round(cpu / trips * 1e6, 1)}


async def echo_server(certs: LabCerts) -> None:
    """The other process of the two-process round trip: prints its port, serves until its
    standard input closes."""
    server = grpc.aio.server()
    handlers = {"S": grpc.stream_stream_rpc_method_handler(_echo_stream)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    port = _tls_server(server, certs)
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def two_process_round_trip(trips: int, certs: LabCerts, certs_dir: Path) -> dict:
    server = subprocess.Popen([sys.executable, __file__, "--echo-server", str(certs_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        async with _tls_channel(int(server.stdout.readline()), certs) as ch:
            stream = ch.stream_stream("/t.T/S")()
            for _ in range(50):
                await stream.write(PAYLOAD)
                await stream.read()
            cpu0, peer0, t0 = _cpu(), _process_cpu(server.pid), time.perf_counter()
            for _ in range(trips):
                await stream.write(PAYLOAD)
                await stream.read()
            wall = time.perf_counter() - t0
            cpu, peer = _cpu() - cpu0, _process_cpu(server.pid) - peer0
            await stream.done_writing()
            await stream.code()
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    return {"wall_us": round(wall / trips * 1e6, 1),
            "cpu_us": round((cpu + peer) / trips * 1e6, 1),
            "client_cpu_us": round(cpu / trips * 1e6, 1),
            "server_cpu_us": round(peer / trips * 1e6, 1)}  # fmt: skip


FIGURES = ("grpc_aio_unary_tls", "grpc_aio_stream_round_trip_tls",
           "grpc_aio_stream_round_trip_tls_two_processes", "grpc_aio_unary_plaintext",
           "asyncio_tcp_round_trip")  # fmt: skip


def one_round(calls: int, certs_dir: Path) -> dict[str, dict]:
    """Every figure once, in this process (with whatever transports gRPC chose here)."""
    certs = LabCerts(certs_dir)
    return {
        "grpc_aio_unary_tls": asyncio.run(grpc_call_cost(calls, True, certs)),
        "grpc_aio_stream_round_trip_tls": asyncio.run(
            grpc_call_cost(calls, True, certs, stream=True)
        ),
        "grpc_aio_stream_round_trip_tls_two_processes": asyncio.run(
            two_process_round_trip(calls, certs, certs_dir)
        ),
        "grpc_aio_unary_plaintext": asyncio.run(grpc_call_cost(calls, False, certs)),
        "asyncio_tcp_round_trip": asyncio.run(tcp_round_trip_cost(calls)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3, help="each figure: the lowest of N runs")
    ap.add_argument("--one-round", type=Path, metavar="CERTS", help=argparse.SUPPRESS)
    ap.add_argument("--echo-server", type=Path, metavar="CERTS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        asyncio.run(echo_server(LabCerts(args.echo_server)))
        return 0
    if args.one_round:
        print(json.dumps(one_round(args.calls, args.one_round)))
        return 0
    certs_dir = Path(tempfile.mkdtemp(prefix="cyberstar-grpc-floor-"))
    LabCerts(certs_dir).files("pp", "pp")  # made once, before the rounds
    out: dict = {"load_average_start": os.getloadavg()}
    choices = {"grpc_defaults": "", "cyberstar": EXPERIMENTS}
    runs: dict[str, dict[str, list[dict]]] = {c: {f: [] for f in FIGURES} for c in choices}
    for _ in range(args.rounds):  # interleaved, so that a burst of load hits all alike
        for choice, experiments in choices.items():
            env = {**os.environ, "GRPC_EXPERIMENTS": experiments}
            done = subprocess.run([sys.executable, __file__, "--calls", str(args.calls),
                                   "--one-round", str(certs_dir)], env=env, check=True,
                                  capture_output=True, text=True)  # fmt: skip
            for name, result in json.loads(done.stdout.splitlines()[-1]).items():
                runs[choice][name].append(result)
    for choice, figures in runs.items():
        out[choice] = {"GRPC_EXPERIMENTS": choices[choice] or "(unset: gRPC's defaults)"}
        for name, results in figures.items():
            out[choice][name] = min(results, key=lambda r: r["cpu_us"])
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
