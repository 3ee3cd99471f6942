"""Offered and delivered traffic for data-plane tests: a sender process that floods or paces one
frame out of an interface, and a receiver that counts the frames arriving on another, per IPv4
destination. The counts are the harness's own, never the data plane's counters.

Sender: `python -m cyberstar.lab.traffic IFACE SECONDS RATE FRAME_HEX` (RATE 0: as fast as it
can) prints `{"sent": N, "elapsed": S}`; start it in a namespace with `ip netns exec` (`send`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

from cyberstar import netns
from cyberstar.subprocs import tied_to_parent

STEP_S = 0.005  # a paced sender sends what it owes every 5 ms
MAX_LAG_S = 0.02  # and after a stall catches up at most 20 ms worth at once


@dataclass(frozen=True)
class Sent:
    sent: int
    elapsed: float  # from the first frame to the last


def send_frames(iface: str, seconds: float, rate: float, frame: bytes) -> Sent:
    """Send `frame` out of `iface` for `seconds`: `rate` frames/s, or as fast as possible."""
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((iface, 0))
    sent, owed = 0, 0.0
    start = last = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        if rate <= 0:
            for _ in range(64):
                try:
                    tx.send(frame)
                    sent += 1
                except BlockingIOError:  # the device's queue is full: a flood is over-offered
                    pass
            continue
        owed = min(owed + rate * (now - last), rate * MAX_LAG_S)
        last = now
        while owed >= 1:
            tx.send(frame)
            sent += 1
            owed -= 1
        time.sleep(STEP_S)
    elapsed = time.monotonic() - start
    tx.close()
    return Sent(sent, elapsed)


def send(ns: str, iface: str, seconds: float, rate: float, frame: bytes) -> subprocess.Popen:
    """Start a sender in namespace `ns`; `result` collects what it sent."""
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "cyberstar.lab.traffic",
           iface, str(seconds), str(rate), frame.hex()]  # fmt: skip
    return subprocess.Popen(tied_to_parent(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def result(proc: subprocess.Popen, timeout: float = 60) -> Sent:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"sender failed ({proc.returncode}): {err.decode()[-2000:]}")
    return Sent(**json.loads(out))


class Receiver:
    """Counts IPv4 frames arriving on `iface` in namespace `ns`, per destination address."""

    def __init__(self, ns: str, iface: str) -> None:
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock.bind((iface, 0))
        self.sock.settimeout(0.1)
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rx-{iface}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
                self.counts[socket.inet_ntoa(frame[30:34])] += 1

    def stop(self) -> Counter[str]:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.counts


if __name__ == "__main__":
    iface, seconds, rate, frame_hex = sys.argv[1:5]
    done = send_frames(iface, float(seconds), float(rate), bytes.fromhex(frame_hex))
    print(json.dumps({"sent": done.sent, "elapsed": done.elapsed}))
