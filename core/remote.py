"""Ray jobs on a cluster that shares no disk with the studio (the `ray_storage` setting is set).

    python -m tunelab.remote s3://bucket/prefix/jobs/train-r3-1a2b3c4d/manifest.json

The studio (`submit`, called by core/jobs.py) ships what a job needs and the job ships back what it made;
only the studio writes tunelab.db:
- code: the tunelab package, built as a wheel once per code hash and unpacked in the workspace cache,
  travels as the job's runtime_env `py_modules` (Ray uploads it once per content hash). Its dependencies
  come from the cluster's image: `pip install "ray[default,train]" torch transformers peft trl datasets
  accelerate pyyaml sacrebleu rouge-score bm25s` (tunelab's own light ones, sqlite-utils, streamlit, ...,
  are never imported there);
- inputs: the base model, init_from's result, the dataset version (for GRPO and RLOO also the reward
  model and its base; for an eval the adapter, the reward model and the reference texts; for a campaign's
  generation each model's folders, its prompts and settings riding in the manifest) go to storage as
  inputs/<content hash>/, once; each node keeps a copy by hash in ~/.cache/tunelab-remote;
- the manifest (kind, config, input keys) goes to jobs/<kind>-<target>-<tag>/manifest.json; the tag stays
  with the job's folder (its remote.json), so a resume finds the checkpoints of earlier attempts.

On the cluster `main` makes a local job folder, trains (core/train/runtime.train_in, the same code as a
local run, with the downloaded copies and no database), evaluates (evaluate.evaluate_inputs) or
samples a campaign's answers (generate.answer_plan), and a `Mirror` copies status.json, metrics.jsonl,
each checkpoint, final/, an eval's result and each (model, sample)'s answers to the job's out/ in
storage. A stop is a `stop.request` object there (rank 0 polls it) as well as Ray's SIGTERM. Each
status.json carries its Ray job id (`attempt`), so an earlier attempt's report is never taken for this
one's.

Back in the studio, `pull` (jobs.reconcile calls it for such a job, so the Runs page's refresh does)
copies status.json, metrics.jsonl and the Ray job's log into the job's folder while it runs, and when it
has ended the result: a run's final/ (a full reward model registered), an eval's outputs.jsonl and
metrics (into its row), a generation's answers (into SQLite through feedback.generation.store_answers,
kept whatever the outcome so a restart resumes; pairs built once it completed).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from tunelab import folders, storage
from tunelab.errors import UserError

MARKER = "remote.json"  # in a job's folder: the storage URI and job prefix of its remote attempts
NODE_CACHE = Path.home() / ".cache" / "tunelab-remote"  # on a cluster node: inputs by content hash
POLL_S = 1.0  # how often a job copies its reports to storage and looks for a stop request
KEEP_CHECKPOINTS = 2  # in storage, as runtime.SAVE_TOTAL_LIMIT keeps locally


# ---------------------------------------------------------------- the studio's side

def store_for(db) -> storage.Store | None:
    """The remote storage the settings name, or None for the same-path mode."""
    from tunelab import workspace
    uri = str(workspace.get_setting(db, "ray_storage")).strip()
    return storage.Store(uri, str(workspace.get_setting(db, "ray_storage_endpoint")).strip() or None) if uri else None


def attached(job) -> tuple[storage.Store, str] | None:
    """(store, job prefix) if the job's current attempt was submitted through remote storage."""
    try:
        doc = json.loads((job.path / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return storage.Store(doc["uri"], doc.get("endpoint")), doc["prefix"]


def detach(job) -> None:
    """The job runs in the same-path mode from now on."""
    (job.path / MARKER).unlink(missing_ok=True)


def code_package(cache: Path) -> Path:
    """The tunelab package folder to ship as `py_modules`. From a source checkout (an editable install) a
    wheel is built (`pip wheel --no-deps`) once per hash of the sources and unpacked under `cache`, so the
    cluster gets what an install holds (the samples as package data); an installed copy is shipped as it is."""
    import tunelab
    package = Path(tunelab.__file__).resolve().parent
    project = package.parent
    if not (project / "pyproject.toml").exists():
        return package
    files = {"pyproject.toml": project / "pyproject.toml",
             **{f"core/{k}": v for k, v in storage.folder_files(package).items() if not k.endswith(".pyc")},
             **{f"samples/{p.name}": p for p in sorted((project / "data" / "samples").glob("*.jsonl"))}}
    target = Path(cache) / "code" / storage.content_hash(files)[:16]
    if not (target / "tunelab").is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                   "--quiet", "-w", tmp, str(project)], capture_output=True, text=True)
            wheels = list(Path(tmp).glob("tunelab-*.whl"))
            if done.returncode != 0 or not wheels:
                raise UserError(f"could not build the tunelab wheel to ship to the cluster:\n{done.stderr[-800:]}")
            partial = target.with_name(target.name + f".partial{os.getpid()}")
            with zipfile.ZipFile(wheels[0]) as whl:
                whl.extractall(partial)
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
    return target / "tunelab"


