"""Jobs: one lifecycle for every background process (training runs, eval runs, campaign generation, and
any new kind), and the only module that changes a job's status.

A job is a row in `jobs` (kind, target: the run id, eval id or campaign name it works on) and a folder
under the workspace home (runs/<id>, evals/<id>, campaigns/<name>) where its process writes status.json
(core/folders.py) and its log (`train.log` for a run, `job.log` otherwise). `submit` queues it. A queued
job starts as `python -m tunelab.jobs <job id>`, in its own process group, while fewer than the
`max_concurrent_jobs` setting run on this machine: training, evals and generation share one queue. That
runner imports the kind's entry point (ENTRY_POINTS), runs it, records the outcome, and starts the next
queued job. There is no daemon.

Statuses: queued -> running -> completed | failed | stopped | interrupted. `requeue` queues an ended job
again (a run's resume, a campaign's generation started over). `stop` sends SIGTERM to the process group
and SIGKILL after a grace; `wait` blocks until a final status, or raises TimeoutError.

Reads (`get`, `find`, `list_jobs`) never change state. `reconcile(db)` is the one step that does: a
running job whose process is gone takes the outcome it wrote in status.json, or `stopped` if a stop was
asked for, or `interrupted` with the reason; a stop not obeyed within STOP_GRACE_S gets SIGKILL; queued
jobs fill free slots. The runner calls it when its job ends; CLI commands that show or wait on state, and
the app's refresh (the Home page, the Runs page), call it on purpose. A pid counts as the job's process
only with the process start time recorded beside it, so a reused pid is never taken for a job.

Backends: `local` starts the runner on this machine; `ray` submits the same command as a job to a Ray
cluster (core/ray_backend.py: code, interpreter and workspace at the same paths on its nodes) at once,
since the cluster queues it, and keeps the Ray job id in place of a pid. With the `ray_storage` setting
the cluster shares nothing with the studio: core/remote.py ships the job through storage, and reconcile
pulls its reports and, once it ended, its result into the job's folder and records the outcome here.

Why written here rather than taken from a library: huey's SqliteHuey keeps a task queue in SQLite, but
runs tasks inside a long-lived consumer process, which a local-first app started and stopped at will
does not have; it cannot stop one running task (its revoke only skips tasks not yet started), so a
training run could not save a checkpoint on stop; it knows nothing of pids, so it cannot tell after an
app restart which work died; and it does not run anything on Ray. Ray's job API run locally would give
stop, logs and status, but a Ray head costs about 0.8 GB idle and 5-10 s to start, for every user, to
run a 10-second eval. So the lifecycle is this one small module over SQLite and psutil, and Ray is a
backend it submits to when a cluster is wanted.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import psutil

from tunelab import db as dbmod
from tunelab import folders, workspace
from tunelab.errors import UserError

STATUSES = ("queued", "running", "completed", "failed", "stopped", "interrupted")
ACTIVE = ("queued", "running")
FINAL = ("completed", "failed", "stopped", "interrupted")
RESUMABLE = ("stopped", "interrupted", "failed")  # may be queued again
STOP_GRACE_S = 30.0  # after SIGTERM, the time a job gets to save its work (a checkpoint) before SIGKILL
# A job process runs at this nice level (or its own, if higher), above the app's usual 0: on the same cores,
# the pages people wait on win the CPU and a run loses only the moments they use (bench/ui.py --under-training).
JOB_NICENESS = 10
# What a job's process runs: "module:function", called as function(db, ws, target, folder) and returning
# (final status, error). Its exceptions are recorded as `failed`.
ENTRY_POINTS = {
    "train": "tunelab.train.runtime:run_job",
    "eval": "tunelab.evaluate:run_job",
    "generate": "tunelab.feedback.generation:run_job",
    "judge": "tunelab.feedback.judges:run_job",  # target CAMPAIGN/JUDGE
}
LOG_NAMES = {"train": "train.log"}  # a run's log keeps its name; every other kind writes job.log

# Processes this process started, so that it reaps them (no zombies in a long-lived app server).
_children: dict[int, subprocess.Popen] = {}


class Stopped(Exception):
    """SIGTERM reached a job process whose entry point does not handle it itself."""


@dataclass
class Job:
    id: int
    kind: str
    target: str
    status: str
    folder: str  # absolute (stored relative to the workspace home)
    backend: str
    ray_address: str | None
    ray_resources: str | None
    ray_job_id: str | None
    pid: int | None
    proc_start: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempt_started_at: float | None
    run_seconds: float
    stop_requested_at: float | None
    error: str | None

    @property
    def path(self) -> Path:
        return Path(self.folder)

    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAMES.get(self.kind, "job.log")

    @property
    def seconds(self) -> float:
        """Process time so far, summed over attempts."""
        extra = time.time() - self.attempt_started_at if self.status == "running" and self.attempt_started_at else 0
        return self.run_seconds + extra

    def progress(self) -> dict:
        """What the process last wrote to status.json: progress, phase, and per kind more (step, loss, ...)."""
        return folders.read_status(self.path)

    def message(self) -> str:
        """One line on where the job is: step and loss for training, else the process's phase."""
        st = self.progress()
        if st.get("max_steps"):
            text = f"step {st.get('step', 0)}/{st['max_steps']}"
            if st.get("loss") is not None:
                text += f" loss {st['loss']:.4f}"
            if st.get("eta_s") is not None and self.status == "running":
                text += f" eta {st['eta_s']:.0f}s"
            return text
        return st["phase"] if st.get("phase") and self.status == "running" else self.status

    def to_dict(self) -> dict:
        st = self.progress()
        return {**asdict(self), "seconds": round(self.seconds, 1), "progress": st.get("progress"),
                "message": self.message(), "log": str(self.log_path)}


