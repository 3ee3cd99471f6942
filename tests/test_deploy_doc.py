"""docs/deploy.md works as written: its commands, run in order (names and ports made unique
on this shared machine), take a new user from namespaces to a SNAT'd connection."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import needs
import pytest

from cyberstar.lab.procs import free_port

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deploy.md"
PORTS = ("2379", "2380", "9559", "7101", "7102", "7103", "9300")
UNRUN = ("p4runtime_sh",)  # the interactive look around, and its clean-up: the test cleans up

pytestmark = [pytest.mark.root, pytest.mark.slow]


def script(workdir: Path) -> str:
    pid = os.getpid()
    text = DOC.read_text()
    for old, new in (("cs-client", f"cs{pid}c"), ("cs-server", f"cs{pid}s"),
                     ("cs-pp", f"cs{pid}p"), ("/tmp/cs", str(workdir)),
                     ("/path/to/cyberstar", str(REPO))):  # fmt: skip
        text = text.replace(old, new)
    for port in PORTS:
        text = re.sub(rf"\b{port}\b", str(free_port()), text)
    lines, last_file = ["set -e", f"mkdir -p {workdir}", f"cd {workdir}"], None
    for prose, lang, body in re.findall(r"(.*?)```(\w*)\n(.*?)```", text, re.S):
        named = re.findall(r"`([\w-]+\.(?:yaml|json))`", prose)
        last_file = named[-1] if named else last_file
        if lang in ("yaml", "json"):
            lines.append(f"cat > {last_file} <<'CYBERSTAR_EOF'\n{body}CYBERSTAR_EOF")
        elif lang == "sh" and not any(word in body for word in UNRUN):
            lines.append(body)
    return "\n".join(lines)


def test_the_deployment_guide_runs(tmp_path) -> None:
    needs.root()
    needs.etcd()
    text = script(tmp_path / "cs")
    pid = os.getpid()
    # Everything the guide starts writes to its own log: when bash ends, stdout ends.
    text += "\nstatus\necho\necho DONE\nwait"
    proc = subprocess.Popen(
        ["timeout", "300", "bash", "-c", text],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = ""
    try:
        for line in proc.stdout:
            out += line
            if line.strip() == "DONE":
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        for ns in (f"cs{pid}c", f"cs{pid}p", f"cs{pid}s"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    logs = {p.name: p.read_text()[-1500:] for p in (tmp_path / "cs").glob("*.log")}
    assert "DONE" in out, (out[-3000:], logs)
    assert "200" in out.splitlines()
    assert re.search(r"^203\.0\.113\.9 .*\"GET / HTTP/1\.1\" 200", logs["server.log"], re.M)
    assert '"leader": true' in out and '"sc_requests": 1' in out
