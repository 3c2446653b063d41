"""Training runs on top of core/jobs.py: config, checkpoints, resume, metrics, outcome, merge.

A run is a folder `ws.runs_dir/<id>/` (config.yaml, status.json, metrics.jsonl, train.log, checkpoint-N/,
final/), a row in the `runs` table (what it trains: method, base, dataset, config, estimate) and a `train`
job (core/jobs.py), which owns its lifecycle: the queue shared with evals and generation
(`max_concurrent_jobs`), the process (`python -m tunelab.jobs <job id>`, which runs
tunelab.train.runtime.run_job), stop, liveness and the status. A run's status, pid, times and error are its
job's.

Backends (the config's `backend` key): `local` runs the job process on this machine; `ray` submits it to
a Ray cluster (core/ray_backend.py). Both write the same run folder.

Statuses: queued -> running -> completed | failed | stopped | interrupted (tunelab.jobs.STATUSES). `resume`
queues a stopped, interrupted or failed run again: it continues from the latest checkpoint, optimizer
and scheduler state included, so the step count carries on.

Reads (`get`, `list_runs`) never change state; `jobs.reconcile(db)` does, called on purpose.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tunelab import db as dbmod
from tunelab import jobs, workspace
from tunelab.errors import UserError
from tunelab.folders import read_status

RESUMABLE = jobs.RESUMABLE
EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 1, "stopped": 1}


@dataclass
class Run:
    id: str
    method: str
    base_model: str
    dataset: str
    tuning: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None
    proc_start: float | None
    attempt_started_at: float | None
    run_seconds: float
    stop_requested_at: float | None
    error: str | None
    config_json: str
    folder: str
    init_from: str | None
    device: str | None
    est_seconds: float | None
    est_usd: float | None
    hour_usd: float | None
    backend: str = "local"
    ray_job_id: str | None = None

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    @property
    def path(self) -> Path:
        return Path(self.folder)

    def progress(self) -> dict:
        """The run process's status.json: step, max_steps, progress, eta_s, tokens, loss, phase, ..."""
        return read_status(self.path)

    @property
    def seconds(self) -> float:
        """Process time so far, summed over starts and resumes."""
        extra = time.time() - self.attempt_started_at if self.status == "running" and self.attempt_started_at else 0
        return self.run_seconds + extra

    @property
    def usd(self) -> float | None:
        return self.seconds / 3600 * self.hour_usd if self.hour_usd is not None else None

    def __getitem__(self, key: str):
        """Row-style access (`run["base_model"]`), for callers that treat a run as a table row."""
        return getattr(self, key)

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["config_json"]
        d["config"] = self.config
        d["seconds"] = round(self.seconds, 1)
        d["usd"] = self.usd
        d["progress"] = self.progress()
        return d


# The job's columns a Run shows; the pid only while it runs (an ended run has no process).
_JOB_COLUMNS = {"status": "j.status", "started_at": "j.started_at", "finished_at": "j.finished_at",
                "pid": "CASE WHEN j.status = 'running' THEN j.pid END", "proc_start": "j.proc_start",
                "attempt_started_at": "j.attempt_started_at", "run_seconds": "j.run_seconds",
                "stop_requested_at": "j.stop_requested_at", "error": "j.error", "backend": "j.backend",
                "ray_job_id": "j.ray_job_id"}
_SELECT = ", ".join(_JOB_COLUMNS.get(f, f"r.{f}") for f in Run.__dataclass_fields__)


def _fetch(db, where: str = "", args: list | None = None) -> list[Run]:
    rows = db.execute(f"SELECT {_SELECT} FROM runs r JOIN jobs j ON j.kind = 'train' AND j.target = r.id {where}",
                      args or []).fetchall()
    return [Run(*r) for r in rows]


def _job(db, run_id: str) -> jobs.Job:
    job = jobs.find(db, "train", run_id)
    if job is None:
        raise UserError(f"no run {run_id!r} (see `tunelab runs list`)")
    return job


# ---------------------------------------------------------------- reading

def get(db, run_id: str) -> Run:
    found = _fetch(db, "WHERE r.id = ?", [run_id])
    if not found:
        raise UserError(f"no run {run_id!r} (see `tunelab runs list`)")
    return found[0]


def list_runs(db) -> list[Run]:
    """Newest first."""
    return _fetch(db, "ORDER BY r.created_at DESC")


def read_metrics(ws, run_id: str) -> list[dict]:
    """metrics.jsonl: kind 'train' lines (step, loss, learning_rate, grad_norm, tokens, elapsed) and 'eval' lines."""
    path = Path(ws.runs_dir) / run_id / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            continue
    return out


def log_tail(run: Run, lines: int = 40) -> str:
    path = run.path / "train.log"
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64_000))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- launching and scheduling

