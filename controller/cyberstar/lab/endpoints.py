"""Benchmark endpoints that are not the bottleneck: nginx as the server, a C load generator,
a C frame sender.

They run in a network namespace, pinned to the CPUs the benchmark names (`taskset`). The C
programs (`bench/cps_client.c`, `bench/frame_sender.c`) are compiled with gcc on first use and
cached by source hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cyberstar.lab.procs import LabError
from cyberstar.paths import REPO_ROOT
from cyberstar.subprocs import tied_to_parent

BENCH_DIR = REPO_ROOT / "bench"
CACHE = Path.home() / ".cache" / "cyberstar" / "bench"


def _in_ns(ns: str, cpus: str | None, cmd: list[str]) -> list[str]:
    pinned = ["taskset", "-c", cpus, *cmd] if cpus else cmd
    return ["ip", "netns", "exec", ns, *pinned]


def build(name: str) -> Path:
    """bench/NAME.c compiled (gcc -O2), cached by source hash."""
    path = BENCH_DIR / f"{name}.c"
    source = path.read_bytes()
    binary = CACHE / f"{name}-{hashlib.sha256(source).hexdigest()[:12]}"
    if not binary.exists():
        if shutil.which("gcc") is None:
            raise LabError(f"gcc is needed to build {path}: run `make install`")
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run(
            ["gcc", "-O2", "-Wall", "-pthread", "-o", str(tmp), str(path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise LabError(f"building {path} failed: {proc.stderr}")
        tmp.rename(binary)
    return binary


class FrameSender:
    """bench/frame_sender.c sending `frames` (cycling) into `ifname` of `ns` for `seconds`
    at `rate` frames/s (0: as fast as it can), in the background; `result()` waits for it."""

    def __init__(self, ns: str, ifname: str, frames: list[bytes], seconds: float,
                 rate: float = 0) -> None:  # fmt: skip
        fd, name = tempfile.mkstemp(prefix="cyberstar-frames-", suffix=".bin")
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(len(frame).to_bytes(2, "big") + frame for frame in frames))
        self.path = Path(name)
        cmd = [str(build("frame_sender")), ifname, name, str(seconds), str(rate)]
        self.proc = subprocess.Popen(_in_ns(ns, None, cmd), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.seconds = seconds

    def result(self) -> dict:
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 60)
        finally:
            self.path.unlink(missing_ok=True)
        if self.proc.returncode != 0:
            raise LabError(f"the frame sender failed ({self.proc.returncode}): {err.strip()}")
        return json.loads(out)


def run_client(
    ns: str,
    cpus: str | None,
    dst: str,
    port: int,
    threads: int,
    seconds: float,
    sources: tuple[str, int],
    ports: tuple[int, int],
    rate: float = 0,
) -> dict:
    """Run the load generator in `ns` for `seconds`; its JSON summary (connections, cps,
    connect and total latency percentiles in µs, errors by kind). `sources` is (first address,
    count): every connection takes a new (source address, source port) of those."""
    cmd = [str(build("cps_client")), dst, str(port), str(threads), str(seconds), sources[0],
           str(sources[1]), str(ports[0]), str(ports[1]), str(rate)]  # fmt: skip
    proc = subprocess.run(_in_ns(ns, cpus, cmd), capture_output=True, text=True,
                          timeout=seconds + 60)  # fmt: skip
    if proc.returncode != 0:
        raise LabError(f"the load generator failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


class Nginx:
    """nginx (Debian's) serving `200 ok` on `address:port` with `Connection: close`, one
    worker per CPU of `cpus`, each pinned to its CPU."""

    def __init__(self, ns: str, address: str, port: int, cpus: list[int]) -> None:
        self.ns, self.address, self.port, self.cpus = ns, address, port, cpus
        self.dir = Path(tempfile.mkdtemp(prefix="cyberstar-nginx-"))
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        masks = " ".join(format(1 << c, "b") for c in self.cpus)
        return f"""
daemon off;
master_process on;
user root;
worker_processes {len(self.cpus)};
worker_cpu_affinity {masks};
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    keepalive_timeout 0;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    server {{
        listen {self.address}:{self.port} backlog=8192 reuseport;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

    def __enter__(self) -> Nginx:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise LabError("nginx is needed as the benchmark's server: run `make install`")
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        for sysctl in ("net.core.somaxconn=8192", "net.ipv4.tcp_max_syn_backlog=8192"):
            subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", sysctl], check=True)
        log = (self.dir / "stdout.log").open("w")
        self.proc = subprocess.Popen(
            tied_to_parent(["ip", "netns", "exec", self.ns, nginx, "-p", str(self.dir), "-c",
                            str(conf)]),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            self._wait_listening()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_listening(self) -> None:
        for _ in range(200):
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"nginx exited: {(self.dir / 'error.log').read_text()[-2000:]}")
            ss = ["ip", "netns", "exec", self.ns, "ss", "-Hltn", f"sport = :{self.port}"]
            out = subprocess.run(ss, capture_output=True, text=True)
            if self.address in out.stdout:
                return
            time.sleep(0.05)  # nginx binds within milliseconds of starting
        raise LabError(f"nginx did not listen on {self.address}:{self.port}")

    def pids(self) -> list[int]:
        """The master and its workers."""
        if self.proc is None:
            return []
        # setpriv and `ip netns exec` exec nginx: the Popen pid is the master
        workers = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                 text=True).stdout.split()  # fmt: skip
        return [self.proc.pid, *map(int, workers)]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)

    def __exit__(self, *exc: object) -> None:
        self.close()
