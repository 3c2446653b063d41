"""Issue 13, paths and the database: hostile names and uploads stay out of paths, exports stay out of the
workspace, versions are checked against their hash, the workspace is private, and a missing, empty or
damaged tunelab.db is refused instead of being replaced by a fresh one (which would make everyone admin)."""
from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager

import pytest

from tunelab import datasets, db as dbmod, feedback, models, runs, workspace as wsmod
from tunelab.datasets import store
from tunelab.errors import UserError
from tests.conftest import REPO, run_cli

ACME = REPO / "data" / "samples" / "acme_router_sft.jsonl"


def _battles(path):
    rows = [{"model_a": "m1", "model_b": "m2", "winner": w, "judge": "j", "prompt": f"q{i}",
             "response_a": "a", "response_b": "b"} for i, w in enumerate(["model_a", "model_b", "model_a"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _import_acme(home):
    done = run_cli("data", "import", str(ACME), "--name", "acme", env_home=home)
    assert done.returncode == 0, done.stderr
    return home / "datasets" / "acme" / "v1" / "train.jsonl"


@contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------- 1. names and uploads never become paths unchecked

def test_upload_keeps_only_the_checked_extension(workspace, tmp_path):
    """A rewritten multipart filename naming a dataset's train.jsonl once overwrote it."""
    conn, ws = workspace
    version = datasets.import_file(conn, ws, ACME, "acme").version
    target = version.dir / "train.jsonl"
    before = target.read_bytes()
    for hostile in (str(target), "../../../train.jsonl", "..\\..\\x.jsonl"):
        with wsmod.saved_upload(hostile, b'{"instruction": "hi", "output": "yo"}\n', (".json", ".jsonl")) as path:
            assert path.name == "upload.jsonl" and not path.is_relative_to(ws.home)
            assert datasets.import_file(conn, ws, path, "up", source_name=hostile).version.rows == 1
    assert target.read_bytes() == before
    store.resolve(conn, ws, "acme@1").load()  # still matches its hash
    for bad in ("..", "x.jsonl/..", "x.py", ""):
        with pytest.raises(UserError, match="expected a .json, .jsonl file"), wsmod.saved_upload(bad, b"", (".json", ".jsonl")):
            pass


def test_campaign_model_and_run_names_are_checked(workspace, tmp_path, tiny_model_dir):
    conn, ws = workspace
    file = _battles(tmp_path / "battles.jsonl")
    with pytest.raises(UserError, match=r"campaign name '\.\./\.\./\.\./\.\./elsewhere/reg'"):
        feedback.import_judgments(conn, file, "arena", "../../../../elsewhere/reg")
    assert conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 0

    # The Register button writes exports/<campaign>-preferences.jsonl; a name that leads out is refused.
    feedback.import_judgments(conn, file, "arena", "team")
    escape = ws.exports_dir / ".." / ".." / "elsewhere-preferences.jsonl"
    with pytest.raises(UserError, match="inside the workspace"):
        feedback.export(conn, ws, "team", "trl", escape)
    assert not (tmp_path / "elsewhere-preferences.jsonl").exists()
    assert feedback.export(conn, ws, "team", "trl", ws.exports_dir / "team-preferences.jsonl")["rows"] == 3

    with pytest.raises(UserError, match=r"model name '\.\./evil'"):
        models.add_local(conn, tiny_model_dir, "../evil")
    with pytest.raises(UserError, match=r"model name '\.\./\.\./evil'"):
        runs.merge(conn, ws, "r1", "../../evil")
    outside = tmp_path / "x" / "final"
    outside.mkdir(parents=True)
    (outside / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match=r"run name '\.\./\.\./x'"):
        models.ModelSpec("tiny", "../../x").folders(conn, ws)


@pytest.mark.process
@pytest.mark.timeout(120)
def test_models_add_name_with_a_path_exits_2(tmp_path, tiny_model_dir):
    done = run_cli("models", "add", str(tiny_model_dir), "--name", "../../outside", env_home=tmp_path / "home")
    assert done.returncode == 2 and "model name '../../outside'" in done.stderr, done.stderr


# ---------------------------------------------------------------- 2. exports stay out of the workspace, written whole

@pytest.mark.process
@pytest.mark.timeout(120)
def test_export_refuses_paths_inside_the_workspace(tmp_path):
    home = tmp_path / "home"
    train = _import_acme(home)
    before = train.read_bytes()
    for out in (train, home / "tunelab.db.jsonl", home / "exports" / ".." / "datasets" / "acme" / "v1" / "train.jsonl"):
        done = run_cli("data", "export", "acme", "--format", "jsonl", "--out", str(out), env_home=home)
        assert done.returncode == 2, done.stderr
        assert str(out) in done.stderr and "inside the workspace" in done.stderr and "Traceback" not in done.stderr
    assert train.read_bytes() == before and not (home / "tunelab.db.jsonl").exists()
    for out in (tmp_path / "acme.jsonl", home / "exports" / "acme.jsonl"):
        done = run_cli("data", "export", "acme", "--format", "jsonl", "--out", str(out), env_home=home)
        assert done.returncode == 0 and out.read_bytes() == before, done.stderr


def test_a_failed_export_leaves_the_old_file(workspace, tmp_path):
    _, ws = workspace
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")

    def half(tmp):
        tmp.write_text("half of the new")
        raise OSError("disk full")
    with pytest.raises(OSError):
        wsmod.write_export(ws, out, half)
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir() if p.name != "home"] == ["out.jsonl"]


# ---------------------------------------------------------------- 3. versions are checked against their hash on read

@pytest.mark.process
@pytest.mark.timeout(120)
def test_a_changed_version_file_is_refused_on_read(tmp_path):
    home = tmp_path / "home"
    train = _import_acme(home)
    data = train.read_bytes()
    train.write_bytes(data.replace(b"router", b"ROUTER", 1))
    out = tmp_path / "x.jsonl"
    done = run_cli("data", "export", "acme", "--format", "jsonl", "--out", str(out), env_home=home)
    assert done.returncode == 2, done.stderr
    assert "dataset acme@1: train.jsonl changed on disk" in done.stderr and "content hash" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()

    conn, ws = dbmod.connect(home / "tunelab.db"), wsmod.Workspace(home)
    with pytest.raises(UserError, match=r"acme@1: train\.jsonl changed on disk"):
        store.resolve(conn, ws, "acme").load()  # what training and eval read through
    train.write_bytes(data)
    assert len(store.resolve(conn, ws, "acme").load()) == store.resolve(conn, ws, "acme").rows
    train.unlink()
    with pytest.raises(UserError, match=r"acme@1: train\.jsonl is missing"):
        store.resolve(conn, ws, "acme").load()


# ---------------------------------------------------------------- 4. the workspace is private

@pytest.mark.process
@pytest.mark.timeout(120)
def test_workspace_is_private(tmp_path, monkeypatch):
    home = tmp_path / "home"
    with _umask(0o022):
        home.mkdir(mode=0o755)
        _import_acme(home)  # a real CLI import from a permissive shell
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(home) == 0o700
    for d in ("datasets", "runs", "models", "datasets/acme", "datasets/acme/v1"):
        assert mode(home / d) == 0o700, d
    files = [home / "tunelab.db", *(home / "datasets" / "acme" / "v1").iterdir()]
    files += [p for p in home.iterdir() if p.name.startswith("tunelab.db") and p.is_file()]
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}

    monkeypatch.setenv("TUNELAB_HOME", str(home))
    with _umask(0o022):
        conn = dbmod.connect(wsmod.current().db_path)  # what the app and the run processes do
        conn.execute("INSERT INTO settings(key, value) VALUES ('gpu_hour_usd', '3')")
        wal = home / "tunelab.db-wal"
        assert wal.exists() and mode(wal) == 0o600 and mode(home / "tunelab.db-shm") == 0o600
        conn.close()


# ---------------------------------------------------------------- 5-7. the database file

@pytest.mark.process
@pytest.mark.timeout(180)
def test_missing_or_empty_db_beside_data_is_refused(tmp_path):
    home = tmp_path / "home"
    train = _import_acme(home)
    backup = tmp_path / "backup"
    backup.mkdir()
    for p in home.glob("tunelab.db*"):
        p.rename(backup / p.name)
    done = run_cli("data", "list", env_home=home)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "tunelab.db is missing" in done.stderr and "backup" in done.stderr and "move datasets/ and runs/" in done.stderr
    assert not (home / "tunelab.db").exists()

    (home / "tunelab.db").write_bytes(b"")
    done = run_cli("users", "list", env_home=home)
    assert done.returncode == 2 and "tunelab.db is empty" in done.stderr, done.stderr
    assert (home / "tunelab.db").stat().st_size == 0 and train.exists()

    for p in backup.iterdir():
        p.replace(home / p.name)
    done = run_cli("data", "list", "--json", env_home=home)
    assert done.returncode == 0 and [d["ref"] for d in json.loads(done.stdout)] == ["acme@1"], done.stderr


@pytest.mark.process
@pytest.mark.timeout(120)
def test_damaged_db_is_refused_and_left_alone_even_in_an_empty_workspace(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    garbage = b"this is not a database\n" * 200
    (home / "tunelab.db").write_bytes(garbage)
    done = run_cli("data", "list", env_home=home)
    assert done.returncode == 2, done.stderr
    assert "damaged or not a SQLite database" in done.stderr and "Traceback" not in done.stderr
    assert (home / "tunelab.db").read_bytes() == garbage

    # A real database with a page overwritten fails PRAGMA quick_check.
    path = tmp_path / "bad" / "tunelab.db"
    path.parent.mkdir()
    conn = dbmod.connect(path)
    conn.execute("CREATE TABLE filler (x TEXT)")
    for i in range(2000):
        conn.execute("INSERT INTO filler(x) VALUES (?)", ["y" * 200 + str(i)])
    conn.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    raw[20 * page:22 * page] = b"\xff" * (2 * page)
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="damaged or not a SQLite database"):
        dbmod.connect(path)
    assert path.read_bytes() == bytes(raw)

    # Another program's SQLite file is not migrated into tunelab's either.
    import sqlite3
    other = tmp_path / "other" / "tunelab.db"
    other.parent.mkdir()
    sqlite3.connect(other).execute("CREATE TABLE notes (x)").connection.close()
    with pytest.raises(UserError, match="not tunelab's"):
        dbmod.connect(other)


def test_fresh_workspace_and_empty_db_without_data_just_work(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "new"))
    ws = wsmod.current()
    ws.db_path.write_bytes(b"")  # e.g. a first start that died before its first write
    conn = dbmod.connect(ws.db_path)
    assert conn.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(dbmod.MIGRATIONS)


def test_version_folder_without_a_row_is_moved_aside(workspace):
    """A DB restored from an older backup does not know the newest versions: their folders are kept."""
    conn, ws = workspace
    first = datasets.import_file(conn, ws, ACME, "acme").version
    data = (first.dir / "train.jsonl").read_bytes()
    conn.execute("DELETE FROM datasets WHERE name = 'acme'")  # cascades to its versions
    again = datasets.import_file(conn, ws, ACME, "acme").version
    assert again.ref == "acme@1"
    [aside] = ws.orphaned_dir.iterdir()
    assert aside.name.split("-")[2:4] == ["acme", "v1"] and (aside / "train.jsonl").read_bytes() == data
