#!/usr/bin/env python3
"""What one hop of the slow path costs before any work: the CPU of a grpc.aio unary call (a
Write to a node without stream writes, the SC Release), of a round trip of two messages on a
grpc.aio stream (a StreamWrite and its result on the P4Runtime stream), and of a plain asyncio
TCP round trip, on this machine.

Client and server run in one process and one event loop, so the process's CPU time over N
sequential calls of a 200-byte echo is the whole cost of a call, both ends. Prints JSON: wall
and CPU time per call, with mutual TLS (certificates of a lab CA, as every cyberstar channel)
and without (unary). Run from the repository: `.venv/bin/python bench/grpc_floor.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import grpc

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


async def grpc_call_cost(calls: int, tls: bool, certs: LabCerts,
                         stream: bool = False) -> dict[str, float]:  # fmt: skip
    """Per unary call, or per request and response on one open stream (`stream`)."""
    server = grpc.aio.server()
    handlers = {"E": grpc.unary_unary_rpc_method_handler(_echo),
                "S": grpc.stream_stream_rpc_method_handler(_echo_stream)}  # fmt: skip
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    if tls:
        s, c = certs.files("pp", "pp"), certs.files("fm", "fm")
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
            [(s.key.read_bytes(), s.cert.read_bytes())], s.ca.read_bytes(), True))  # fmt: skip
        creds = grpc.ssl_channel_credentials(c.ca.read_bytes(), c.key.read_bytes(),
                                             c.cert.read_bytes())  # fmt: skip
        options = [("grpc.ssl_target_name_override", "pp")]
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3, help="each figure: the lowest of N runs")
    args = ap.parse_args()
    certs = LabCerts(Path(tempfile.mkdtemp(prefix="cyberstar-grpc-floor-")))
    out: dict = {"load_average_start": os.getloadavg()}
    runs: dict[str, list[dict]] = {"grpc_aio_unary_tls": [], "grpc_aio_unary_plaintext": [],
                                   "grpc_aio_stream_round_trip_tls": [],
                                   "asyncio_tcp_round_trip": []}  # fmt: skip
    for _ in range(args.rounds):  # interleaved, so that a burst of load hits all alike
        runs["grpc_aio_unary_tls"].append(asyncio.run(grpc_call_cost(args.calls, True, certs)))
        runs["grpc_aio_stream_round_trip_tls"].append(
            asyncio.run(grpc_call_cost(args.calls, True, certs, stream=True))
        )
        runs["grpc_aio_unary_plaintext"].append(
            asyncio.run(grpc_call_cost(args.calls, False, certs))
        )
        runs["asyncio_tcp_round_trip"].append(asyncio.run(tcp_round_trip_cost(args.calls)))
    for name, results in runs.items():
        out[name] = min(results, key=lambda r: r["cpu_us"])
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
