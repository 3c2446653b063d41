"""The CLI contract: every command is documented in the README, user errors exit 2, --json is one document."""
import argparse
import json
import re

from core.cli import build_parser
from tests.conftest import REPO, run_cli


def leaf_commands(parser: argparse.ArgumentParser, prefix: str = "tunelab") -> list[str]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    out = []
    for name, child in subs[0].choices.items():
        out += leaf_commands(child, f"{prefix} {name}")
    return out


def test_every_command_is_documented_in_readme():
    readme = (REPO / "README.md").read_text()
    commands = leaf_commands(build_parser())
    assert len(commands) >= 5
    missing = [c for c in commands if not re.search(rf"`{re.escape(c)}(\s|`)", readme)]
    assert not missing, f"README lacks: {missing}"


def test_every_option_has_help():
    def walk(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    yield from walk(child)
            elif a.dest != "help":
                yield p.prog, a
    undocumented = [f"{prog} {a.dest}" for prog, a in walk(build_parser()) if not a.help]
    assert not undocumented


def test_json_output_is_one_document(tmp_path):
    done = run_cli("models", "list", "--json", env_home=tmp_path / "home")
    assert done.returncode == 0
    json.loads(done.stdout)  # raises if anything else was printed


def test_user_error_exit_2_and_stderr_only(tmp_path):
    done = run_cli("models", "prepare", "no-such-model", env_home=tmp_path / "home")
    assert done.returncode == 2 and "no-such-model" in done.stderr and done.stdout == ""
