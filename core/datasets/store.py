"""Immutable dataset versions: a folder of canonical JSONL files plus one row in `dataset_versions`.

A version is written whole or not at all: its files go into a temporary folder, which is renamed to
`v<N>` inside the write transaction that inserts the DB row. A `v<N>` folder without a row (the
process died between rename and commit, or the DB was restored from an older backup) is moved to
`<home>/orphaned/` the next time that dataset gets a version, never deleted; temporary folders of dead
writers are removed. Readers only ever look at versions that have a row, and check the files against
the row's content hash before using them (`DatasetVersion.files`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import UserError
from tunelab import workspace
from tunelab.workspace import Workspace

# tunelab.db and tunelab.jobs are imported where used: a Ray cluster without the workspace (core/remote.py)
# imports tunelab.datasets for its pure row helpers and has no sqlite-utils.

log = logging.getLogger(__name__)

KINDS = ("sft", "preference", "kto", "prompts")
SPLITS = ("train", "validation", "test")
COLUMNS = ("name, version, kind, rows, content_hash, splits_json, format, source_name, source_hash, transform, "
           "params_json, parent, report_json, created_at")


@dataclass
class DatasetVersion:
    name: str
    version: int
    kind: str
    rows: int
    content_hash: str
    dir: Path
    splits: dict[str, int] = field(default_factory=dict)
    format: str | None = None
    source_name: str | None = None
    source_hash: str | None = None
    transform: str = "import"
    params: dict = field(default_factory=dict)
    parent: str | None = None
    report: dict = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def files(self) -> dict[str, Path]:
        """The split files, checked against the content hash recorded when they were written."""
        files = {s: self.dir / f"{s}.jsonl" for s in SPLITS if s in self.splits}
        _verify(self, files)
        return files

    def load(self, split: str = "train") -> list[dict]:
        if split not in self.splits:
            raise UserError(f"dataset {self.ref} has no {split!r} split; it has {', '.join(self.splits)}")
        with open(self.files[split], encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    def load_all(self) -> list[dict]:
        """Every row, the splits concatenated in train, validation, test order."""
        return [row for split in self.splits for row in self.load(split)]

    def summary(self) -> dict:
        return {"ref": self.ref, "name": self.name, "version": self.version, "kind": self.kind, "rows": self.rows,
                "splits": self.splits, "content_hash": self.content_hash, "format": self.format,
                "source": self.source_name, "source_hash": self.source_hash, "transform": self.transform,
                "params": self.params, "parent": self.parent, "created_at": self.created_at,
                "dir": str(self.dir)}


def _from_row(ws: Workspace, r) -> DatasetVersion:
    (name, version, kind, rows, content_hash, splits_json, fmt, source_name, source_hash, transform, params_json,
     parent, report_json, created_at) = r
    return DatasetVersion(name, version, kind, rows, content_hash, _dataset_dir(ws, name) / f"v{version}",
                          json.loads(splits_json), fmt, source_name, source_hash, transform,
                          json.loads(params_json), parent, json.loads(report_json), created_at)


def check_name(name: str) -> str:
    return workspace.check_name(name, "dataset")


_verified: set[tuple] = set()  # (hash, (path, inode, size, mtime) per file) already checked in this process


def _verify(version: DatasetVersion, files: dict[str, Path]) -> None:
    """Recompute the content hash as `_write_rows` made it (split order as recorded); a UserError names
    the version and the files that differ. Checked once per process for each state of the files."""
    stats = []
    for path in files.values():
        if not path.is_file():
            raise UserError(f"dataset {version.ref}: {path.name} is missing from {version.dir}; restore the "
                            "folder from a backup")
        st = path.stat()
        stats.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    key = (version.content_hash, tuple(stats))
    if key in _verified:
        return
    digest = hashlib.sha256()
    for split in version.splits:  # the same bytes _write_rows hashed, read in blocks: memory stays flat
        digest.update(split.encode() + b"\0")
        with open(version.dir / f"{split}.jsonl", "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    if digest.hexdigest() != version.content_hash:
        # The hash covers every split; name the files touched after the version was written, if any.
        changed = [p.name for p in files.values() if p.stat().st_mtime > version.created_at + 1]
        raise UserError(f"dataset {version.ref}: {', '.join(changed or [p.name for p in files.values()])} changed "
                        "on disk since it was written (content hash mismatch); versions are immutable, so restore "
                        f"{version.dir} from a backup, or import the data again as a new version")
    _verified.add(key)


def _dataset_dir(ws: Workspace, name: str) -> Path:
    """`datasets/<name>`, the name checked and the folder confirmed to lie inside datasets/."""
    return workspace.inside(ws.datasets_dir, ws.datasets_dir / check_name(name))


def parse_ref(ref: str) -> tuple[str, int | None]:
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    version = version.removeprefix("v")
    if not version.isdigit():
        raise UserError(f"dataset {ref!r}: the version after '@' must be a number, e.g. {name}@2")
    return name, int(version)


def resolve(db, ws: Workspace, ref: str) -> DatasetVersion:
    """`name@version`, or `name` for its latest version."""
    name, version = parse_ref(ref)
    if version is None:
        row = db.execute(f"SELECT {COLUMNS} FROM dataset_versions WHERE name = ? ORDER BY version DESC LIMIT 1",
                         [name]).fetchone()
    else:
        row = db.execute(f"SELECT {COLUMNS} FROM dataset_versions WHERE name = ? AND version = ?",
                         [name, version]).fetchone()
    if row is None:
        known = [r[0] for r in db.execute("SELECT name FROM datasets ORDER BY name").fetchall()]
        if name in known:
            raise UserError(f"dataset {ref!r}: no such version; see `tunelab data show {name}`")
        raise UserError(f"dataset {ref!r} not found; known datasets: {', '.join(known) or '(none)'}")
    return _from_row(ws, row)


def versions(db, ws: Workspace, name: str) -> list[DatasetVersion]:
    rows = db.execute(f"SELECT {COLUMNS} FROM dataset_versions WHERE name = ? ORDER BY version", [name]).fetchall()
    return [_from_row(ws, r) for r in rows]


def list_datasets(db) -> list[dict]:
    """One line per dataset: its latest version's kind and rows, and how many versions it has."""
    rows = db.execute(
        "SELECT v.name, v.version, v.kind, v.rows, v.splits_json, v.transform, n.count, d.created_at "
        "FROM dataset_versions v JOIN datasets d ON d.name = v.name "
        "JOIN (SELECT name, max(version) AS latest, count(*) AS count FROM dataset_versions GROUP BY name) n "
        "ON n.name = v.name AND n.latest = v.version ORDER BY v.name").fetchall()
    return [{"name": r[0], "latest": r[1], "ref": f"{r[0]}@{r[1]}", "kind": r[2], "rows": r[3],
             "splits": json.loads(r[4]), "last_step": r[5], "versions": r[6], "created_at": r[7]} for r in rows]


