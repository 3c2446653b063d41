"""The `ray` backend: a job (a training run, an eval, a campaign's generation) is a job on a Ray
cluster, submitted with Ray's Job Submission API.

Two modes. With the `ray_storage` setting empty (the default, zero setup on one machine), the same-path
mode below. With it set (s3://bucket/prefix, or a folder every node mounts), nothing is assumed shared:
core/remote.py ships the code as the job's runtime_env and the inputs through that storage, and brings
the results back (`submit_remote`).

In the same-path mode, the Ray job's entrypoint is the same `python -m tunelab.jobs <job id>` a local job runs (core/jobs.py); for
a run with `num_workers` above 1 that process starts Ray Train workers (core/train/distributed.py).
Nothing is shipped with the job: the code, the interpreter and the workspace (database, models, datasets,
job folders) must be at the same paths on the cluster's nodes. On one machine that holds already; on a
cluster of several machines, put the repository, the Python environment and TUNELAB_HOME on shared
storage mounted at the same path. The job process writes its log, status.json and results into its
folder and records its outcome in the database, as a local one does; tunelab.jobs asks the cluster for the
job's state only to notice a job that died without reporting.

Needs the `ray` extra (`pip install -e ".[ray]"`). Token auth follows the caller's environment
(RAY_AUTH_MODE, RAY_AUTH_TOKEN), as for Ray's own CLI.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path

from tunelab.errors import UserError

ACTIVE = ("PENDING", "RUNNING")  # Ray job states in which the job process may still be running
# After a stop, the time a job gets to save its work (a checkpoint) before Ray kills it (Ray's default is 3 s).
STOP_GRACE_S = 30


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.job_submission") is not None


_clients: dict[str, object] = {}


def _client(address: str):
    """One client per address: making one asks the cluster for its version."""
    if address not in _clients:
        from ray.job_submission import JobSubmissionClient
        _clients[address] = JobSubmissionClient(address)
    return _clients[address]


def check_address(address: str | None, key: str = "ray_address") -> tuple[str, float, float]:
    """(address, CPUs, GPUs) of the cluster that answers at `address` (or RAY_ADDRESS); a UserError naming
    `key` if Ray is missing or nothing answers."""
    if not available():
        raise UserError("key 'backend': ray needs the ray package: pip install -e \".[ray]\" "
                        "(or pip install \"ray[default,train]>=2.60,<3\")")
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError(f"key '{key}': backend ray needs the cluster's dashboard address, e.g. "
                        f"http://127.0.0.1:8265 (set {key} or the RAY_ADDRESS environment variable)")
    if "://" not in address:
        address = f"http://{address}"
    from ray.util.state import list_nodes
    try:
        nodes = [n for n in list_nodes(address=address, timeout=15) if n.state == "ALIVE"]
    except Exception as exc:  # connection refused, timeout, auth: all say the same to the user
        raise UserError(f"key '{key}': no Ray cluster answered at {address} "
                        f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})"
                        ) from None
    return (address, sum(n.resources_total.get("CPU", 0) for n in nodes),
            sum(n.resources_total.get("GPU", 0) for n in nodes))


def resolve(cfg):
    """Check a run config's Ray keys against the cluster and pin what they leave open (address, GPUs per worker)."""
    address, cpus, gpus = check_address(cfg.ray_address)
    gpus_per_worker = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    need_cpus, need_gpus = cfg.num_workers * cfg.cpus_per_worker, cfg.num_workers * gpus_per_worker
    if need_cpus > cpus or need_gpus > gpus:
        raise UserError(f"key 'num_workers': {cfg.num_workers} workers need {need_cpus:g} CPUs and {need_gpus:g} GPUs, "
                        f"and the cluster at {address} has {cpus:g} CPUs and {gpus:g} GPUs "
                        "(lower num_workers, cpus_per_worker or gpus_per_worker)")
    return dataclasses.replace(cfg, ray_address=address, gpus_per_worker=gpus_per_worker)


def run_resources(cfg: dict) -> dict:
    """What a run's job process itself holds: with one worker it trains itself; with more, its Ray Train
    workers hold the resources and it only waits."""
    single = cfg["num_workers"] == 1
    return {"num_cpus": cfg["cpus_per_worker"] if single else 0, "num_gpus": cfg["gpus_per_worker"] if single else 0}