def _upload_folder(store: storage.Store, cache: Path, folder: Path) -> str:
    files = storage.folder_files(folder)
    return store.upload_once(files, storage.content_hash(files, memo=Path(cache) / "hashes.json"))


def _manifest(db, ws, job, store: storage.Store, cache: Path) -> dict:
    """What the job runs on, uploaded: the config, and inputs as storage keys."""
    if job.kind == "train":
        from tunelab.train import config as configmod
        from tunelab.train import runtime
        text = (job.path / "config.yaml").read_text()
        cfg = configmod.parse_yaml(text, str(job.path / "config.yaml"))
        inputs = runtime.resolve_inputs(db, ws, cfg)
        return {"config": text, "inputs": {k: _upload_folder(store, cache, v) for k, v in inputs.items() if v}}
    if job.kind == "eval":
        from tunelab import evaluate
        config = evaluate.EvalConfig.from_dict(evaluate.get(db, int(job.target))["config"])
        inputs = evaluate.eval_inputs(db, ws, config)
        with tempfile.TemporaryDirectory() as tmp:
            ref = Path(tmp) / "reference.jsonl"
            ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in inputs.pop("reference_texts")))
            keys = {"reference_texts": _upload_folder(store, cache, Path(tmp))}
        keys.update({k: _upload_folder(store, cache, v) for k, v in inputs.items() if isinstance(v, Path)})
        values = {k: v for k, v in inputs.items() if not isinstance(v, Path) and v is not None}
        return {"config": config.to_dict(), "inputs": keys, "values": values}
    if job.kind == "generate":
        from tunelab.feedback import generation
        plan = generation.generation_plan(db, ws, job.target)
        keys = {}
        for m in plan["models"]:  # each folder becomes its input's name (one upload per content, as ever)
            for part in ("model", "adapter"):
                if m[part] is not None:
                    keys[f"{part}-{m['index']}"] = _upload_folder(store, cache, m[part])
                    m[part] = f"{part}-{m['index']}"
        return {"config": {}, "inputs": keys, "values": plan}
    raise UserError(f"{job.kind} jobs run on a cluster only in the same-path mode (unset the ray_storage setting)")


def submit(db, job, ray_job_id: str, store: storage.Store, env: dict) -> None:
    """Upload the job's inputs and manifest, then submit `python -m tunelab.remote MANIFEST` with the code as
    py_modules. Raises UserError naming what could not be reached or shipped."""
    from tunelab import jobs, ray_backend
    from tunelab.workspace import Workspace
    ws = Workspace(jobs.home(db))
    cache = ws.home / "cache"
    known = attached(job)
    prefix = known[1] if known and known[0].uri == store.uri else \
        f"jobs/{job.kind}-{job.target}-{secrets.token_hex(4)}"
    store.check()
    doc = {"kind": job.kind, "target": job.target, "job": job.id, "prefix": prefix,
           **_manifest(db, ws, job, store, cache)}
    store.put_json(f"{prefix}/manifest.json", doc)
    store.delete(f"{prefix}/stop.request")
    folders.write_json_atomic(job.path / MARKER, {"uri": store.uri, "endpoint": store.endpoint, "prefix": prefix})
    env = {k: v for k, v in env.items() if k != "TUNELAB_HOME"}  # there is no workspace there
    env.update({k: v for k, v in (("AWS_ENDPOINT_URL", store.endpoint),
                                  ("AWS_REGION", os.environ.get("AWS_REGION"))) if v})
    ray_backend.submit_remote(job.id, job.kind, job.target, job.ray_address, json.loads(job.ray_resources or "{}"),
                              ray_job_id, env, store.url(prefix, "manifest.json"), code_package(cache))


def request_stop(job) -> None:
    """A stop request object in storage: the job's rank 0 sees it within POLL_S, where Ray's SIGTERM reaches
    only the job's own process."""
    found = attached(job)
    if found:
        store, prefix = found
        store.put_bytes(f"{prefix}/stop.request", b"")