_COLUMNS = list(Job.__dataclass_fields__)


def home(db) -> Path:
    """The workspace home: the folder of the database (Workspace.db_path)."""
    return Path(db.execute("PRAGMA database_list").fetchone()[2]).parent


def _fetch(db, where: str = "", args: list | None = None) -> list[Job]:
    base = home(db)
    jobs = [Job(*r) for r in db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where}", args or []).fetchall()]
    for job in jobs:
        job.folder = str(base / job.folder)
    return jobs


# ---------------------------------------------------------------- reading (never changes state)

def get(db, job_id: int) -> Job:
    found = _fetch(db, "WHERE id = ?", [int(job_id)])
    if not found:
        raise UserError(f"no job {job_id} (see `tunelab jobs list`)")
    return found[0]


def find(db, kind: str, target: str) -> Job | None:
    """The job of a run, an eval or a campaign's generation, if it has one."""
    found = _fetch(db, "WHERE kind = ? AND target = ?", [kind, str(target)])
    return found[0] if found else None


def list_jobs(db, kind: str | None = None) -> list[Job]:
    """Newest first."""
    return _fetch(db, "WHERE kind = ? ORDER BY id DESC", [kind]) if kind else _fetch(db, "ORDER BY id DESC")


def alive(pid: int | None, proc_start: float | None = None) -> bool:
    """Is this process still there? A reused pid has another start time; a zombie has ended."""
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


# ---------------------------------------------------------------- queueing

def add(db, kind: str, target: str, folder: Path, backend: str = "local", ray_address: str | None = None,
        ray_resources: dict | None = None) -> int:
    """Record a queued job (inside the caller's transaction, if any); `start_queued` starts it."""
    if kind not in ENTRY_POINTS:
        raise ValueError(f"unknown job kind {kind!r}")
    if backend not in ("local", "ray"):
        raise UserError(f"backend {backend!r}: choose local or ray")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return db.execute(
        "INSERT INTO jobs(kind, target, status, folder, backend, ray_address, ray_resources, created_at) "
        "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
        [kind, str(target), str(folder.resolve().relative_to(home(db).resolve())), backend, ray_address,
         json.dumps(ray_resources) if ray_resources else None, time.time()]).lastrowid


def submit(db, kind: str, target: str, folder: Path, backend: str = "local", ray_address: str | None = None,
           ray_resources: dict | None = None) -> Job:
    """Queue a job and start it if a slot is free."""
    job_id = add(db, kind, target, folder, backend, ray_address, ray_resources)
    start_queued(db)
    return get(db, job_id)


