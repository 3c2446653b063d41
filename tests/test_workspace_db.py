import sqlite3

from tunelab import db, workspace as wsmod


def test_workspace_layout_under_tunelab_home(workspace):
    conn, ws = workspace
    for d in (ws.datasets_dir, ws.runs_dir, ws.models_dir):
        assert d.is_dir() and d.parent == ws.home
    assert ws.db_path.exists()


def test_db_is_wal_with_busy_timeout(workspace):
    conn, ws = workspace
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == db.BUSY_TIMEOUT_MS


def test_newer_release_opens_older_db(tmp_path, monkeypatch):
    """A DB made by a release with fewer migrations gains the missing ones and keeps its rows."""
    path = tmp_path / "old.db"
    every = db.MIGRATIONS
    monkeypatch.setattr(db, "MIGRATIONS", every[:1])  # the first release knew only the core tables
    old = db.connect(path)
    old.execute("INSERT INTO settings(key, value) VALUES ('gpu_hour_usd', '3.0')")
    old.close()
    monkeypatch.setattr(db, "MIGRATIONS", every + [("9999_probe", "CREATE TABLE probe (x INTEGER);")])
    new = db.connect(path)
    names = {r[0] for r in new.execute("SELECT name FROM _migrations")}
    assert names == {name for name, _ in every} | {"9999_probe"}
    assert {"probe", "datasets", "runs", "votes"} <= set(new.table_names())
    assert wsmod.get_setting(new, "gpu_hour_usd") == 3.0


def test_transaction_rolls_back_on_error(workspace):
    conn, _ = workspace
    try:
        with db.transaction(conn):
            conn.execute("INSERT INTO settings(key, value) VALUES ('cpu_hour_usd', '9')")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert conn.execute("SELECT count(*) FROM settings").fetchone()[0] == 0


def test_settings_typed_and_unknown_named(workspace):
    import pytest
    from tunelab.errors import UserError
    conn, _ = workspace
    wsmod.set_setting(conn, "max_concurrent_jobs", "3")
    assert wsmod.get_setting(conn, "max_concurrent_jobs") == 3
    with pytest.raises(UserError, match="max_concurrent_jobs"):
        wsmod.set_setting(conn, "max_concurrent_jobs", "many")
    with pytest.raises(UserError, match="nope"):
        wsmod.get_setting(conn, "nope")


def test_two_connections_see_each_other(workspace):
    conn, ws = workspace
    other = sqlite3.connect(ws.db_path)
    conn.execute("INSERT INTO settings(key, value) VALUES ('k', '1')")
    assert other.execute("SELECT value FROM settings WHERE key = 'k'").fetchone() == ("1",)
