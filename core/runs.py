"""Training runs: launch, queue, stop, resume, and what happened. The only module that changes a run's status.

A run is a folder `ws.runs_dir/<id>/` (config.yaml, status.json, metrics.jsonl, train.log, checkpoint-N/,
final/) and a row in the `runs` table. `launch` queues it; a queued run starts as its own process,
`python -m core.train <folder>`, in its own process group, when fewer than the `max_concurrent_runs`
setting are running. There is no daemon: every call here first reconciles the table with the processes
(`reconcile`), and a finishing run process calls `finish`, which starts the next queued run.

Backends (the config's `backend` key): `local` starts the run process on this machine, as above; `ray`
submits the same command as a job to a Ray cluster (core/ray_backend.py), and keeps the job's id in
place of the pid. Both write the same run folder; status, logs, stop, resume and metrics read it the
same way. Queued local runs wait for a free slot; queued Ray runs are submitted at once, and the
cluster holds them (job PENDING) until it has the resources.

Statuses: queued -> running -> completed | failed | stopped | interrupted. A running row whose process
is gone (after a crash, a reboot, or `kill -9`) becomes interrupted; the process start time recorded
with the pid keeps a reused pid from passing for the run. `resume` continues from the latest checkpoint,
optimizer and scheduler state included, so the step count carries on.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import psutil

from core import db as dbmod
from core import workspace
from core.errors import UserError

STATUSES = ("queued", "running", "completed", "failed", "stopped", "interrupted")
FINAL = ("completed", "failed", "stopped", "interrupted")
RESUMABLE = ("stopped", "interrupted", "failed")
STOP_GRACE_S = 30.0  # after SIGTERM, the time a run gets to save its checkpoint before SIGKILL
REPO = Path(__file__).resolve().parents[1]

# Processes this process started, so that it reaps them (no zombies in a long-lived app server).
_children: dict[int, subprocess.Popen] = {}


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


_COLUMNS = [f for f in Run.__dataclass_fields__]


def _fetch(db, where: str = "", args: list | None = None) -> list[Run]:
    rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs {where}", args or []).fetchall()
    return [Run(*r) for r in rows]


# ---------------------------------------------------------------- reading

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: Path, doc: dict) -> None:
    """Readers (the Runs page every 2 s) never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, default=str))
    os.replace(tmp, path)


def read_status(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    """The highest checkpoint-N that was saved whole (trainer_state.json is written last)."""
    found = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else []:
        m = _CHECKPOINT.match(p.name)
        if m and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return max(found) if found else None



def get(db, run_id: str) -> Run:
    reconcile(db)
    found = _fetch(db, "WHERE id = ?", [run_id])
    if not found:
        raise UserError(f"no run {run_id!r} (see `tunelab runs list`)")
    return found[0]


def list_runs(db) -> list[Run]:
    """Newest first."""
    reconcile(db)
    return _fetch(db, "ORDER BY created_at DESC")


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


def launch(db, ws, config, estimate: bool = True) -> str:
    """Check the config, create the run folder and row, and start it if a slot is free. Returns the run id.

    `config` is a RunConfig or a mapping of YAML keys; errors are UserErrors naming the key.
    """
    from core import cost
    from core.train import config as configmod

    cfg = config if isinstance(config, configmod.RunConfig) else configmod.from_dict(dict(config))
    cfg = configmod.resolve(db, ws, cfg)
    est = cost.estimate(db, ws, cfg) if estimate else None
    device = est.device if est else cost.device_kind()
    resolved = configmod.to_dict(cfg)
    with dbmod.transaction(db):
        run_id = _next_id(db, ws)
        folder = Path(ws.runs_dir) / run_id
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(configmod.to_yaml(cfg))
        db.execute(
            "INSERT INTO runs(id, method, base_model, dataset, tuning, status, created_at, config_json, folder, "
            "init_from, device, est_seconds, est_usd, hour_usd, backend) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, cfg.method, cfg.base_model, cfg.dataset, cfg.tuning, time.time(), json.dumps(resolved),
             str(folder), cfg.init_from, device, est.seconds if est else None, est.usd if est else None,
             cost.hour_usd(db, device), cfg.backend])
    _schedule(db)
    return run_id


