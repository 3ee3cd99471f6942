"""Prometheus metrics for a bmv2 PP node, which serves none itself.

`python -m cyberstar.lab.bmv2_metrics --grpc ADDR --listen HOST:PORT --tls-ca CA --tls-cert CRT
--tls-key KEY` runs next to the switch (the lab starts it in the node's host) and answers GET
/metrics (HTTPS wanting a client certificate of the CA, as an XDP agent's) by reading the
pipeline's indexed counters over P4Runtime (mutual TLS; a Read needs no arbitration): the same
`cyberstar_pp_packets_total{verdict}` and `cyberstar_pp_drops_total{reason}` an XDP agent
serves, so the lab's plots and autoscaler treat both kinds of node alike.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from cyberstar.metrics import Sample, serve_metrics
from cyberstar.p4rt.client import P4RuntimeClient
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.tls import TlsFiles, server_ssl
from cyberstar.verbs import serve_until_signalled


def collect(client: P4RuntimeClient) -> list[Sample]:
    counters = {c.name: c for c in PIPELINE.counters}
    samples: list[Sample] = []
    cells = client.read_counter(counters["verdicts"].id)
    for i, verdict in enumerate(PIPELINE.verdicts):
        packets, nbytes = cells.get(i, (0, 0))
        samples.append(("cyberstar_pp_packets_total", {"verdict": verdict}, packets))
        samples.append(("cyberstar_pp_bytes_total", {"verdict": verdict}, nbytes))
    cells = client.read_counter(counters["drop_reasons"].id)
    for i, reason in enumerate(PIPELINE.drop_reasons):
        packets, _ = cells.get(i, (0, 0))
        if packets:
            samples.append(("cyberstar_pp_drops_total", {"reason": reason}, packets))
    return samples


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grpc", required=True, help="the switch's P4Runtime address")
    p.add_argument("--device-id", type=int, default=1)
    p.add_argument("--listen", required=True, help="HOST:PORT to serve /metrics on")
    p.add_argument("--tls-ca", type=Path, required=True, help="the lab CA")
    p.add_argument("--tls-cert", type=Path, required=True, help="this node's certificate")
    p.add_argument("--tls-key", type=Path, required=True, help="this node's key")
    args = p.parse_args(argv)
    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    client = P4RuntimeClient(args.grpc, args.device_id, tls=tls)
    client.wait_ready(30)
    serve_metrics(args.listen, lambda: collect(client), server_ssl(tls))
    serve_until_signalled(threading.Event())
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