def pull(db, job, ended: bool) -> None:
    """Copy the job's reports (status.json, metrics.jsonl, its Ray log) into its folder; once `ended`, also
    its result: a run's final/, an eval's answers and metrics (recorded in its row)."""
    from tunelab import ray_backend
    store, prefix = attached(job)
    out = f"{prefix}/out"
    status = store.get_json(f"{out}/status.json")
    if status and status.get("attempt") == job.ray_job_id:
        folders.write_json_atomic(job.path / "status.json", status)
    else:
        status = None
    if job.kind == "train":
        store.download(f"{out}/metrics.jsonl", job.path / "metrics.jsonl")
    log = ray_backend.job_logs(job.ray_address, job.ray_job_id) if job.ray_job_id else None
    if log is not None:
        attempts = job.path / "logs"
        attempts.mkdir(exist_ok=True)
        (attempts / f"{job.ray_job_id}.log").write_text(log)
        # One log across attempts, as a local job appends to it; attempt ids end in their start time.
        names = sorted(attempts.glob("*.log"), key=lambda p: int(p.stem.rsplit("-", 1)[-1]))
        storage.write_atomic(job.log_path, b"".join(p.read_bytes() for p in names))
    if job.kind == "generate" and ended:  # kept whatever the outcome, so that a restart resumes
        _store_answers(db, job, store, out, complete=bool(status and status.get("state") == "completed"))
    if not ended or not status or status.get("state") != "completed":
        return
    if job.kind == "train":
        from tunelab.train import config as configmod
        from tunelab.train import reward
        shutil.rmtree(job.path / "final", ignore_errors=True)
        store.download(f"{out}/final", job.path / "final")
        if configmod.load_file(job.path / "config.yaml").method == "reward":
            reward.register(db, job.target, job.path / "final")
    elif job.kind == "eval":
        from tunelab import evaluate
        store.download(f"{out}/outputs.jsonl", job.path / "outputs.jsonl")
        evaluate.record_metrics(db, int(job.target), store.get_json(f"{out}/result.json"))


def _store_answers(db, job, store: storage.Store, out: str, complete: bool) -> None:
    """A generate job's answers (out/answers/*.json) into the database, and its pairs once it completed; pairs
    that cannot be built turn the reported outcome into a failure naming why."""
    from tunelab.feedback import generation
    answers = [store.get_json(f"{out}/answers/{name}") for name in sorted(store.listdir(f"{out}/answers"))]
    try:
        generation.store_answers(db, job.target, [a for a in answers if a], complete)
    except UserError as exc:
        folders.write_json_atomic(job.path / "status.json", {**folders.read_status(job.path), "state": "failed",
                                                             "error": str(exc)})


# ---------------------------------------------------------------- the cluster's side