def requeue(db, job_id: int) -> Job:
    """Queue a stopped, interrupted or failed job again (its run_seconds carry on); start it if a slot is free."""
    job = get(db, job_id)
    if job.status not in RESUMABLE:
        raise UserError(f"{job.kind} job {job.id} ({job.target}) is {job.status}; only a {', '.join(RESUMABLE)} one "
                        "can be started again")
    db.execute("UPDATE jobs SET status = 'queued', error = NULL, finished_at = NULL, stop_requested_at = NULL "
               "WHERE id = ? AND status = ?", [job.id, job.status])
    start_queued(db)
    return get(db, job.id)


def run_here(db, kind: str, target: str, folder: Path, work: Callable[[], None]) -> Job:
    """Do a job's work in this process, recorded as a job like any other (the demo saves a process start
    per eval this way). It runs now, in the caller's time, and holds a queue slot while it does, so queued
    jobs wait for it. Re-raises a failure."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    now = time.time()
    job_id = db.execute(
        "INSERT INTO jobs(kind, target, status, folder, pid, proc_start, created_at, started_at, attempt_started_at) "
        "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
        [kind, str(target), str(Path(folder).resolve().relative_to(home(db).resolve())), os.getpid(),
         psutil.Process().create_time(), now, now, now]).lastrowid
    try:
        work()
    except BaseException as exc:
        _close(db, job_id, os.getpid(), None, "failed", describe_failure(exc, Path(folder) / "job.log"))
        raise
    _close(db, job_id, os.getpid(), None, "completed", None)
    return get(db, job_id)


def start_queued(db) -> list[int]:
    """Start queued jobs, oldest first: local ones while fewer than max_concurrent_jobs local jobs run,
    Ray ones all (their cluster queues them). Returns the ids started."""
    started, submits = [], []
    if not db.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone():
        return started  # the common case (a page refreshing every 2 s): no write lock taken
    with dbmod.transaction(db):
        running = db.execute("SELECT count(*) FROM jobs WHERE status = 'running' AND backend = 'local'").fetchone()[0]
        free = int(workspace.get_setting(db, "max_concurrent_jobs")) - running
        for job in _fetch(db, "WHERE status = 'queued' ORDER BY created_at, id"):
            if job.backend == "ray":
                submits.append((job, _claim_ray(db, job)))
            elif free > 0:
                _spawn(db, job)
                free -= 1
            else:
                continue
            started.append(job.id)
    for job, ray_job_id in submits:  # a network call: outside the write lock
        _submit_ray(db, job, ray_job_id)
    return started


def _fresh_status(job: Job) -> None:
    """A fresh report for a new attempt, so that an earlier attempt's outcome is never read as this one's."""
    folders.write_json_atomic(job.path / "status.json", {"job": job.id, "state": "running", "phase": "starting",
                                                         "progress": 0.0, "updated_at": time.time()})


def _env(db) -> dict:
    return {"TUNELAB_HOME": str(home(db)), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",  # nothing is ever fetched from a hub
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _spawn(db, job: Job) -> None:
    """Start the runner in its own process group; inside the caller's transaction."""
    job.path.mkdir(parents=True, exist_ok=True)
    _fresh_status(job)
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.jobs", str(job.id)], cwd=job.path,
                                env={**os.environ, **_env(db)}, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    try:
        proc_start = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # it already ended; reconcile reads what it left
        proc_start = None
    now = time.time()
    db.execute("UPDATE jobs SET status = 'running', pid = ?, proc_start = ?, ray_job_id = NULL, "
               "attempt_started_at = ?, started_at = COALESCE(started_at, ?), finished_at = NULL, "
               "stop_requested_at = NULL, error = NULL WHERE id = ?", [proc.pid, proc_start, now, now, job.id])


def _claim_ray(db, job: Job) -> str:
    """Mark a queued Ray job running under a new Ray job id, inside the caller's transaction."""
    ray_job_id = f"tunelab-{job.kind}-{job.target}-{int(time.time() * 1000)}"
    _fresh_status(job)
    now = time.time()
    db.execute("UPDATE jobs SET status = 'running', pid = NULL, proc_start = NULL, ray_job_id = ?, "
               "attempt_started_at = ?, started_at = COALESCE(started_at, ?), finished_at = NULL, "
               "stop_requested_at = NULL, error = NULL WHERE id = ?", [ray_job_id, now, now, job.id])
    return ray_job_id


