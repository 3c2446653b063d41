"""What a job's process leaves in its folder, read and written without importing its libraries.

A job process (core/jobs.py starts it) reports only through its folder: `status.json` (state, phase,
progress, ...) rewritten whole, so that readers (the Runs page every 2 s, `jobs.reconcile`) never see
half a file, and for training runs `checkpoint-N/` folders. Both the processes (core/train/,
core/evaluate.py, core/feedback/generation.py) and the job manager use this module, so neither imports the other.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PROGRESS_EVERY_S = 0.3  # a status.json write per 0.3 s at most from `progress_writer`


def write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, default=str))
    os.replace(tmp, path)


def read_status(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def update_status(folder: Path, **fields) -> dict:
    """Merge `fields` into status.json (only the job's own process writes it)."""
    status = read_status(folder)
    status.update(fields, updated_at=time.time())
    write_json_atomic(Path(folder) / "status.json", status)
    return status


def progress_writer(folder: Path, echo: bool = True):
    """A `progress(fraction, message)` callback that records progress and phase in status.json, at most
    every PROGRESS_EVERY_S (and always at 100%), and prints each line to the job's log."""
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        if echo:
            print(f"{fraction:6.1%} {message}", flush=True)
        if time.time() - last[0] > PROGRESS_EVERY_S or fraction >= 1.0:
            last[0] = time.time()
            update_status(folder, progress=min(1.0, fraction), phase=message)
    return progress


def latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    """The highest checkpoint-N that was saved whole (trainer_state.json is written last)."""
    found = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else []:
        m = _CHECKPOINT.match(p.name)
        if m and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return max(found) if found else None
