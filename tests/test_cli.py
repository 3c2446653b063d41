"""The CLI contract: every command is documented in the README, user errors exit 2, --json is one document."""
import argparse
import json
import os
import pty
import re
import subprocess
import sys
import termios

import pytest

from tunelab.cli import build_parser
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


@pytest.mark.process
@pytest.mark.timeout(120)
def test_json_output_is_one_document(tmp_path):
    done = run_cli("models", "list", "--json", env_home=tmp_path / "home")
    assert done.returncode == 0
    json.loads(done.stdout)  # raises if anything else was printed


@pytest.mark.process
@pytest.mark.timeout(120)
def test_user_error_exit_2_and_stderr_only(tmp_path):
    done = run_cli("models", "prepare", "no-such-model", env_home=tmp_path / "home")
    assert done.returncode == 2 and "no-such-model" in done.stderr and done.stdout == ""


SAMPLE = REPO / "data" / "samples" / "acme_router_sft.jsonl"


@pytest.mark.process
@pytest.mark.timeout(120)
def test_progress_off_a_terminal_is_one_summary_line(tmp_path):
    """In a log or CI output (stderr not a tty) each redraw of a bar would be a line of its own."""
    done = run_cli("data", "import", str(SAMPLE), "--name", "acme", env_home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "%|" not in done.stderr
    assert re.fullmatch(r"importing \S+acme_router_sft.jsonl: imported 150 rows as acme@1 in \d+\.\d s\n",
                        done.stderr), done.stderr


@pytest.mark.process
@pytest.mark.timeout(120)
def test_progress_bar_draws_on_a_terminal(tmp_path):
    """On a terminal the bar redraws in place, and no summary line follows it."""
    terminal, child_end = pty.openpty()
    termios.tcsetwinsize(child_end, (24, 100))  # a new pty is 0 columns wide: tqdm would draw nothing
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "data", "import", str(SAMPLE), "--name", "acme"],
                            stdout=subprocess.PIPE, stderr=child_end, cwd=REPO,
                            env=dict(os.environ, TUNELAB_HOME=str(tmp_path / "home")))
    os.close(child_end)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the child has closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    assert proc.wait(60) == 0, shown
    assert b"%|" in shown and b"\r" in shown and b" in " not in shown.rsplit(b"\r", 1)[-1]
