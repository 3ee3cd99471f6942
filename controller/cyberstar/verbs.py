"""What one `cyberstar OBJECT VERB` is. `cyberstar.cli` lists them all; each package defines
its own verbs next to the code they run."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    """A command's help, its arguments and what it runs.

    `arguments` adds the options to the verb's parser; `run` gets the parsed namespace and
    returns the exit code (or raises `UsageError`/`RuntimeFailure`, see `cyberstar.errors`).
    """

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None
    raw_text: bool = False  # keep the description's and epilog's line breaks

    def parser_options(self) -> dict:
        options: dict = {"description": self.description or self.help, "epilog": self.epilog}
        if self.raw_text:
            options["formatter_class"] = argparse.RawDescriptionHelpFormatter
        return options


def serve_until_signalled(stop: threading.Event, poll_s: float = 0.2) -> None:
    """Block a serving command's main thread until SIGTERM or SIGINT, or until another thread
    sets `stop`; then set `stop`.

    The handler only records the signal. A handler that set the Event itself runs in the main
    thread between two bytecodes, possibly while that thread holds the Event's lock (inside
    `wait`, or inside the handler of a first signal when a second one arrives), and then waits
    for that lock forever: a process sent SIGTERM twice never stopped."""
    signalled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signalled.append(signum))
    while not signalled and not stop.wait(poll_s):
        pass
    stop.set()