def _schedule(db) -> list[str]:
    """Start queued runs, oldest first: local ones while fewer than max_concurrent_runs local runs are
    running, Ray ones all (their cluster queues them)."""
    started, submits = [], []
    if not db.execute("SELECT 1 FROM runs WHERE status = 'queued' LIMIT 1").fetchone():
        return started  # the common case (a page polling every 2 s): no write lock taken
    with dbmod.transaction(db):
        running = db.execute("SELECT count(*) FROM runs WHERE status = 'running' AND backend = 'local'").fetchone()[0]
        free = int(workspace.get_setting(db, "max_concurrent_runs")) - running
        for run_id, folder, backend in db.execute("SELECT id, folder, backend FROM runs WHERE status = 'queued' "
                                                  "ORDER BY created_at").fetchall():
            if backend == "ray":
                submits.append((run_id, Path(folder), _claim_ray(db, run_id, Path(folder))))
            elif free > 0:
                _spawn(db, run_id, Path(folder))
                free -= 1
            else:
                continue
            started.append(run_id)
    for run_id, folder, job_id in submits:  # a network call: outside the write lock
        _submit_ray(db, run_id, folder, job_id)
    return started


def _spawn(db, run_id: str, folder: Path) -> None:
    """Start the run process in its own process group; inside the caller's transaction."""
    _fresh_status(run_id, folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",  # nothing is ever fetched from a hub
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    with open(folder / "train.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "core.train", str(folder)], cwd=folder, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _children[proc.pid] = proc
    try:
        proc_start = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # it already ended; reconcile will read its report
        proc_start = None
    now = time.time()
    db.execute("UPDATE runs SET status = 'running', pid = ?, proc_start = ?, attempt_started_at = ?, "
               "started_at = COALESCE(started_at, ?), finished_at = NULL, stop_requested_at = NULL, error = NULL "
               "WHERE id = ?", [proc.pid, proc_start, now, now, run_id])


def _fresh_status(run_id: str, folder: Path) -> None:
    """A fresh report for a new attempt, so that an old one is never read as this attempt's."""
    checkpoint = latest_checkpoint(folder)
    write_json_atomic(folder / "status.json", {
        "run_id": run_id, "state": "running", "phase": "starting", "step": checkpoint[0] if checkpoint else 0,
        "progress": 0.0, "updated_at": time.time()})


def _claim_ray(db, run_id: str, folder: Path) -> str:
    """Mark a queued Ray run running under a new job id, inside the caller's transaction; `_submit_ray` follows."""
    job_id = f"tunelab-{run_id}-{int(time.time() * 1000)}"
    _fresh_status(run_id, folder)
    now = time.time()
    db.execute("UPDATE runs SET status = 'running', pid = NULL, proc_start = NULL, ray_job_id = ?, "
               "attempt_started_at = ?, started_at = COALESCE(started_at, ?), finished_at = NULL, "
               "stop_requested_at = NULL, error = NULL WHERE id = ?", [job_id, now, now, run_id])
    return job_id


def _submit_ray(db, run_id: str, folder: Path, job_id: str) -> None:
    from core import ray_backend

    config = json.loads(db.execute("SELECT config_json FROM runs WHERE id = ?", [run_id]).fetchone()[0])
    try:
        ray_backend.submit(run_id, folder, config, job_id)
    except UserError as exc:
        _close(db, run_id, None, "failed", str(exc), job_id)


def _alive(pid: int | None, proc_start: float | None) -> bool:
    """Is the run's own process still there? A reused pid has another start time; a zombie has ended."""
    if pid is None:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        p = psutil.Process(pid)
        if proc_start is not None and abs(p.create_time() - proc_start) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _exit_note(pid: int) -> str:
    child = _children.pop(pid, None)
    # Reap it: _alive may have seen the zombie through psutil after its own poll() came too early.
    code = child.wait(timeout=5) if child is not None else None
    if code is None:
        return "its exit code is unknown (the app or machine may have restarted)"
    if code < 0:
        return f"it was killed by {signal.Signals(-code).name}"
    return f"it exited with code {code}"


def reconcile(db) -> None:
    """Bring the table in line with the processes, then fill free slots from the queue.

    A running row whose process is gone takes the outcome the process wrote to status.json, or
    `stopped` if a stop was asked for, or else `interrupted`. A stop not obeyed within STOP_GRACE_S
    is enforced with SIGKILL.
    """

    now = time.time()
    for run in _fetch(db, "WHERE status = 'running' AND backend = 'ray'"):
        _reconcile_ray(db, run)
    for run in _fetch(db, "WHERE status = 'running' AND backend = 'local'"):
        if _alive(run.pid, run.proc_start):
            if run.stop_requested_at and now - run.stop_requested_at > STOP_GRACE_S:
                _signal(run.pid, signal.SIGKILL)
            continue
        state, error = _outcome(run, lambda: (f"the run process (pid {run.pid}) ended without reporting an "
                                              f"outcome; {_exit_note(run.pid) if run.pid else 'it never started'}"),
                                check_pid=True)
        _close(db, run.id, run.pid, state, error)
    _schedule(db)


def _reconcile_ray(db, run: Run) -> None:
    """A Ray run whose job has ended without its run process recording the outcome (killed, or its node
    lost) takes the outcome from status.json, as a local one does. An unreachable cluster changes nothing."""
    from core import ray_backend

    address = run.config.get("ray_address")
    job_state = ray_backend.job_state(address, run.ray_job_id) if run.ray_job_id else "LOST"
    if job_state is None or job_state in ray_backend.ACTIVE:
        return
    state, error = _outcome(run, lambda: ("the run process ended without reporting an outcome; "
                                          f"{ray_backend.job_message(address, run.ray_job_id)}"))
    _close(db, run.id, None, state, error, run.ray_job_id)


def _outcome(run: Run, why_unreported, check_pid: bool = False) -> tuple[str, str | None]:
    """The final state of a run whose process has ended: what it reported in status.json, else stopped
    (if a stop was asked for) or interrupted, with `why_unreported()` as the reason."""
    report = read_status(run.path)
    state, error = report.get("state"), report.get("error")
    if state in FINAL and not (check_pid and report.get("pid") != run.pid):
        return state, error
    if run.stop_requested_at:
        return "stopped", None
    return "interrupted", why_unreported()


def _close(db, run_id: str, pid: int | None, state: str, error: str | None, ray_job_id: str | None = None) -> bool:
    """Record an attempt's outcome, if the row is still this attempt's (same pid or Ray job, still running)."""
    now = time.time()
    cur = db.execute(
        "UPDATE runs SET status = ?, error = ?, finished_at = ?, pid = NULL, "
        "run_seconds = run_seconds + MAX(0, ? - COALESCE(attempt_started_at, ?)) "
        "WHERE id = ? AND status = 'running' AND pid IS ? AND ray_job_id IS ?",
        [state, error, now, now, now, run_id, pid, ray_job_id])
    return cur.rowcount == 1


def finish(db, run_id: str, state: str, error: str | None) -> None:
    """Called by the run process as it ends: record its outcome, then start the next queued run."""
    if state not in FINAL:
        raise ValueError(f"not a final status: {state}")
    ray_job_id = os.environ.get("TUNELAB_RAY_JOB_ID")  # set for a Ray job's run process (core.ray_backend)
    _close(db, run_id, None if ray_job_id else os.getpid(), state, error, ray_job_id)
    _schedule(db)


# ---------------------------------------------------------------- stop, resume, wait

def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the run process leads its own group: its workers get the signal too
    except ProcessLookupError:
        pass


def stop(db, run_id: str, wait: bool = True, grace_s: float = STOP_GRACE_S) -> Run:
    """Stop a run: a queued one leaves the queue; a running one gets SIGTERM, saves a checkpoint at the end of
    its current step and exits. With `wait`, SIGKILL follows after `grace_s`; without, reconcile does that."""
    run = get(db, run_id)
    if run.status == "queued":
        db.execute("UPDATE runs SET status = 'stopped', finished_at = ? WHERE id = ? AND status = 'queued'",
                   [time.time(), run_id])
        return get(db, run_id)
    if run.status != "running":
        raise UserError(f"run {run_id} is {run.status}; only a queued or running run can be stopped")
    db.execute("UPDATE runs SET stop_requested_at = COALESCE(stop_requested_at, ?) WHERE id = ?",
               [time.time(), run_id])
    if run.backend == "ray":
        return _stop_ray(db, run, wait)
    _signal(run.pid, signal.SIGTERM)
    if not wait:
        return get(db, run_id)
    deadline = time.time() + grace_s
    while _alive(run.pid, run.proc_start) and time.time() < deadline:
        time.sleep(0.2)
    if _alive(run.pid, run.proc_start):
        _signal(run.pid, signal.SIGKILL)
        while _alive(run.pid, run.proc_start):
            time.sleep(0.1)
    return get(db, run_id)


def _stop_ray(db, run: Run, wait: bool) -> Run:
    """Ray sends the run process SIGTERM, and SIGKILL after ray_backend.STOP_GRACE_S (set at submission)."""
    from core import ray_backend

    address = run.config["ray_address"]
    ray_backend.stop(address, run.ray_job_id)
    deadline = time.time() + ray_backend.STOP_GRACE_S + 30
    while wait and ray_backend.job_state(address, run.ray_job_id) in ray_backend.ACTIVE and time.time() < deadline:
        time.sleep(0.3)
    return get(db, run.id)


def resume(db, run_id: str) -> Run:
    """Queue a stopped, interrupted or failed run again; it continues from its latest checkpoint
    (weights, optimizer, scheduler, step), or starts over if it saved none."""
    run = get(db, run_id)
    if run.status not in RESUMABLE:
        raise UserError(f"run {run_id} is {run.status}; only a {', '.join(RESUMABLE)} run can be resumed")
    db.execute("UPDATE runs SET status = 'queued', error = NULL, finished_at = NULL, stop_requested_at = NULL "
               "WHERE id = ? AND status = ?", [run_id, run.status])
    _schedule(db)
    return get(db, run_id)


def wait(db, run_id: str, progress: Callable[[float, str], None] | None = None, poll_s: float = 1.0,
         timeout_s: float | None = None) -> Run:
    """Block until the run reaches a final status, reporting progress from its status.json."""
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        run = get(db, run_id)
        if progress:
            st = run.progress()
            message = f"{run.status}"
            if st.get("max_steps"):
                message = f"step {st.get('step', 0)}/{st['max_steps']}"
                if st.get("loss") is not None:
                    message += f" loss {st['loss']:.4f}"
                if st.get("eta_s") is not None and run.status == "running":
                    message += f" eta {st['eta_s']:.0f}s"
            elif st.get("phase") and run.status == "running":
                message = st["phase"]
            progress(float(st.get("progress") or 0.0), message)
        if run.status in FINAL:
            return run
        if deadline and time.time() > deadline:
            raise TimeoutError(f"run {run_id} still {run.status} after {timeout_s}s")
        time.sleep(poll_s)


EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 1, "stopped": 1}


# ---------------------------------------------------------------- results

def result_dir(db, run_id: str) -> Path:
    run = get(db, run_id)
    final = run.path / "final"
    if run.status != "completed" or not final.is_dir():
        raise UserError(f"run {run_id} is {run.status} and has no result in {final}")
    return final


def merge(db, ws, run_id: str, name: str, progress: Callable[[float, str], None] | None = None):
    """Merge a LoRA run's adapter into its base as a standalone model folder, and register it (kind 'merged')."""
    from core import models

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
    report(0.1, f"loading {run.base_model}")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    report(0.4, f"applying the adapter of {run_id}")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    report(0.7, "writing safetensors")
    target = Path(ws.models_dir) / name
    if target.exists():
        raise UserError(f"{target} already exists")
    partial = target.with_name(target.name + ".partial")
    merged.save_pretrained(partial)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(partial)
    partial.rename(target)
    info = models.add_local(db, target, name, kind="merged", source=f"run:{run_id}")
    report(1.0, "registered")
    return info
