"""The suite's own rules, read from the test files' source (nothing is imported, so a module that does not
import today is still checked):

- a test that starts a process (the CLI as a subprocess, a training, eval or generation job, a Streamlit
  server, a Ray cluster, Chromium) carries the `process` marker and a pytest-timeout bound, so a hung
  process fails that test instead of stalling the suite until the global last-resort timeout;
- no test module imports another: shared helpers live in tests/conftest.py.
"""
import ast
from pathlib import Path

from tests.conftest import REPO

TESTS = REPO / "tests"
# Fixtures that are processes: the Streamlit server, Chromium and its pages.
PROCESS_FIXTURES = {"app", "browser", "page"}
# Calls that start a process. `launch`, `submit`, `resume`, `requeue`, `start_queued`, `start_generation` and
# `start_judge` start jobs (runs, evals, campaign generation, judges; Chromium's `launch` too); `get_context`
# is multiprocessing's.
PROCESS_CALLS = {"run_cli", "App", "RayCluster", "Popen", "sync_playwright", "get_context", "launch", "submit",
                 "resume", "requeue", "start_queued", "start_generation", "start_judge"}
SUBPROCESS_CALLS = {"run", "call", "check_call", "check_output"}  # subprocess.<name>
REQUIRED = {"process", "timeout"}


def _calls(fn: ast.AST) -> set[str]:
    """The names a function calls (`f(...)`, `x.f(...)`), with `subprocess.run` and the like as PROCESS_CALLS."""
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute):
                names.add(f.attr)
                if isinstance(f.value, ast.Name) and f.value.id == "subprocess" and f.attr in SUBPROCESS_CALLS:
                    names.add("Popen")
    return names


def _marks(*nodes: ast.AST) -> set[str]:
    """X for every `pytest.mark.X` written in these decorators or `pytestmark` values."""
    return {n.attr for node in nodes for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"}


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _starters(defs: dict[str, ast.FunctionDef]) -> set[str]:
    """The fixtures and helpers among `defs` that start a process, directly, through a fixture they take
    or through another helper (to a fixed point), with the process fixtures themselves."""
    found = set(PROCESS_FIXTURES)
    while True:
        more = {name for name, fn in defs.items() if name not in found
                and (_calls(fn) | {a.arg for a in fn.args.args}) & (found | PROCESS_CALLS)}
        if not more:
            return found
        found |= more


def _test_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def unbounded_process_tests() -> list[str]:
    """'path::test (missing marks)' for each process-starting test without the `process` marker and a timeout."""
    shared = _functions(ast.parse((TESTS / "conftest.py").read_text()))
    bad = []
    for path in _test_files():
        tree = ast.parse(path.read_text())
        module_marks = _marks(*(n.value for n in tree.body if isinstance(n, ast.Assign)
                                and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)))
        starters = _starters({**shared, **_functions(tree)})
        tests = [(fn, set()) for fn in tree.body if isinstance(fn, ast.FunctionDef)]
        tests += [(fn, _marks(*cls.decorator_list)) for cls in tree.body if isinstance(cls, ast.ClassDef)
                  for fn in cls.body if isinstance(fn, ast.FunctionDef)]
        for fn, class_marks in tests:
            if not fn.name.startswith("test"):
                continue
            if (_calls(fn) | {a.arg for a in fn.args.args}) & (starters | PROCESS_CALLS):
                missing = REQUIRED - module_marks - class_marks - _marks(*fn.decorator_list)
                if missing:
                    bad.append(f"{path.relative_to(REPO)}::{fn.name} (no {', '.join(sorted(missing))})")
    return bad


def test_every_process_starting_test_has_the_marker_and_a_timeout():
    bad = unbounded_process_tests()
    assert not bad, "add @pytest.mark.process and @pytest.mark.timeout(N) to:\n" + "\n".join(bad)


def test_the_check_sees_processes_through_fixtures_and_helpers(tmp_path, monkeypatch):
    """The rule's own test: a test that starts a process only through a fixture or a helper is found,
    and a marked one, or one that starts nothing, is not."""
    (tmp_path / "conftest.py").write_text("import pytest\n@pytest.fixture\ndef server(app):\n    yield app\n")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def cli_twice():\n    run_cli('a')\n    run_cli('b')\n"
        "def test_through_helper():\n    cli_twice()\n"
        "def test_through_fixture(server):\n    pass\n"
        "def test_job(db, ws):\n    runs.launch(db, ws, {})\n"
        "def test_child():\n    subprocess.run(['true'])\n"
        "@pytest.mark.process\n@pytest.mark.timeout(5)\ndef test_bounded(page):\n    pass\n"
        "@pytest.mark.timeout(5)\ndef test_no_marker(browser):\n    pass\n"
        "def test_pure(tmp_path):\n    runs.get(None, 'r1')\n")
    monkeypatch.setitem(globals(), "TESTS", tmp_path)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert unbounded_process_tests() == [
        "test_x.py::test_through_helper (no process, timeout)", "test_x.py::test_through_fixture (no process, timeout)",
        "test_x.py::test_job (no process, timeout)", "test_x.py::test_child (no process, timeout)",
        "test_x.py::test_no_marker (no process)"]


def test_global_timeout_is_set(pytestconfig):
    """The last resort for a test that hangs where no one expected a process."""
    assert float(pytestconfig.getini("timeout") or 0) > 0


def test_no_test_module_imports_another():
    """Shared helpers live in conftest.py; a test module importing another drags in its fixtures and
    tests, and breaks when that module is split or renamed."""
    bad = []
    for path in _test_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{path.relative_to(REPO)}: {name}" for name in names
                    if name.startswith(("tests.test_", "tests.e2e.test_"))]
    assert not bad
