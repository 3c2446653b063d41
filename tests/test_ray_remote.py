"""The ray backend on a cluster that shares no disk with the studio (the `ray_storage` setting), for real on
one machine: an S3-compatible server (moto's, started here) is the storage, and the Ray head runs in a mount
namespace where the repository, the studio's site-packages and the test workspaces are hidden under empty
tmpfs mounts, from a Python environment of its own with Ray and the training libraries but not tunelab (as a
cluster image would have; built once and cached in ~/.cache/tunelab-tests/ray-env). Code travels as the
job's runtime_env, inputs and results through the bucket; a 2-worker LoRA run is stopped, resumed and
completes with its metrics and adapter back in the run folder; an eval runs there too, a campaign's
generation (answers into SQLite, pairs built), reward models and GRPO; and an eval through a shared folder
in place of S3.

Needs root (for `unshare -m` and mount); the environment build takes about a minute the first time."""
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import REPO, stop_leftover_runs, wait_until

pytest.importorskip("ray.job_submission", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytest.importorskip("moto.server", reason="moto's server is not installed (pip install -e '.[dev]')")

from tests.ray_cluster import ENV, RayCluster  # noqa: E402

SAMPLE = REPO / "data" / "samples" / "acme_router_sft.jsonl"
# What a cluster image holds: Ray and the training libraries, at the studio's versions; torch by the range
# that takes the local CPU wheel. Not tunelab, and none of its studio-only dependencies.
IMAGE = [f"ray[default,train]=={version('ray')}", "torch>=2.6,<2.14",
         *[f"{p}=={version(p)}" for p in ("transformers", "peft", "trl", "datasets", "accelerate", "pyyaml",
                                          "sacrebleu", "rouge-score", "bm25s")]]
ENV_CACHE = Path.home() / ".cache" / "tunelab-tests" / "ray-env"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
BUCKET = "tunelab-test"

pytestmark = [pytest.mark.process, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_python() -> Path:
    """The cluster image's environment: a venv with IMAGE installed, keyed by a hash of IMAGE (and this Python).
    Made in place (a venv's scripts name their folder); `ready` is written last."""
    env = ENV_CACHE / hashlib.sha256("\n".join([sys.version, *IMAGE]).encode()).hexdigest()[:12]
    if not (env / "ready").exists():
        subprocess.run(["rm", "-rf", str(env)], check=True)
        started = time.time()
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
        done = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", *IMAGE],
                              capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"building the cluster environment failed:\n{done.stderr[-3000:]}")
        (env / "ready").write_text(f"built in {time.time() - started:.0f}s\n")
    return env / "bin" / "python"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free port, with one bucket; yields its URL."""
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import pyarrow.fs as pafs
        saved = {k: os.environ.get(k) for k in S3_ENV}
        os.environ.update(S3_ENV)

        def bucket():
            try:
                pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                                  allow_bucket_creation=True).create_dir(BUCKET)
                return True
            except OSError:
                return False
        wait_until(bucket, timeout=60, every=0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def hidden_cluster(tmp_path_factory, s3):
    """A Ray head that cannot see the studio's repository, site-packages or workspaces."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the cluster is started with `unshare -m` and tmpfs mounts over the studio's paths")
    python = cluster_python()
    hidden = [REPO, Path(sysconfig.get_paths()["purelib"]), tmp_path_factory.getbasetemp()]
    mounts = " && ".join(f"mount -t tmpfs tunelab-hidden {shlex.quote(str(p))}" for p in hidden)
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    cluster = RayCluster(num_cpus=3, ray=python.with_name("ray"),
                         wrap=["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"',
                               "sh", "sh", "-c"],
                         # the job's bare `python` is the image's; S3 credentials are the nodes' own
                         env={"PATH": f"{python.parent}:{os.environ['PATH']}", **S3_ENV})
    cluster.hidden = hidden
    yield cluster
    cluster.stop()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def remote_ws(tiny_model, s3, hidden_cluster, monkeypatch):
    from tunelab import datasets, workspace
    db, ws, _ = tiny_model
    workspace.set_setting(db, "ray_storage", f"s3://{BUCKET}/{ws.home.parent.name}")
    workspace.set_setting(db, "ray_storage_endpoint", s3)
    monkeypatch.setenv("RAY_ADDRESS", hidden_cluster.address)
    yield db, ws, datasets.import_file(db, ws, SAMPLE, "acme").version.ref
    stop_leftover_runs(db)


def _store(db):
    from tunelab import remote
    return remote.store_for(db)


def _progress(db, run_id):
    from tunelab import jobs, runs
    jobs.reconcile(db)  # pulls the reports from storage
    return runs.get(db, run_id)


@pytest.mark.process
@pytest.mark.timeout(120)
def test_the_cluster_side_imports_without_the_studios_dependencies():
    """A cluster image has no sqlite-utils or streamlit: what a remote job imports (the methods' modules, the
    dataset row helpers GRPO and RLOO read prompts with, evaluate, generate) must not reach tunelab.db."""
    code = (
        "import importlib.abc, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('sqlite_utils', 'streamlit'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import tunelab.remote, tunelab.evaluate, tunelab.generate\n"
        "from tunelab.datasets import prompt_messages\n"
        "from tunelab.train import config, distributed, runtime\n"
        "assert {'grpo', 'rloo', 'reward', 'sft'} <= set(config.methods())\n"
        "assert 'tunelab.db' not in sys.modules, 'tunelab.db imported'\n"
        "assert prompt_messages({'messages': [{'role': 'user', 'content': 'q'}, "
        "{'role': 'assistant', 'content': 'a'}]}) == [{'role': 'user', 'content': 'q'}]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_download_keeps_every_object_inside_its_target(tmp_path):
    """Storage is written from the cluster too: an object key with '..' in it never lands outside the folder."""
    import pyarrow.fs as pafs

    from tunelab import storage
    from tunelab.errors import UserError

    class Listing:  # what S3 would list for an object put at out/final/../../escaped
        type_name = "local"

        def get_file_info(self, what):
            if isinstance(what, pafs.FileSelector):
                return [pafs.FileInfo(what.base_dir + "/../../escaped", type=pafs.FileType.File)]
            return pafs.FileInfo(what, type=pafs.FileType.Directory)

        def open_input_stream(self, path):
            raise AssertionError(f"read {path}")

    store = storage.Store(str(tmp_path / "storage"))
    store.fs = Listing()
    with pytest.raises(UserError, match="outside"):
        store.download("jobs/x/out/final", tmp_path / "job" / "final")
    assert not (tmp_path / "escaped").exists()


@pytest.mark.timeout(900)
def test_the_cluster_sees_none_of_the_studios_paths(hidden_cluster):
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(hidden_cluster.address)
    paths = [str(p) for p in hidden_cluster.hidden]
    probe = ("import importlib.util, json, os, sys; print('PROBE', json.dumps({"
             f"'listed': [len(os.listdir(p)) for p in {paths!r}], "
             "'tunelab': importlib.util.find_spec('tunelab') is not None, 'python': sys.executable}))")
    job = client.submit_job(entrypoint=f"python -c {shlex.quote(probe)}")
    wait_until(lambda: client.get_job_status(job).is_terminal(), timeout=120, every=0.5)
    line = next(x for x in client.get_job_logs(job).splitlines() if x.startswith("PROBE "))
    seen = json.loads(line[len("PROBE "):])
    assert seen["listed"] == [0] * len(paths)  # an empty tmpfs over each studio path
    assert not seen["tunelab"] and Path(seen["python"]).parent.parent.parent == ENV_CACHE
    assert all(os.listdir(p) for p in paths)  # while the studio sees them


@pytest.mark.timeout(900)
def test_a_two_worker_run_stops_resumes_and_comes_back_through_s3(remote_ws, hidden_cluster):
    from tunelab import runs
    db, ws, ref = remote_ws
    run_id = runs.launch(db, ws, {"base_model": "tiny", "dataset": ref, "tuning": "lora", "learning_rate": 2e-2,
                                  "max_steps": 300, "per_device_train_batch_size": 2, "max_length": 96,
                                  "save_steps": 1000, "warmup_ratio": 0.0, "seed": 0, "backend": "ray",
                                  "num_workers": 2})
    run = runs.get(db, run_id)
    assert run.status == "running" and run.ray_job_id, (run.error, runs.log_tail(run))
    store = _store(db)
    inputs = sorted(store.listdir("inputs"))
    assert len(inputs) == 2  # the model folder and the dataset version, by content hash
    first_upload = [store.fs.get_file_info(store.path("inputs", d, "_COMPLETE")).mtime for d in inputs]

    # Live: the Runs page's refresh (reconcile) pulls status.json and metrics.jsonl while it trains.
    run = wait_until(lambda: (r := _progress(db, run_id)).progress().get("step", 0) >= 2 and r, timeout=400,
                     every=0.5)
    assert run.status == "running" and runs.read_metrics(ws, run_id), runs.log_tail(run, 80)
    assert run.progress()["world_size"] == 2
    assert not (run.path / "final").exists()

    run = runs.stop(db, run_id)
    assert run.status == "stopped", (run.error, runs.log_tail(run, 80))
    step = run.progress()["step"]
    assert 2 <= step < 300, step
    prefix = json.loads((run.path / "remote.json").read_text())["prefix"]
    assert store.exists(f"{prefix}/out/checkpoint-{step}/trainer_state.json")  # saved on the way out, in S3
    log = (run.path / "train.log").read_text()
    assert "tunelab from" in log and str(REPO) not in log.split("tunelab from", 1)[1].splitlines()[0]

    run = runs.resume(db, run_id)
    run = runs.wait(db, run_id, poll_s=0.5, timeout_s=500)
    assert run.status == "completed", (run.error, runs.log_tail(run, 80))
    assert f"resuming from checkpoint-{step}" in (run.path / "train.log").read_text()
    train = [m for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 301))  # one line a step, none trained twice
    assert (run.path / "final" / "adapter_config.json").exists()
    assert (run.path / "final" / "adapter_model.safetensors").exists()
    assert run.progress()["state"] == "completed" and run.progress()["progress"] == 1.0
    # The second attempt uploaded nothing again.
    assert sorted(store.listdir("inputs")) == inputs
    assert [store.fs.get_file_info(store.path("inputs", d, "_COMPLETE")).mtime for d in inputs] == first_upload

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from tunelab import models
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models.model_path(db, ws, "tiny")),
                              run.path / "final")


