"""The CLI registry: every `cyberstar OBJECT VERB` in `cyberstar.cli.COMMANDS` loads, answers
--help, and a command loads only its own object's code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cyberstar.cli import COMMANDS, load_verb, main
from cyberstar.verbs import Verb

COMMAND_LINES = [
    [obj] if verb is None else [obj, verb] for obj, (_, verbs) in COMMANDS.items() for verb in verbs
]


@pytest.mark.parametrize("words", COMMAND_LINES, ids=" ".join)
def test_every_command_answers_help(words: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: cyberstar {' '.join(words)}")


def test_registry_names_verbs() -> None:
    for _, verbs in COMMANDS.values():
        for target in verbs.values():
            assert isinstance(load_verb(target), Verb), target


def test_an_object_without_its_verb_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["sc"])
    assert done.value.code == 2
    assert "VERB" in capsys.readouterr().err


def test_a_daemon_loads_only_its_own_object() -> None:
    probe = (
        "import sys\n"
        "from cyberstar.cli import build_parser\n"
        "build_parser(['-v', 'sc', 'serve', '--config', 'x.yaml'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('cyberstar.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = out.stdout
    assert "cyberstar.sc.cli" in loaded
    for other in ("cyberstar.orchestrator", "cyberstar.fm", "cyberstar.pp", "cyberstar.commands"):
        assert other not in loaded, f"{other} loaded for `sc serve`: {loaded}"
