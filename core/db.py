"""The SQLite database: WAL, a busy timeout, and named migrations.

Each migration runs once and is recorded in `_migrations`, so a newer release opens an older DB
and adds what it lacks. Append new migrations at the end; never edit one that has shipped.

The connection is in autocommit mode. For read-then-write, use `transaction(db)`, which takes
the write lock up front (BEGIN IMMEDIATE). Inside it use `db.execute`, not sqlite-utils' table
helpers: those wrap themselves in `with conn:`, which would commit the outer transaction early.
"""
from __future__ import annotations

import fcntl
import importlib.abc
import os
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tunelab.errors import UserError


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """While this thread imports sqlite-utils, pandas and numpy look absent to it.

    sqlite-utils imports both when it is imported, only to map their types in its table helpers,
    which tunelab does not use (it writes through `db.execute`). That cost 0.4 s of the app's cold
    start (bench/ui.py). Other threads, and later imports, see pandas and numpy as usual.
    """

    def __init__(self):
        self.thread = threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        if name in ("pandas", "numpy") and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        # Anything else: no answer here, so the usual finders look.


_finder = _WithoutPandas()
sys.meta_path.insert(0, _finder)
try:
    import sqlite_utils
finally:
    sys.meta_path.remove(_finder)

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
    ("0002_datasets", """
    CREATE TABLE datasets (
        name TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    );
    CREATE TABLE dataset_versions (
        name TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('sft', 'preference', 'kto', 'prompts')),
        rows INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        splits_json TEXT NOT NULL,              -- {"train": 900, "validation": 100}
        format TEXT,                            -- the source format an import detected or was given
        source_name TEXT,                       -- the imported file's name, or e.g. 'campaign:3'
        source_hash TEXT,
        transform TEXT NOT NULL,                -- import | dedup_exact | dedup_near | redact_pii | ...
        params_json TEXT NOT NULL,
        parent TEXT,                            -- 'name@version' this one was made from
        report_json TEXT NOT NULL,              -- what the step did: counts, removed examples
        created_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    );
    """),
    ("0003_runs", """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        method TEXT NOT NULL,                   -- sft | reward | dpo | ... (a module in core/train/)
        base_model TEXT NOT NULL,
        dataset TEXT NOT NULL,                  -- 'name@version', pinned at launch
        tuning TEXT NOT NULL,                   -- full | lora | qlora
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'stopped',
                                                'interrupted')),
        created_at REAL NOT NULL,
        started_at REAL,                        -- first start
        finished_at REAL,
        pid INTEGER,                            -- the run process while it runs
        proc_start REAL,                        -- its start time, so a reused pid is not taken for it
        attempt_started_at REAL,                -- this start or resume
        run_seconds REAL NOT NULL DEFAULT 0,    -- process time summed over starts and resumes
        stop_requested_at REAL,
        error TEXT,
        config_json TEXT NOT NULL,              -- the resolved config (also config.yaml in the folder)
        folder TEXT NOT NULL,
        init_from TEXT,
        device TEXT,                            -- cpu | cuda, where the estimate was made
        est_seconds REAL,
        est_usd REAL,
        hour_usd REAL                           -- the price per hour used for the estimate and the actual
    );
    CREATE INDEX runs_status ON runs(status, created_at);
    """),
    ("0005_eval", """
    CREATE TABLE eval_runs (
        id INTEGER PRIMARY KEY,
        label TEXT NOT NULL,                    -- the leaderboard row: 'model', 'model+run', 'model [rag]'
        model TEXT NOT NULL,                    -- registered model name
        adapter TEXT,                           -- run id whose LoRA adapter was applied
        baseline TEXT CHECK (baseline IS NULL OR baseline IN ('prompting', 'rag')),
        dataset TEXT NOT NULL,                  -- 'name@version', pinned at launch
        reward TEXT,                            -- run id of the reward model, if any
        config_json TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'stopped')),
        progress REAL NOT NULL DEFAULT 0,
        message TEXT,
        metrics_json TEXT,                      -- set when completed
        error TEXT,
        pid INTEGER,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX eval_runs_dataset ON eval_runs(dataset, status, finished_at);
    """),
    ("0004_feedback", """
    CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        source TEXT NOT NULL,                   -- 'dataset:name@version' | 'pasted' | 'import:arena' | ...
        models_json TEXT NOT NULL,              -- model specs: NAME or NAME+RUN_ID
        samples INTEGER NOT NULL,
        overlap INTEGER NOT NULL,               -- K: votes wanted per pair
        settings_json TEXT NOT NULL,            -- tunelab.generate.SamplingSettings
        guidelines TEXT NOT NULL DEFAULT '',
        judge TEXT,                             -- the source of imported judgments
        status TEXT NOT NULL CHECK (status IN ('pending', 'generating', 'ready', 'failed')),
        progress REAL NOT NULL DEFAULT 0,
        progress_message TEXT,
        pid INTEGER,
        error TEXT,
        created_by INTEGER,
        created_at REAL NOT NULL
    );
    CREATE TABLE campaign_prompts (
        id INTEGER PRIMARY KEY,
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        messages_json TEXT NOT NULL,
        gold INTEGER NOT NULL DEFAULT 0,        -- a gold pair's prompt, answered by the gold file
        UNIQUE (campaign_id, idx)
    );
    CREATE TABLE responses (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES campaign_prompts(id) ON DELETE CASCADE,
        model TEXT NOT NULL,                    -- model spec, 'gold', or an imported generator
        sample INTEGER NOT NULL,
        text TEXT NOT NULL,
        settings_json TEXT NOT NULL,
        seed INTEGER,
        created_at REAL NOT NULL,
        UNIQUE (prompt_id, model, sample)
    );
    CREATE TABLE pairs (
        id INTEGER PRIMARY KEY,
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        prompt_id INTEGER NOT NULL REFERENCES campaign_prompts(id) ON DELETE CASCADE,
        response_a INTEGER NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
        response_b INTEGER NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
        gold TEXT CHECK (gold IS NULL OR gold IN ('a', 'b')),   -- the known answer of a gold pair
        votes_needed INTEGER,                   -- K; NULL: every annotator once (gold) or no claims (imported)
        n_votes INTEGER NOT NULL DEFAULT 0,     -- kept in step with votes inside each vote's transaction
        position REAL NOT NULL                  -- random order in which pairs are handed out
    );
    CREATE INDEX pairs_order ON pairs(campaign_id, position);
    CREATE INDEX pairs_responses ON pairs(response_a, response_b);
    CREATE TABLE assignments (
        id INTEGER PRIMARY KEY,
        pair_id INTEGER NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
        campaign_id INTEGER NOT NULL,
        annotator_id INTEGER NOT NULL,          -- users.id; 0 is the local admin
        annotator TEXT NOT NULL,
        left_is_a INTEGER NOT NULL,             -- the side randomization of this showing
        claimed_at REAL NOT NULL,
        shown_at REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'voted', 'skipped', 'expired')),
        UNIQUE (pair_id, annotator_id)
    );
    CREATE INDEX assignments_annotator ON assignments(campaign_id, annotator_id, status);
    CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        pair_id INTEGER NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
        campaign_id INTEGER NOT NULL,
        annotator_id INTEGER NOT NULL,          -- users.id (0 local admin); negative: an imported judge
        annotator TEXT NOT NULL,
        choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),   -- in pair terms
        strength INTEGER CHECK (strength IS NULL OR strength IN (1, 2)),      -- 1 slightly, 2 much better
        left_is_a INTEGER,                      -- NULL when the source did not say
        left_model TEXT,                        -- the model shown on the left
        shown_at REAL,
        cast_at REAL NOT NULL,
        seconds REAL,
        UNIQUE (pair_id, annotator_id)
    );
    CREATE INDEX votes_annotator ON votes(campaign_id, annotator_id, cast_at);
    """),
    ("0009_runs_backend", """
    ALTER TABLE runs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local';  -- local | ray
    ALTER TABLE runs ADD COLUMN ray_job_id TEXT;   -- backend ray: the job's submission id, this attempt's
    """),
    ("0010_accounts", """
    -- users rebuilt with AUTOINCREMENT, so a removed user's id (kept in votes and assignments) is
    -- never given to a new user; dropping the old table ends every session (ON DELETE CASCADE).
    CREATE TABLE users_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'engineer', 'annotator', 'viewer')),
        password_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0     -- 1: cannot sign in; the row stays for its votes
    );
    INSERT INTO users_new(id, name, role, password_hash, created_at)
        SELECT id, name, role, password_hash, created_at FROM users;
    DROP TABLE users;
    ALTER TABLE users_new RENAME TO users;
    ALTER TABLE sessions ADD COLUMN last_seen_at REAL NOT NULL DEFAULT 0;   -- for the idle timeout
    CREATE TABLE sign_in_failures (             -- for throttling; shared by every server process
        name TEXT NOT NULL,                     -- the user name tried, existing or not
        client TEXT NOT NULL,                   -- the client's address ('' when unknown)
        at REAL NOT NULL
    );
    CREATE INDEX sign_in_failures_name ON sign_in_failures(name, at);
    CREATE INDEX sign_in_failures_client ON sign_in_failures(client, at);
    """),
    ("0011_jobs", """
    -- One lifecycle for every background process (core/jobs.py). The lifecycle columns of runs, eval_runs
    -- and campaigns move here, so that one table, written by one module, says what is running.
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,                     -- train | eval | generate | ... (tunelab.jobs.ENTRY_POINTS)
        target TEXT NOT NULL,                   -- what it works on: a run id, an eval id, a campaign name
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'stopped',
                                                'interrupted')),
        folder TEXT NOT NULL,                   -- under the workspace home: status.json and the log
        backend TEXT NOT NULL DEFAULT 'local' CHECK (backend IN ('local', 'ray')),
        ray_address TEXT,
        ray_resources TEXT,                     -- JSON: the CPUs and GPUs the Ray job asks for
        ray_job_id TEXT,                        -- backend ray: this attempt's submission id
        pid INTEGER,                            -- this (or the last) attempt's process
        proc_start REAL,                        -- its start time, so a reused pid is not taken for it
        created_at REAL NOT NULL,
        started_at REAL,                        -- first start
        finished_at REAL,
        attempt_started_at REAL,                -- this start or resume
        run_seconds REAL NOT NULL DEFAULT 0,    -- process time summed over attempts
        stop_requested_at REAL,
        error TEXT,
        UNIQUE (kind, target)
    );
    CREATE INDEX jobs_status ON jobs(status, created_at);
    INSERT INTO jobs(kind, target, status, folder, backend, ray_address, ray_job_id, pid, proc_start, created_at,
                     started_at, finished_at, attempt_started_at, run_seconds, stop_requested_at, error)
        SELECT 'train', id, status, 'runs/' || id, backend, json_extract(config_json, '$.ray_address'), ray_job_id,
               pid, proc_start, created_at, started_at, finished_at, attempt_started_at, run_seconds,
               stop_requested_at, error FROM runs ORDER BY created_at;
    INSERT INTO jobs(kind, target, status, folder, pid, created_at, started_at, finished_at, attempt_started_at,
                     error)
        SELECT 'eval', CAST(id AS TEXT), status, 'evals/' || id, pid, created_at, started_at, finished_at,
               started_at, error FROM eval_runs ORDER BY id;
    INSERT INTO jobs(kind, target, status, folder, pid, created_at, error)
        SELECT 'generate', name, CASE status WHEN 'generating' THEN 'running' ELSE 'failed' END,
               'campaigns/' || name, pid, created_at, error FROM campaigns WHERE status IN ('generating', 'failed');
    UPDATE campaigns SET status = 'pending' WHERE status IN ('generating', 'failed');  -- now: pending | ready
    DROP INDEX runs_status;
    ALTER TABLE runs DROP COLUMN status;
    ALTER TABLE runs DROP COLUMN started_at;
    ALTER TABLE runs DROP COLUMN finished_at;
    ALTER TABLE runs DROP COLUMN pid;
    ALTER TABLE runs DROP COLUMN proc_start;
    ALTER TABLE runs DROP COLUMN attempt_started_at;
    ALTER TABLE runs DROP COLUMN run_seconds;
    ALTER TABLE runs DROP COLUMN stop_requested_at;
    ALTER TABLE runs DROP COLUMN error;
    ALTER TABLE runs DROP COLUMN backend;
    ALTER TABLE runs DROP COLUMN ray_job_id;
    DROP INDEX eval_runs_dataset;
    ALTER TABLE eval_runs DROP COLUMN status;
    ALTER TABLE eval_runs DROP COLUMN progress;
    ALTER TABLE eval_runs DROP COLUMN message;
    ALTER TABLE eval_runs DROP COLUMN error;
    ALTER TABLE eval_runs DROP COLUMN pid;
    ALTER TABLE eval_runs DROP COLUMN started_at;
    ALTER TABLE eval_runs DROP COLUMN finished_at;
    CREATE INDEX eval_runs_dataset ON eval_runs(dataset);
    ALTER TABLE campaigns DROP COLUMN pid;
    ALTER TABLE campaigns DROP COLUMN error;
    UPDATE settings SET key = 'max_concurrent_jobs' WHERE key = 'max_concurrent_runs';
    """),
    ("0012_judges", """
    -- Judges (core/feedback/judges.py) vote on a campaign's pairs as non-human annotators. Their verdicts
    -- live in `judgments`, apart from the people's `votes`, so they never count as human agreement.
    ALTER TABLE campaigns ADD COLUMN sampling TEXT NOT NULL DEFAULT 'uniform'
        CHECK (sampling IN ('uniform', 'active'));        -- how the next pair is chosen (feedback/sampling.py)
    ALTER TABLE pairs ADD COLUMN triaged_by TEXT;         -- the judge whose confident verdict stands; not sent to people
    CREATE TABLE judges (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('reward', 'chat', 'endpoint')),
        spec_json TEXT NOT NULL,                -- what it is: run id, model spec or base_url/model/key variable
        created_at REAL NOT NULL,
        UNIQUE (campaign_id, name)
    );
    CREATE TABLE judgments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pair_id INTEGER NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        judge_id INTEGER NOT NULL REFERENCES judges(id) ON DELETE CASCADE,
        choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),  -- the verdict, in pair terms
        margin REAL,                            -- how sure: reward(a) - reward(b), or P(a) - P(b) over both orders
        first_a TEXT,                           -- verdict with A shown first (pair terms); NULL: no order (reward)
        first_b TEXT,                           -- verdict with B shown first, mapped back to pair terms
        cast_at REAL NOT NULL,
        UNIQUE (pair_id, judge_id)
    );
    CREATE INDEX judgments_campaign ON judgments(campaign_id, judge_id);
    """),
    ("0013_votes_by_pair", """
    -- The leaderboard and active sampling count a campaign's votes per (pair, choice): read in this order
    -- from the index alone, 2M votes counted in 0.23 s instead of 0.80 s (bench/leaderboard_scale.py).
    CREATE INDEX votes_by_pair ON votes(campaign_id, pair_id, choice, cast_at);
    """),
]