def submit(job_id: int, kind: str, target: str, folder: Path, log: Path, address: str, resources: dict,
           ray_job_id: str, env: dict) -> None:
    """Submit `python -m tunelab.jobs JOB_ID` as the Ray job `ray_job_id` (one per attempt), holding
    `resources` (num_cpus, num_gpus). Raises UserError if the cluster cannot be reached or refuses it."""
    folder = Path(folder)
    # A job's bare `python` is whatever came first on PATH where `ray start` ran: name this interpreter.
    # Its output goes to the job's log, where a local job's goes; Ray Train workers' lines reach it too.
    entrypoint = (f"cd {shlex.quote(str(folder))} && exec {shlex.quote(sys.executable)} -m tunelab.jobs {int(job_id)} "
                  f">> {shlex.quote(str(log))} 2>&1")
    _submit(job_id, kind, target, address, resources, ray_job_id, env, entrypoint, {})


def submit_remote(job_id: int, kind: str, target: str, address: str, resources: dict, ray_job_id: str, env: dict,
                  manifest_url: str, code: Path) -> None:
    """Submit `python -m tunelab.remote MANIFEST_URL` (core/remote.py) with the tunelab package folder `code`
    as py_modules: the cluster image's own `python`, which has the dependencies and not tunelab. Its output
    stays in Ray's job log (`job_logs`)."""
    _submit(job_id, kind, target, address, resources, ray_job_id, env,
            f"python -m tunelab.remote {shlex.quote(manifest_url)}", {"py_modules": [str(code)]})


def _submit(job_id: int, kind: str, target: str, address: str, resources: dict, ray_job_id: str, env: dict,
            entrypoint: str, runtime_env: dict) -> None:
    env = {**env,
           "TUNELAB_RAY_JOB_ID": ray_job_id,  # the job process closes its row by this, not by a pid
           "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),  # read by the job's supervisor
           "RAY_COLOR_PREFIX": "0",  # plain "(RayTrainWorker pid=...)" prefixes in the log
           # Ray Train routes print() through its logger, which swallows the redirection that dill (under
           # datasets' fingerprinting) relies on, and floods the log with bytecode listings.
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    try:
        _client(address).submit_job(
            entrypoint=entrypoint, submission_id=ray_job_id, runtime_env={**runtime_env, "env_vars": env},
            metadata={"tunelab_job": str(job_id), "tunelab_kind": kind, "tunelab_target": str(target)},
            entrypoint_num_cpus=resources.get("num_cpus", 1), entrypoint_num_gpus=resources.get("num_gpus", 0))
    except Exception as exc:
        raise UserError(f"the Ray cluster at {address} refused {kind} job {job_id} ({target}): "
                        f"{type(exc).__name__}: {str(exc)[:300]}") from None


def job_state(address: str, job_id: str) -> str | None:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED; LOST if the cluster does not know the job (it was
    restarted); None if the cluster cannot be reached now."""
    try:
        return str(_client(address).get_job_status(job_id).value)
    except RuntimeError as exc:
        if "does not exist" in str(exc):
            return "LOST"
        return None
    except Exception:
        return None


def job_message(address: str, job_id: str) -> str:
    try:
        info = _client(address).get_job_info(job_id)
        return f"the Ray job {job_id} ended {info.status.value}: {info.message or 'no message'}"
    except Exception as exc:
        return f"the Ray job {job_id} could not be asked about ({type(exc).__name__})"


def job_logs(address: str, job_id: str) -> str | None:
    """The job's output so far; None if the cluster cannot be asked now."""
    try:
        return _client(address).get_job_logs(job_id)
    except Exception:
        return None


def stop(address: str, job_id: str) -> None:
    """Ray sends the job process SIGTERM, and SIGKILL after STOP_GRACE_S."""
    try:
        _client(address).stop_job(job_id)
    except Exception as exc:
        raise UserError(f"could not stop Ray job {job_id} at {address}: {type(exc).__name__}: {exc}") from None