@pytest.mark.timeout(600)
def test_an_eval_runs_on_the_cluster_and_its_metrics_reach_the_studio(remote_ws, hidden_cluster):
    from tunelab import evaluate, jobs
    db, ws, ref = remote_ws
    eval_id = evaluate.launch(db, ws, evaluate.EvalConfig(model="tiny", dataset=ref, limit=2, max_new_tokens=4,
                                                          backend="ray"))
    job = jobs.find(db, "eval", str(eval_id))
    assert job.status == "running" and job.ray_job_id, job.error
    row = evaluate.wait(db, eval_id, timeout_s=400)
    log = open(row["log"]).read()
    assert row["status"] == "completed", (row["error"], log[-3000:])
    assert row["metrics"]["rows"] == 2 and row["metrics"]["perplexity"] > 1
    outputs = (ws.home / "evals" / str(eval_id) / "outputs.jsonl").read_text().splitlines()
    assert len(outputs) == 2
    assert "100.0% done" in log  # the job's output, from Ray's log


@pytest.mark.timeout(600)
def test_a_campaign_generates_on_the_cluster_and_its_answers_reach_sqlite(remote_ws, hidden_cluster,
                                                                          tiny_model_dir):
    from tunelab import feedback, jobs, models
    from tunelab.generate import SamplingSettings
    db, ws, _ = remote_ws
    models.add_local(db, tiny_model_dir, "tiny-b")  # the same files under another name: uploaded once
    # Enough work (4 x 48 answers) that the tiny model's generation outlasts a few of the studio's polls.
    prompts = [f"Say something about {t} number {i}." for t in ("tea", "cats", "rain", "maps", "jazz", "salt")
               for i in range(8)]
    c = feedback.create_campaign(db, ws, "remote", ["tiny", "tiny-b"], prompts=prompts,
                                 config=feedback.CampaignConfig(samples=2, overlap=1),
                                 settings=SamplingSettings(max_new_tokens=40, temperature=0.8, seed=5))
    job = feedback.start_generation(db, ws, "remote", backend="ray")
    assert job.status == "running" and job.ray_job_id, job.error
    seen = []  # what the studio showed while it ran: pulled from storage by reconcile
    c = feedback.wait_generation(db, "remote", progress=lambda f, m: seen.append((f, m)), timeout_s=400)
    job = jobs.get(db, job.id)
    log = job.log_path.read_text()
    assert c.status == "ready" and job.status == "completed", (job.error, log[-3000:])
    assert any(0 < f < 1 and "sample" in m for f, m in seen), seen
    assert "tiny-b sample 2: generating" in log  # the job's output, from Ray's log
    assert str(REPO) not in log.split("tunelab from", 1)[1].splitlines()[0]
    rows = db.execute("SELECT r.model, r.sample, r.seed, r.text FROM responses r JOIN campaign_prompts p "
                      "ON p.id = r.prompt_id WHERE p.campaign_id = ?", [c.id]).fetchall()
    assert sorted({(m, s, seed) for m, s, seed, _ in rows}) == [("tiny", 0, 5), ("tiny", 1, 6), ("tiny-b", 0, 5),
                                                                 ("tiny-b", 1, 6)]
    assert len(rows) == 4 * 48 and all(text for *_, text in rows)
    assert db.execute("SELECT count(*) FROM pairs WHERE campaign_id = ?", [c.id]).fetchone()[0] == 2 * 48
    assert len(_store(db).listdir("inputs")) == 1  # two specs, one model folder's content
    # Starting it again has nothing left to do: no second generation, the campaign stays ready.
    with pytest.raises(Exception, match="ready"):
        feedback.start_generation(db, ws, "remote", backend="ray")


