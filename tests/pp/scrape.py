"""A PP agent's metric, scraped from its /metrics endpoint (mutual TLS) as Prometheus would."""

from __future__ import annotations

import ssl
import urllib.request


def metric(port: int, tls, name: str) -> int:
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    text = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context).read()
    line = next(ln for ln in text.decode().splitlines() if ln.startswith(name + " "))
    return int(float(line.split()[-1]))