def _submit_ray(db, job: Job, ray_job_id: str) -> None:
    from tunelab import ray_backend, remote
    try:
        store = remote.store_for(db)
        if store is not None:
            remote.submit(db, job, ray_job_id, store, _env(db))
        else:
            remote.detach(job)
            ray_backend.submit(job.id, job.kind, job.target, job.path, job.log_path, job.ray_address,
                               json.loads(job.ray_resources or "{}"), ray_job_id, _env(db))
    except UserError as exc:
        _close(db, job.id, None, ray_job_id, "failed", str(exc))


# ---------------------------------------------------------------- reconciling (the one step that does)

def _exit_note(pid: int) -> str:
    child = _children.pop(pid, None)
    # Reap it: alive() may have seen the zombie through psutil before its own poll() did.
    code = child.wait(timeout=5) if child is not None else None
    if code is None:
        return "its exit code is unknown (the app or machine may have restarted)"
    if code < 0:
        return f"it was killed by {signal.Signals(-code).name}"
    return f"it exited with code {code}"


def _outcome(job: Job, why_unreported: Callable[[], str]) -> tuple[str, str | None]:
    """The final status of a job whose process ended without recording it: what it wrote in status.json
    (a local job's only if written by that very process), else stopped if asked to, else interrupted."""
    report = job.progress()
    if report.get("state") in FINAL and (job.backend == "ray" or report.get("pid") == job.pid):
        return report["state"], report.get("error")
    if job.stop_requested_at:
        return "stopped", None
    return "interrupted", why_unreported()


def reconcile(db) -> None:
    """Bring the table in line with the processes, enforce stops past their grace, then start queued jobs."""
    now = time.time()
    for job in _fetch(db, "WHERE status = 'running'"):
        if job.backend == "ray":
            _reconcile_ray(db, job)
            continue
        if alive(job.pid, job.proc_start):
            if job.stop_requested_at and now - job.stop_requested_at > STOP_GRACE_S:
                _signal(job.pid, signal.SIGKILL)
            continue
        state, error = _outcome(job, lambda: (
            f"the {job.kind} process (pid {job.pid}) ended without reporting an outcome; "
            f"{_exit_note(job.pid) if job.pid else 'it never started'} (see {job.log_path})"))
        _close(db, job.id, job.pid, None, state, error)
    start_queued(db)


def _reconcile_ray(db, job: Job) -> None:
    """A Ray job that ended without its runner recording the outcome (killed, or its node lost). An
    unreachable cluster changes nothing."""
    from tunelab import ray_backend, remote
    state = ray_backend.job_state(job.ray_address, job.ray_job_id) if job.ray_job_id else "LOST"
    if remote.attached(job) and state is not None:  # reports (and once ended, the result) from storage
        try:
            remote.pull(db, job, ended=state not in ray_backend.ACTIVE)
        except OSError:  # storage unreachable now: like an unreachable cluster, it changes nothing
            return
    if state is None or state in ray_backend.ACTIVE:
        return
    status, error = _outcome(job, lambda: (f"the {job.kind} process ended without reporting an outcome; "
                                           f"{ray_backend.job_message(job.ray_address, job.ray_job_id)}"))
    _close(db, job.id, None, job.ray_job_id, status, error)


def _close(db, job_id: int, pid: int | None, ray_job_id: str | None, state: str, error: str | None) -> bool:
    """Record an attempt's outcome, if the row is still this attempt's (same pid or Ray job, running)."""
    now = time.time()
    cur = db.execute(
        "UPDATE jobs SET status = ?, error = ?, finished_at = ?, "
        "run_seconds = run_seconds + MAX(0, ? - COALESCE(attempt_started_at, ?)) "
        "WHERE id = ? AND status = 'running' AND pid IS ? AND ray_job_id IS ?",
        [state, error, now, now, now, job_id, pid, ray_job_id])
    return cur.rowcount == 1


# ---------------------------------------------------------------- stop and wait

def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the runner leads its own group: its workers get the signal too
    except ProcessLookupError:
        pass