class Mirror:
    """Copies a job folder's reports to storage (status.json with this attempt's id, metrics.jsonl) every
    POLL_S from a thread, each checkpoint as it is saved, and final/; and watches for a stop request."""

    def __init__(self, store: storage.Store, prefix: str, folder: Path, attempt: str | None):
        self.store, self.prefix, self.folder, self.attempt = store, prefix, Path(folder), attempt
        self.out = f"{prefix}/out"
        self._seen: dict[str, tuple] = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def spec(self) -> dict:
        """What a Ray Train rank needs to make its own (see `train_rank`)."""
        return {"uri": self.store.uri, "endpoint": self.store.endpoint, "prefix": self.prefix,
                "attempt": self.attempt}

    def start(self, on_stop=None) -> None:
        def loop():
            while not self._done.wait(POLL_S):
                try:
                    self.push_reports()
                    if on_stop is not None and self.store.exists(f"{self.prefix}/stop.request"):
                        on_stop()
                except OSError as exc:  # storage unreachable for a moment: try again at the next tick
                    print(f"[tunelab] copying reports to {self.store.uri} failed: {exc}", file=sys.stderr, flush=True)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and push the reports a last time."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self.push_reports()

    def push_reports(self) -> None:
        for name in ("status.json", "metrics.jsonl"):
            path = self.folder / name
            try:
                st = path.stat()
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            if self._seen.get(name) == (st.st_mtime_ns, st.st_size):
                continue
            if name == "status.json":
                try:
                    data = json.dumps({**json.loads(data), "attempt": self.attempt}).encode()
                except json.JSONDecodeError:
                    continue
            self.store.put_bytes(f"{self.out}/{name}", data)
            self._seen[name] = (st.st_mtime_ns, st.st_size)

    def checkpoint_callback(self):
        """A TrainerCallback that uploads each checkpoint once saved, keeping the newest KEEP_CHECKPOINTS."""
        from transformers import TrainerCallback
        mirror = self

        class UploadCheckpoints(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                name = f"checkpoint-{state.global_step}"
                mirror.store.upload(mirror.folder / name, f"{mirror.out}/{name}")
                for step in _checkpoint_steps(mirror.store, mirror.out)[:-KEEP_CHECKPOINTS]:
                    mirror.store.delete(f"{mirror.out}/checkpoint-{step}")
                mirror.push_reports()
        return UploadCheckpoints()

    def push_final(self, final: Path) -> None:
        self.store.delete(f"{self.out}/final")
        self.store.upload(final, f"{self.out}/final")

    def has_final(self) -> bool:
        return bool(self.store.listdir(f"{self.out}/final"))

    def request_stop(self) -> None:
        self.store.put_bytes(f"{self.prefix}/stop.request", b"")

    def finish(self, state: str, error: str | None) -> None:
        """Record the outcome: in the local status.json, merged over what rank 0 reported if it did, and in storage."""
        self.close()
        status = folders.read_status(self.folder)
        if self._thread is None:  # a Ray Train driver: rank 0 wrote the reports
            reported = self.store.get_json(f"{self.out}/status.json") or {}
            if reported.get("attempt") == self.attempt:
                status = {**reported, **{k: v for k, v in status.items() if k in ("phase", "started_at")}}
        status.update(state=state, error=error, finished_at=time.time(), attempt=self.attempt)
        if state == "completed":
            status["progress"] = 1.0
        folders.write_json_atomic(self.folder / "status.json", status)
        self.store.put_json(f"{self.out}/status.json", status)


def _checkpoint_steps(store: storage.Store, out: str) -> list[int]:
    """The N of each checkpoint-N under `out` in storage, oldest first."""
    return sorted(int(m.group(1)) for n in store.listdir(out) if (m := re.fullmatch(r"checkpoint-(\d+)", n)))


def _prepare(store: storage.Store, manifest: dict, folder: Path, resume: bool) -> dict:
    """A local job folder: the inputs (from the node's cache), and for a run its config.yaml and, when
    `resume`, the latest checkpoint and the metrics so far."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {k: store.fetch_once(key, NODE_CACHE / "inputs") for k, key in manifest["inputs"].items()}
    if manifest["kind"] == "train":
        (folder / "config.yaml").write_text(manifest["config"])
        out = f"{manifest['prefix']}/out"
        # A checkpoint counts once trainer_state.json, uploaded last, is there.
        steps = [s for s in _checkpoint_steps(store, out) if store.exists(f"{out}/checkpoint-{s}/trainer_state.json")]
        if resume and steps:
            store.download(f"{out}/checkpoint-{steps[-1]}", folder / f"checkpoint-{steps[-1]}")
            store.download(f"{out}/metrics.jsonl", folder / "metrics.jsonl")
    return inputs


def _split(manifest_url: str) -> tuple[storage.Store, str]:
    root, rest = manifest_url.rsplit("/jobs/", 1)
    return storage.Store(root), "jobs/" + rest.rsplit("/", 1)[0]


def main(manifest_url: str) -> int:
    """The job's process on the cluster; returns the exit code (0 completed, 3 stopped, 1 otherwise)."""
    store, prefix = _split(manifest_url)
    manifest = store.get_json(f"{prefix}/manifest.json")
    if manifest is None:
        print(f"[tunelab] no manifest at {manifest_url}", flush=True)
        return 1
    work = Path(tempfile.mkdtemp(prefix=f"tunelab-{manifest['kind']}-"))
    folder = work / "job"
    mirror = Mirror(store, prefix, folder, os.environ.get("TUNELAB_RAY_JOB_ID"))
    import tunelab
    print(f"[tunelab] {manifest['kind']} job {manifest['job']} ({manifest['target']}) on {os.uname().nodename}: "
          f"python {sys.executable}, tunelab from {Path(tunelab.__file__).parent}", flush=True)
    try:
        run = {"train": _train, "eval": _evaluate, "generate": _generate}[manifest["kind"]]
        state, error = run(store, manifest, folder, mirror)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[tunelab] {manifest['kind']} job {manifest['job']} ({manifest['target']}) {state}"
          + (f": {error}" if error else ""), flush=True)
    return {"completed": 0, "stopped": 3}.get(state, 1)


def _train(store: storage.Store, manifest: dict, folder: Path, mirror: Mirror) -> tuple[str, str | None]:
    from tunelab.train import config as configmod
    from tunelab.train import distributed, runtime
    inputs = _prepare(store, manifest, folder, resume=True)
    ranks = distributed.wanted(configmod.parse_yaml(manifest["config"]))

    def make_context(folder: Path, cfg):
        ctx = runtime.RunContext(folder, None, None, cfg, inputs, mirror)
        if not ranks:  # with Ray Train workers, rank 0 reports and watches for the stop
            mirror.start(on_stop=lambda: setattr(ctx, "stop_requested", True))
        return ctx
    state, error = runtime.train_in(folder, make_context)
    mirror.finish(state, error)
    return state, error


