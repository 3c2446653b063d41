"""Immutable dataset versions: a folder of canonical JSONL files plus one row in `dataset_versions`.

A version is written whole or not at all: its files go into a temporary folder, which is renamed to
`v<N>` inside the write transaction that inserts the DB row. A `v<N>` folder without a row (the
process died between rename and commit) and temporary folders of dead processes are removed the next
time that dataset gets a version; readers only ever look at versions that have a row.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from core import processes
from core import db as dbmod
from core.errors import UserError
from core.workspace import Workspace

KINDS = ("sft", "preference", "kto", "prompts")
SPLITS = ("train", "validation", "test")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
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
        return {s: self.dir / f"{s}.jsonl" for s in SPLITS if s in self.splits}

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
    return DatasetVersion(name, version, kind, rows, content_hash, ws.datasets_dir / name / f"v{version}",
                          json.loads(splits_json), fmt, source_name, source_hash, transform,
                          json.loads(params_json), parent, json.loads(report_json), created_at)


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise UserError(f"dataset name {name!r}: use letters, digits, '_', '-' or '.' (at most 100), "
                        "starting with a letter or digit")
    return name


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


def _write_rows(folder: Path, splits: dict[str, list[dict]]) -> str:
    """Write `<split>.jsonl` files; returns the sha256 over split names and file bytes."""
    digest = hashlib.sha256()
    for split, rows in splits.items():
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
        (folder / f"{split}.jsonl").write_bytes(data)
        digest.update(split.encode() + b"\0" + data)
    return digest.hexdigest()


def _clean_orphans(db, ws: Workspace, name: str) -> None:
    """Inside the write lock: drop version folders without a DB row and dead writers' temp folders."""
    folder = ws.datasets_dir / name
    if not folder.is_dir():
        return
    known = {r[0] for r in db.execute("SELECT version FROM dataset_versions WHERE name = ?", [name]).fetchall()}
    for child in folder.iterdir():
        if re.fullmatch(r"v\d+", child.name) and int(child.name[1:]) not in known:
            shutil.rmtree(child, ignore_errors=True)
        m = re.fullmatch(r"\.tmp-(\d+)-\w+", child.name)
        if m and not processes.pid_alive(int(m.group(1))):
            shutil.rmtree(child, ignore_errors=True)


def write_version(db, ws: Workspace, name: str, splits: dict[str, list[dict]], kind: str, transform: str,
                  params: dict, parent: str | None = None, source_name: str | None = None,
                  source_hash: str | None = None, fmt: str | None = None, report: dict | None = None
                  ) -> DatasetVersion:
    """Write a new version of `name` atomically (files and DB row together) and return it."""
    check_name(name)
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    total = sum(len(rows) for rows in splits.values())
    if total == 0:
        raise UserError(f"dataset {name!r}: no rows left to write")
    base = ws.datasets_dir / name
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        content_hash = _write_rows(tmp, splits)
        counts = {s: len(rows) for s, rows in splits.items()}
        report = report or {}
        now = time.time()
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return resolve(db, ws, f"{name}@{version}")
