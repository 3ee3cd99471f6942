"""What one `cyberstar OBJECT VERB` is. `cyberstar.cli` lists them all; each package defines
its own verbs next to the code they run."""

from __future__ import annotations

import argparse
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