def connect(path: str | Path) -> sqlite_utils.Database:
    """Open (creating and migrating if needed) the database at `path`. One per thread or session.

    Never makes a fresh DB beside data it does not know, and never writes to a damaged one: a
    missing, empty or foreign DB in a workspace whose datasets/ or runs/ hold anything, or a file that
    is not a sound SQLite database, is a UserError and the files stay as they are. A fresh DB there
    would have no users (so every visitor is admin) and would take the version folders for orphans."""
    from tunelab.workspace import Workspace
    path = Path(path)
    ws = Workspace(path.parent)
    if not path.exists():
        _refuse_fresh(path, ws, "is missing")
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        _quick_check(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise UserError(f"{path} is damaged or not a SQLite database ({exc}); it was left as it is. Restore "
                        "it from a backup, or move it away to start a fresh database") from None
    if tables and "_migrations" not in tables:
        conn.close()
        raise UserError(f"{path} is a SQLite database but not tunelab's (no _migrations table); it was left "
                        "as it is. Restore tunelab's database from a backup, or move this file away")
    if not tables:
        try:
            _refuse_fresh(path, ws, "is empty")
        except UserError:
            conn.close()
            raise
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


def _refuse_fresh(path: Path, ws, state: str) -> None:
    if ws.holds_data():
        raise UserError(f"{path} {state}, but {ws.home} holds datasets or runs that only it knows; nothing was "
                        f"changed. Restore tunelab.db from a backup, or move {ws.datasets_dir.name}/ and "
                        f"{ws.runs_dir.name}/ out of {ws.home} to start a fresh workspace")


_sound: set[tuple] = set()  # (path, inode, size, mtime) of files that passed quick_check in this process


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """PRAGMA quick_check, once per process for each state of the file (it reads every page)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _sound:
        return
    problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError("quick_check: " + "; ".join(problems[:3]))
    _sound.add(key)


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
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

    Writers first queue on a blocking flock beside the DB. SQLite's busy handler polls with sleeps
    that grow to 100 ms, so with 20 annotators voting at once the unlucky ones waited hundreds of ms
    (bench/votes.py); a flock is handed over the moment it is released. Each connection opens its
    own lock file handle, so threads with their own connections exclude each other too.
    """
    lock = _writer_lock(db)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def _writer_lock(db: sqlite_utils.Database):
    fh = getattr(db, "_writer_lock_file", None)
    if fh is None:
        path = db.execute("PRAGMA database_list").fetchone()[2]
        fh = db._writer_lock_file = open(f"{path}.write-lock" if path else os.devnull, "a")
    return fh


def open_workspace_db():
    """The current workspace's database."""
    from tunelab import workspace
    return connect(workspace.current().db_path)


def change_counter(path: str | Path):
    """A function giving a number that changes whenever any connection, in any process, commits to the
    database at `path`: SQLite's PRAGMA data_version on a connection of the counter's own, which never
    writes. A key for a cache of something read from the database that costs no query (the Leaderboard
    page's board). Numbers compare only within one counter; threads may share it."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    lock = threading.Lock()

    def version() -> int:
        with lock:
            return conn.execute("PRAGMA data_version").fetchone()[0]
    return version
