"""Where things live, and the workspace settings.

TUNELAB_HOME (default ./data) holds tunelab.db, datasets/, runs/ and models/.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError


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

    def ensure(self) -> "Workspace":
        for d in (self.home, self.datasets_dir, self.runs_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


def current() -> Workspace:
    """The workspace named by TUNELAB_HOME, created on first use."""
    return Workspace(Path(os.environ.get("TUNELAB_HOME", "data")).resolve()).ensure()


# Settings a user may change (admin page, `tunelab settings`); the defaults sit in one block.
SETTINGS_DEFAULTS: dict[str, object] = {
    "gpu_hour_usd": 2.5,        # price used for cost estimates; a CPU hour is priced at cpu_hour_usd
    "cpu_hour_usd": 0.10,
    "max_concurrent_runs": 1,   # one run at a time: two runs on 2 cores each run at half speed
    "upload_limit_mb": 200,     # largest dataset file accepted by import
    "claim_timeout_s": 600,     # a labeling pair claimed and not voted returns to the pool after this
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
