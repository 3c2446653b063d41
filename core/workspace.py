"""Where things live, the workspace settings, and the checks that keep names and writes inside it.

TUNELAB_HOME (default ./data) holds tunelab.db, datasets/, runs/ and models/. It is private to the
user who runs tunelab (folders 0700, files 0600): annotators and viewers reach it only through the app.
A name from a user or a file becomes one path component only after `check_name`, and an export goes
through `write_export`, which refuses the workspace (except exports/) and writes by rename.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from tunelab.errors import UserError

# A dataset, campaign, model or run name: one path component, never '.', '..', a separator or a dot file.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Workspace:
    home: Path

    @property
    def db_path(self) -> Path:
        return self.home / "tunelab.db"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def compile_cache_dir(self) -> Path:
        """Compiled training code (core/train/compiling.py), kept so the next run of a model starts warm."""
        return self.home / "cache" / "compile"

    @property
    def exports_dir(self) -> Path:
        """The one folder inside the workspace that exports may write to."""
        return self.home / "exports"

    @property
    def orphaned_dir(self) -> Path:
        """Where folders that no DB row knows are moved, never deleted."""
        return self.home / "orphaned"

    def holds_data(self) -> bool:
        """Whether datasets/ or runs/ has anything in it: then a fresh, user-less DB must not be made here."""
        return any(d.is_dir() and any(d.iterdir()) for d in (self.datasets_dir, self.runs_dir))

    def ensure(self) -> "Workspace":
        for d in (self.home, self.datasets_dir, self.runs_dir, self.models_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.home.stat().st_mode & 0o077:  # an older workspace, or a home made by someone else
            os.chmod(self.home, 0o700)
        return self


def current() -> Workspace:
    """The workspace named by TUNELAB_HOME, created on first use.

    Sets the process umask to 077, so everything this process (and the run processes it starts) writes
    is private: the DB with its -wal and -shm, dataset files, run folders, exports."""
    os.umask(0o077)
    return Workspace(Path(os.environ.get("TUNELAB_HOME", "data")).resolve()).ensure()


def check_name(name, what: str = "name") -> str:
    """`name` if it can safely be one path component; a UserError naming `what` otherwise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"{what} name {name!r}: use letters, digits, '_', '-' or '.' (at most 100), "
                        "starting with a letter or digit")
    return name


def inside(folder: Path, path: Path) -> Path:
    """`path` resolved, refused unless it lies inside `folder` (a '..' or a link that leads out is caught)."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(folder).resolve()):
        raise UserError(f"{path}: leads outside {folder}; refused")
    return resolved


def export_target(ws: Workspace, out) -> Path:
    """Where an export to `out` may go: outside the workspace, or inside its exports/ folder.

    Anything else inside the workspace (a dataset version's files, the DB, a run) is refused, and so is
    a path written under the workspace that resolves out of it (a campaign name with '..' in it)."""
    given = Path(os.path.expanduser(str(out)))
    given = given if given.is_absolute() else Path.cwd() / given
    target = given.resolve()
    home = ws.home.resolve()
    if target.is_relative_to(home) or given.is_relative_to(home):
        if not target.is_relative_to(ws.exports_dir.resolve()) or target == ws.exports_dir.resolve():
            raise UserError(f"{out}: inside the workspace {home}; export outside it, or into {ws.exports_dir}")
    return target


def write_export(ws: Workspace, out, write: Callable[[Path], None]) -> Path:
    """Check `out` (see `export_target`), let `write(tmp)` fill a temporary file or folder beside it, then
    rename it into place: a failed export leaves the old file, never half a new one."""
    target = export_target(ws, out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return target


@contextmanager
def saved_upload(file_name: str, data: bytes, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """An uploaded file saved as a temporary file named `upload<suffix>`, the suffix checked against
    `suffixes`: the client picks the file name (a rewritten '/abs/path/x.jsonl' or '../x'), so no part
    of it but the extension reaches a path."""
    suffix = PurePosixPath(str(file_name).replace("\\", "/")).suffix.lower()
    if suffix not in suffixes:
        raise UserError(f"{file_name!r}: expected a {', '.join(suffixes)} file")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        yield path


# Settings a user may change (admin page, `tunelab settings`); the defaults sit in one block.
SETTINGS_DEFAULTS: dict[str, object] = {
    "gpu_hour_usd": 2.5,        # price used for cost estimates; a CPU hour is priced at cpu_hour_usd
    "cpu_hour_usd": 0.10,
    "max_concurrent_jobs": 1,   # one job (run, eval, generation) at a time: two on 2 cores each go at half speed
    "upload_limit_mb": 200,     # largest dataset file accepted by import
    "claim_timeout_s": 600,     # a labeling pair claimed and not voted returns to the pool after this
    # backend ray on a cluster that shares no disk with the studio: s3://bucket/prefix or a path every node
    # mounts, through which jobs get their inputs and return their results (core/remote.py); empty: the
    # cluster sees the workspace at the same path (core/ray_backend.py)
    "ray_storage": "",
    "ray_storage_endpoint": "",  # an S3-compatible server's URL (MinIO, ...); empty: AWS_ENDPOINT_URL or AWS
    # the OpenAI-compatible base URLs an endpoint judge may call, space-separated; the judge sends it the campaign's
    # answers and a TUNELAB_JUDGE_* key, so only an admin chooses where (core/feedback/judges.py); empty: none
    "judge_endpoints": "",
}


def get_setting(db, key: str):
    if key not in SETTINGS_DEFAULTS:
        raise UserError(f"unknown setting {key!r}; known: {', '.join(SETTINGS_DEFAULTS)}")
    row = db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else SETTINGS_DEFAULTS[key]


def set_setting(db, key: str, value) -> None:
    default = SETTINGS_DEFAULTS.get(key)
    if key not in SETTINGS_DEFAULTS:
        raise UserError(f"unknown setting {key!r}; known: {', '.join(SETTINGS_DEFAULTS)}")
    try:
        value = type(default)(value)
    except (TypeError, ValueError):
        raise UserError(f"setting {key!r} must be a {type(default).__name__}, got {value!r}") from None
    db.execute(
        "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, json.dumps(value)],
    )