def _preferences(n: int) -> list[dict]:
    """Digits are preferred to words: a reward model learns it in a few steps."""
    return [{"prompt": [{"role": "user", "content": f"Count to {i % 7 + 2}."}],
             "chosen": [{"role": "assistant", "content": " ".join(str(d) for d in range(i % 7 + 2))}],
             "rejected": [{"role": "assistant", "content": "the cat sat on a mat"}]} for i in range(n)]


@pytest.mark.timeout(900)
def test_reward_models_and_grpo_train_on_the_cluster(remote_ws, hidden_cluster, tmp_path):
    """A full reward model comes back registered; a LoRA one's adapter sits on a base the cluster cannot see at
    its recorded path, so GRPO gets that base shipped beside it."""
    from tunelab import datasets, models, runs
    db, ws, _ = remote_ws
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _preferences(16)))
    ref = datasets.import_file(db, ws, path, "prefs").version.ref
    common = {"base_model": "tiny", "dataset": ref, "learning_rate": 1e-3, "per_device_train_batch_size": 4,
              "save_steps": 100, "warmup_ratio": 0.0, "seed": 0, "backend": "ray"}
    full = runs.launch(db, ws, {**common, "method": "reward", "tuning": "full", "max_steps": 3})
    lora = runs.launch(db, ws, {**common, "method": "reward", "tuning": "lora", "max_steps": 3})
    for run_id in (full, lora):
        run = runs.wait(db, run_id, poll_s=0.5, timeout_s=400)
        assert run.status == "completed", (run.error, runs.log_tail(run, 80))
    assert models.get_model(db, f"reward-{full}").kind == "reward"  # registered by the studio on pull
    assert (runs.get(db, lora).path / "final" / "adapter_config.json").exists()

    grpo = runs.launch(db, ws, {**common, "method": "grpo", "tuning": "lora", "reward_model": lora, "max_steps": 2,
                                "num_generations": 2, "max_completion_length": 8, "beta": 0.0})
    run = runs.wait(db, grpo, poll_s=0.5, timeout_s=400)
    assert run.status == "completed", (run.error, runs.log_tail(run, 80))
    train = [m for m in runs.read_metrics(ws, grpo) if m["kind"] == "train"]
    assert [m["step"] for m in train] == [1, 2] and all("reward" in m for m in train)
    assert (run.path / "final" / "adapter_model.safetensors").exists()