def lineage(db, ws: Workspace, ref: str) -> list[DatasetVersion]:
    """The chain of versions this one was made from, oldest first, ending with it."""
    chain = [resolve(db, ws, ref)]
    while chain[-1].parent and len(chain) < 1000:
        chain.append(resolve(db, ws, chain[-1].parent))
    return chain[::-1]


def _write_rows(folder: Path, splits: dict[str, Iterable[dict]]) -> tuple[str, dict[str, int]]:
    """Write `<split>.jsonl` files row by row (an import streams its rows through, so a file is never
    held whole); returns the sha256 over split names and file bytes, and the rows per split."""
    digest, counts = hashlib.sha256(), {}
    for split, rows in splits.items():
        digest.update(split.encode() + b"\0")
        counts[split] = 0
        with open(folder / f"{split}.jsonl", "wb") as fh:
            for r in rows:
                line = (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")
                fh.write(line)
                digest.update(line)
                counts[split] += 1
    return digest.hexdigest(), counts


def _clean_orphans(db, ws: Workspace, name: str) -> None:
    """Inside the write lock: move version folders without a DB row to orphaned/ (they may be the data of a
    DB restored from an older backup) and remove dead writers' temp folders (never a version)."""
    from tunelab import jobs
    folder = _dataset_dir(ws, name)
    if not folder.is_dir():
        return
    known = {r[0] for r in db.execute("SELECT version FROM dataset_versions WHERE name = ?", [name]).fetchall()}
    for child in folder.iterdir():
        if re.fullmatch(r"v\d+", child.name) and int(child.name[1:]) not in known:
            ws.orphaned_dir.mkdir(mode=0o700, exist_ok=True)
            aside = ws.orphaned_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{child.name}-{uuid.uuid4().hex[:6]}"
            child.rename(aside)
            log.warning("dataset %s: %s has no row in the database; moved it to %s", name, child, aside)
        m = re.fullmatch(r"\.tmp-(\d+)-\w+", child.name)
        if m and not jobs.alive(int(m.group(1))):
            shutil.rmtree(child, ignore_errors=True)


def write_version(db, ws: Workspace, name: str, splits: dict[str, Iterable[dict]], kind: str, transform: str,
                  params: dict, parent: str | None = None, source_name: str | None = None,
                  source_hash: str | None = None, fmt: str | None = None,
                  report: dict | Callable[[], dict] | None = None) -> DatasetVersion:
    """Write a new version of `name` atomically (files and DB row together) and return it. The rows may
    be any iterables, read once: an import streams a generator that raises UserError if the file turns
    out bad, and then nothing is left behind. `report` may be a function, called once the rows are written."""
    check_name(name)
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    base = _dataset_dir(ws, name)
    made_base, written = not base.exists(), False
    tmp = base / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        content_hash, counts = _write_rows(tmp, splits)
        total = sum(counts.values())
        if total == 0:
            raise UserError(f"dataset {name!r}: no rows left to write")
        report = (report() if callable(report) else report) or {}
        now = time.time()
        from tunelab import db as dbmod
        with dbmod.transaction(db):
            _clean_orphans(db, ws, name)
            version = (db.execute("SELECT max(version) FROM dataset_versions WHERE name = ?",
                                  [name]).fetchone()[0] or 0) + 1
            meta = {"name": name, "version": version, "kind": kind, "rows": total, "splits": counts,
                    "content_hash": content_hash, "format": fmt, "source_name": source_name,
                    "source_hash": source_hash, "transform": transform, "params": params, "parent": parent,
                    "report": report, "created_at": now}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str))
            final = base / f"v{version}"
            tmp.rename(final)
            try:
                db.execute("INSERT OR IGNORE INTO datasets(name, created_at) VALUES (?, ?)", [name, now])
                db.execute(f"INSERT INTO dataset_versions({COLUMNS}) VALUES ({', '.join('?' * 14)})",
                           [name, version, kind, total, content_hash, json.dumps(counts), fmt, source_name,
                            source_hash, transform, json.dumps(params, default=str), parent,
                            json.dumps(report, default=str, ensure_ascii=False), now])
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        written = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_base and not written:
            with contextlib.suppress(OSError):  # no folder left by a failed first write (unless another writer's)
                base.rmdir()
    return resolve(db, ws, f"{name}@{version}")
