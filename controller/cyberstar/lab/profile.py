"""Sampling profiles of the daemons during a benchmark (py-spy, a dev dependency).

`Profiler` starts `py-spy record` on each named process for a number of seconds and, once they
end, summarises each profile: the functions the samples were in (self) and under (inclusive),
as shares of the process's samples. Idle threads are not sampled (py-spy's default), so the
shares are of the time the process was running Python or native code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Frames every sample of a thread passes through (interpreter start, event loop, thread
# bootstrap, the CLI): their inclusive share says nothing, so it is not listed.
WRAPPERS = ("<frozen runpy>", "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py",
            "threading.py", "concurrent/futures/thread.py", "cyberstar/cli.py")  # fmt: skip


def _frame_name(frame: str) -> str:
    """`func (pkg/module.py:123)` → `func (pkg/module.py)`: lines vary, functions do not."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{func} ({path})" if path else func


def _is_wrapper(name: str) -> bool:
    return name.endswith(tuple(f"({w})" for w in WRAPPERS)) or name.endswith("/cli.py)")


def summarise(raw: Path, top: int = 15) -> dict:
    """Top functions of a py-spy raw (collapsed stacks) profile."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            if not _is_wrapper(name):
                under[name] += n
    if not total:
        return {"samples": 0}

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in c.most_common(top)]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(under)}


class Profiler:
    def __init__(self, out_dir: Path, pids: dict[str, int], seconds: float, rate: int = 250):
        self.out_dir, self.pids, self.seconds, self.rate = out_dir, pids, seconds, rate
        self._procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        beside = Path(sys.executable).parent / "py-spy"  # the venv's, not necessarily on PATH
        spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("py-spy is not installed: `pip install -e '.[dev]'`")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(self.seconds)),
                   "--rate", str(self.rate), "--format", "raw", "--nonblocking",
                   "--output", str(self.out_dir / f"{name}.txt")]  # fmt: skip
            self._procs[name] = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

    def finish(self, top: int = 15) -> dict[str, dict]:
        out = {}
        for name, proc in self._procs.items():
            proc.wait(self.seconds + 30)
            raw = self.out_dir / f"{name}.txt"
            out[name] = summarise(raw, top) if raw.exists() else {"samples": 0}
        return out