@pytest.mark.timeout(600)
def test_an_eval_runs_through_a_shared_folder(tiny_model, hidden_cluster, monkeypatch, tmp_path_factory):
    """ray_storage as a folder that the studio and every node mount (here /tmp, which the cluster sees)."""
    import tempfile

    from tunelab import datasets, evaluate, workspace
    db, ws, _ = tiny_model
    shared = Path(tempfile.mkdtemp(prefix="tlshared", dir="/tmp"))
    assert not shared.is_relative_to(tmp_path_factory.getbasetemp())  # the cluster hides that one
    workspace.set_setting(db, "ray_storage", str(shared))
    monkeypatch.setenv("RAY_ADDRESS", hidden_cluster.address)
    ref = datasets.import_file(db, ws, SAMPLE, "acme").version.ref
    try:
        eval_id = evaluate.launch(db, ws, evaluate.EvalConfig(model="tiny", dataset=ref, limit=2, max_new_tokens=4,
                                                              backend="ray"))
        row = evaluate.wait(db, eval_id, timeout_s=400)
        assert row["status"] == "completed", (row["error"], open(row["log"]).read()[-3000:])
        assert row["metrics"]["rows"] == 2
        prefix = json.loads((ws.home / "evals" / str(eval_id) / "remote.json").read_text())["prefix"]
        assert (shared / prefix / "out" / "result.json").exists() and any((shared / "inputs").iterdir())
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=True)
