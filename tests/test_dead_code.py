"""No dead code: everything vulture finds unused is either deleted or listed, with the reason,
in scripts/vulture_whitelist.py (the same check as `make lint`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def vulture_command(*extra: str) -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    paths = re.search(r"^VULTURE_PATHS := (.+)$", makefile, re.M).group(1).split()
    return [sys.executable, "-m", "vulture", *paths, *extra, "--min-confidence", "60",
            "--exclude", "*_pb2*.py"]  # fmt: skip


def test_no_unused_code() -> None:
    result = subprocess.run(vulture_command(), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"unused code (delete it, or whitelist it with its user):\n{result.stdout}{result.stderr}"
    )


def test_the_check_finds_unused_code(tmp_path: Path) -> None:
    dead = tmp_path / "dead.py"
    dead.write_text("def never_called():\n    return 1\n")
    result = subprocess.run(vulture_command(str(dead)), cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "never_called" in result.stdout
