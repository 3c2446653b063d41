"""The SQLite database: WAL, a busy timeout, and named migrations.

Each migration runs once and is recorded in `_migrations`, so a newer release opens an older DB
and adds what it lacks. Append new migrations at the end; never edit one that has shipped.

The connection is in autocommit mode. For read-then-write, use `transaction(db)`, which takes
the write lock up front (BEGIN IMMEDIATE). Inside it use `db.execute`, not sqlite-utils' table
helpers: those wrap themselves in `with conn:`, which would commit the outer transaction early.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 10_000

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_core", """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'engineer', 'annotator', 'viewer')),
        password_hash TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT 'base',      -- base | merged | reward
        source TEXT NOT NULL,                   -- 'bundled:<package>' | 'local' | 'run:<id>'
        path TEXT,                              -- the safetensors folder once prepared
        params INTEGER,
        size_bytes INTEGER,
        chat_template TEXT,
        created_at REAL NOT NULL
    );
    """),
]


def connect(path: str | Path) -> sqlite_utils.Database:
    """Open (creating and migrating if needed) the database at `path`. One per thread or session."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations this DB lacks; returns their names."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with transaction(db):
            # Another process may have applied it while we waited for the lock.
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                continue
            for statement in _statements(sql):
                db.execute(statement)
            db.execute("INSERT INTO _migrations(name, applied_at) VALUES (?, ?)", [name, time.time()])
        applied.append(name)
    return applied


def _statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


@contextmanager
def transaction(db: sqlite_utils.Database):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")


def open_workspace_db():
    """The current workspace's database."""
    from core import workspace
    return connect(workspace.current().db_path)
