"""Child processes that die with the process that started them.

Labs, benchmarks and the bmv2 target start etcd, SC nodes, FMs, PP agents and switches. When
the starter is killed outright (SIGKILL, an OOM kill, a CI timeout) its cleanup never runs;
without this the children would live on, holding ports, namespaces and XDP programs.
"""

from __future__ import annotations

import shutil


def tied_to_parent(cmd: list[str]) -> list[str]:
    """`cmd` run through util-linux's `setpriv --pdeathsig TERM`: the kernel sends the child
    SIGTERM when the thread that started it exits, so start it from a long-lived thread."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else list(cmd)