def train_rank(spec: dict, owner_pid: int) -> None:
    """A Ray Train rank of a remote run: its own job folder from storage; rank 0 mirrors it back."""
    from tunelab.train import config as configmod
    from tunelab.train import distributed
    store, prefix = storage.Store(spec["uri"], spec["endpoint"]), spec["prefix"]
    manifest = store.get_json(f"{prefix}/manifest.json")
    rank = int(os.environ["RANK"])
    folder = Path(tempfile.mkdtemp(prefix=f"tunelab-rank{rank}-")) / "job"
    try:
        inputs = _prepare(store, manifest, folder, resume=True)
        mirror = Mirror(store, prefix, folder, spec["attempt"]) if rank == 0 else None
        ctx = distributed.RankContext(folder, None, None, configmod.load_file(folder / "config.yaml"), rank,
                                      owner_pid, inputs, mirror)
        if mirror is not None:
            mirror.start(on_stop=lambda: setattr(ctx, "stop_requested", True))
        try:
            distributed.train_rank(ctx, own_signals=False)
        finally:
            if mirror is not None:
                mirror.close()
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


class _Stopped(Exception):
    pass


def _once(store: storage.Store, manifest: dict, folder: Path, mirror: Mirror, work) -> tuple[str, str | None]:
    """Run a job that is not training (`work(files)`, given the downloaded inputs): status.json from the
    start, mirrored to storage; SIGTERM is a stop; any failure is reported."""
    def on_sigterm(signum, frame):
        raise _Stopped()
    signal.signal(signal.SIGTERM, on_sigterm)
    state, error = "failed", None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        folders.write_json_atomic(folder / "status.json", {"state": "running", "phase": "starting",
                                                           "progress": 0.0, "attempt": mirror.attempt})
        mirror.start()
        work(_prepare(store, manifest, folder, resume=False))
        state = "completed"
    except _Stopped:
        state = "stopped"
    except BaseException as exc:  # any failure is reported; KeyboardInterrupt too
        import traceback
        traceback.print_exc()
        text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
        error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {text} (traceback in job.log)"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the outcome is being recorded; do not cut it short
    mirror.finish(state, error)
    return state, error


def _evaluate(store: storage.Store, manifest: dict, folder: Path, mirror: Mirror) -> tuple[str, str | None]:
    from tunelab import evaluate

    def work(files: dict) -> None:
        texts = [json.loads(line)["text"] for line in
                 (files.pop("reference_texts") / "reference.jsonl").read_text().splitlines() if line.strip()]
        inputs = {"adapter": None, "reward": None, "reward_base": None, "merged_from": None, **files,
                  **manifest["values"], "reference_texts": texts}
        config = evaluate.EvalConfig.from_dict(manifest["config"])
        metrics = evaluate.evaluate_inputs(inputs, config, folders.progress_writer(folder),
                                           outputs=folder / "outputs.jsonl")
        store.upload(folder / "outputs.jsonl", f"{mirror.out}/outputs.jsonl")
        store.put_json(f"{mirror.out}/result.json", metrics)
    return _once(store, manifest, folder, mirror, work)


def _generate(store: storage.Store, manifest: dict, folder: Path, mirror: Mirror) -> tuple[str, str | None]:
    """A campaign's generation: each (model, sample)'s answers go to out/answers/ as soon as they are made, for
    the studio to store (tunelab.db is the studio's alone)."""
    from tunelab import generate

    def send(spec: str, sample: int, prompt_ids: list[int], texts: list[str], settings) -> None:
        index = next(m["index"] for m in plan["models"] if m["spec"] == spec)
        store.put_json(f"{mirror.out}/answers/{index}-{sample}.json",
                       {"model": spec, "sample": sample, "prompt_ids": prompt_ids, "texts": texts,
                        "settings": settings.to_dict()})

    plan = manifest["values"]

    def work(files: dict) -> None:
        for m in plan["models"]:
            m["model"], m["adapter"] = files[m["model"]], files[m["adapter"]] if m["adapter"] else None
        generate.answer_plan(plan, send, folders.progress_writer(folder))
    return _once(store, manifest, folder, mirror, work)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tunelab.remote STORAGE_URI/jobs/NAME/manifest.json")
    from tunelab import remote  # one module object, whichever way it was started
    sys.exit(remote.main(sys.argv[1]))