def stop(db, job_id: int, wait: bool = True, grace_s: float = STOP_GRACE_S) -> Job:
    """Stop a job: a queued one leaves the queue; a running one gets SIGTERM (a run saves a checkpoint at
    the end of its step and exits). With `wait`, SIGKILL follows after `grace_s`; without, reconcile does."""
    job = get(db, job_id)
    if job.status == "queued":
        db.execute("UPDATE jobs SET status = 'stopped', finished_at = ? WHERE id = ? AND status = 'queued'",
                   [time.time(), job.id])
        return get(db, job.id)
    if job.status != "running":
        raise UserError(f"{job.kind} job {job.id} ({job.target}) is {job.status}; only a queued or running one "
                        "can be stopped")
    db.execute("UPDATE jobs SET stop_requested_at = COALESCE(stop_requested_at, ?) WHERE id = ?",
               [time.time(), job.id])
    if job.backend == "ray":
        from tunelab import ray_backend, remote
        remote.request_stop(job)  # with remote storage: for Ray Train workers, which Ray's SIGTERM misses
        ray_backend.stop(job.ray_address, job.ray_job_id)  # Ray sends SIGTERM, SIGKILL after its grace
        deadline = time.time() + ray_backend.STOP_GRACE_S + 30
        while wait and ray_backend.job_state(job.ray_address, job.ray_job_id) in ray_backend.ACTIVE \
                and time.time() < deadline:
            time.sleep(0.3)
    else:
        _signal(job.pid, signal.SIGTERM)
        if wait:
            deadline = time.time() + grace_s
            while alive(job.pid, job.proc_start) and time.time() < deadline:
                time.sleep(0.2)
            if alive(job.pid, job.proc_start):
                _signal(job.pid, signal.SIGKILL)
                while alive(job.pid, job.proc_start):
                    time.sleep(0.1)
    if wait:
        reconcile(db)
    return get(db, job.id)


def wait(db, job_id: int, progress: Callable[[float, str], None] | None = None, timeout_s: float | None = None,
         poll_s: float = 0.5) -> Job:
    """Block until the job reaches a final status, feeding `progress(fraction, message)`; TimeoutError
    after `timeout_s`."""
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        reconcile(db)
        job = get(db, job_id)
        if progress:
            progress(1.0 if job.status == "completed" else float(job.progress().get("progress") or 0.0),
                     job.message())
        if job.status in FINAL:
            return job
        if deadline and time.time() > deadline:
            raise TimeoutError(f"{job.kind} job {job.id} ({job.target}) still {job.status} after {timeout_s}s")
        time.sleep(poll_s)


# ---------------------------------------------------------------- the job's own process

def _on_sigterm(signum, frame):
    raise Stopped()


def describe_failure(exc: BaseException, log: Path) -> str:
    """One line a person can act on; the traceback is in the log."""
    if isinstance(exc, UserError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:400]} (traceback in {log})"


def main(job_id: int) -> int:
    """`python -m tunelab.jobs ID`: run the job's entry point here, record its outcome, start the next job."""
    # First, so that the threads torch starts later inherit it. To a level, not by a step: the next job is
    # started from this (already nicer) process, and steps would pile up to 19.
    os.nice(max(0, JOB_NICENESS - os.nice(0)))
    ws = workspace.current()
    db = dbmod.connect(ws.db_path)
    job = get(db, job_id)
    ray_job_id = os.environ.get("TUNELAB_RAY_JOB_ID")  # set in a Ray job (tunelab.ray_backend)
    signal.signal(signal.SIGTERM, _on_sigterm)  # an entry point may install its own (training does)
    try:
        module, function = ENTRY_POINTS[job.kind].split(":")
        state, error = getattr(importlib.import_module(module), function)(db, ws, job.target, job.path)
    except Stopped:
        state, error = "stopped", None
    except BaseException as exc:  # any failure is recorded; KeyboardInterrupt too
        traceback.print_exc()
        state, error = "failed", describe_failure(exc, job.log_path)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the outcome is being recorded; do not cut it short
    print(f"[tunelab] {job.kind} job {job.id} ({job.target}) {state}" + (f": {error}" if error else ""), flush=True)
    _close(db, job.id, None if ray_job_id else os.getpid(), ray_job_id, state, error)
    if not ray_job_id:  # a local slot is free now; a Ray job (maybe on another node) frees none here
        reconcile(db)
    return {"completed": 0, "stopped": 3}.get(state, 1)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m tunelab.jobs JOB_ID")
    from tunelab import jobs  # one module object, whichever way it was started
    sys.exit(jobs.main(int(sys.argv[1])))