def _next_id(db, ws) -> str:
    """r1, r2, ...: short enough to type, unique in this workspace (and its folders)."""
    numbers = [int(m.group(1)) for (rid,) in db.execute("SELECT id FROM runs").fetchall()
               if (m := re.fullmatch(r"r(\d+)", rid))]
    n = max(numbers, default=0) + 1
    while (Path(ws.runs_dir) / f"r{n}").exists():  # a folder left from an earlier database
        n += 1
    return f"r{n}"


def record(db, ws, config: dict, config_yaml: str, device: str, est=None) -> str:
    """Inside the caller's write transaction: a new run's id, folder (with its config.yaml) and row, from
    its resolved config. `launch` queues its job; a run made in the caller's process (an adapter merge)
    records its own."""
    from tunelab import cost
    run_id = _next_id(db, ws)
    folder = Path(ws.runs_dir) / run_id
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config_yaml)
    db.execute(
        "INSERT INTO runs(id, method, base_model, dataset, tuning, created_at, config_json, folder, "
        "init_from, device, est_seconds, est_usd, hour_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, config["method"], config["base_model"], config["dataset"], config["tuning"], time.time(),
         json.dumps(config), str(folder), config.get("init_from"), device, est.seconds if est else None,
         est.usd if est else None, cost.hour_usd(db, device)])
    return run_id


def launch(db, ws, config, estimate: bool = True) -> str:
    """Check the config, create the run folder, row and job, and start it if a slot is free. Returns the run id.

    `config` is a RunConfig or a mapping of YAML keys; errors are UserErrors naming the key.
    """
    from tunelab import cost, ray_backend
    from tunelab.train import config as configmod

    cfg = config if isinstance(config, configmod.RunConfig) else configmod.from_dict(dict(config))
    cfg = configmod.resolve(db, ws, cfg)
    est = cost.estimate(db, ws, cfg) if estimate else None
    device = est.device if est else cost.device_kind()
    resolved = configmod.to_dict(cfg)
    with dbmod.transaction(db):
        run_id = record(db, ws, resolved, configmod.to_yaml(cfg), device, est)
        folder = Path(ws.runs_dir) / run_id
        jobs.add(db, "train", run_id, folder, cfg.backend, cfg.ray_address,
                 ray_backend.run_resources(resolved) if cfg.backend == "ray" else None)
    jobs.start_queued(db)
    return run_id


# ---------------------------------------------------------------- stop, resume, wait (the job's)

def stop(db, run_id: str, wait: bool = True, grace_s: float = jobs.STOP_GRACE_S) -> Run:
    """Stop a run: a queued one leaves the queue; a running one gets SIGTERM, saves a checkpoint at the end of
    its current step and exits. With `wait`, SIGKILL follows after `grace_s`; without, reconcile does that."""
    job = _job(db, run_id)
    if job.status not in jobs.ACTIVE:
        raise UserError(f"run {run_id} is {job.status}; only a queued or running run can be stopped")
    jobs.stop(db, job.id, wait=wait, grace_s=grace_s)
    return get(db, run_id)


def resume(db, run_id: str) -> Run:
    """Queue a stopped, interrupted or failed run again; it continues from its latest checkpoint
    (weights, optimizer, scheduler, step), or starts over if it saved none."""
    job = _job(db, run_id)
    if job.status not in RESUMABLE:
        raise UserError(f"run {run_id} is {job.status}; only a {', '.join(RESUMABLE)} run can be resumed")
    jobs.requeue(db, job.id)
    return get(db, run_id)


def wait(db, run_id: str, progress: Callable[[float, str], None] | None = None, poll_s: float = 1.0,
         timeout_s: float | None = None) -> Run:
    """Block until the run reaches a final status, reporting progress from its status.json; TimeoutError
    after `timeout_s`."""
    jobs.wait(db, _job(db, run_id).id, progress, timeout_s, poll_s)
    return get(db, run_id)


# ---------------------------------------------------------------- results

def merge(db, ws, run_id: str, name: str, progress: Callable[[float, str], None] | None = None):
    """Merge a LoRA run's adapter into its base as a standalone model folder, and register it (kind 'merged')."""
    from tunelab import models

    report = progress or (lambda f, m: None)
    workspace.check_name(name, "model")  # it names the folder under models/
    run = get(db, run_id)
    spec = models.ModelSpec(run.base_model, run_id).check(db, ws)  # completed, and not a reward model
    base, adapter = spec.folders(db, ws)
    if adapter is None:
        raise UserError(f"run {run_id} is a {run.tuning} run: its result is already a whole model, nothing to "
                        f"merge; use it as {spec}")
    if db.execute("SELECT 1 FROM models WHERE name = ?", [name]).fetchone():
        raise UserError(f"model name {name!r} is already taken")
    target = Path(ws.models_dir) / name
    if target.exists():
        raise UserError(f"{target} already exists")
    report(0.1, f"merging the adapter of {run_id} into {run.base_model}")
    partial = target.with_name(target.name + ".partial")
    models.write_merged(base, adapter, partial)
    partial.rename(target)
    info = models.add_local(db, target, name, kind="merged", source=f"run:{run_id}")
    report(1.0, "registered")
    return info
