"""The ray backend on a real single-node Ray cluster (started once for these tests, stopped after): a tiny
SFT run as a Ray job writes its run folder like a local run, and `tunelab runs stop` stops another with a
checkpoint saved; a 2-worker data-parallel run (Ray Train, DDP over gloo) lowers the loss and leaves an
adapter that PEFT loads."""
import json
import os

import pytest
import yaml

from tunelab.errors import UserError
from tests.conftest import REPO, run_cli, wait_until

pytest.importorskip("ray.job_submission", reason="the ray extra is not installed (pip install -e '.[ray]')")

from tests.ray_cluster import ENV, RayCluster  # noqa: E402

SAMPLE = REPO / "data" / "samples" / "acme_router_sft.jsonl"


@pytest.fixture(scope="session")
def ray_cluster():
    """One head node on free 127.0.0.1 ports for the whole session; only its own processes are stopped."""
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)  # the clients here and the CLI subprocesses
    cluster = RayCluster(num_cpus=3)  # logical: a 1-worker and a 2-worker run side by side
    yield cluster
    cluster.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def sft_data(tiny_model):
    from tunelab import datasets
    db, ws, _ = tiny_model
    return db, ws, datasets.import_file(db, ws, SAMPLE, "acme").version.ref


def tiny_config(ref: str, **overrides) -> dict:
    return {"base_model": "tiny", "dataset": ref, "tuning": "lora", "learning_rate": 2e-2, "max_steps": 4,
            "per_device_train_batch_size": 2, "max_length": 96, "save_steps": 2, "warmup_ratio": 0.0, "seed": 0,
            **overrides}



@pytest.mark.process
@pytest.mark.timeout(120)
def test_backend_keys_are_checked_before_launch(sft_data):
    from tunelab import runs
    db, ws, ref = sft_data
    with pytest.raises(UserError, match="key 'num_workers'.*backend ray"):
        runs.launch(db, ws, tiny_config(ref, num_workers=2))
    with pytest.raises(UserError, match="key 'num_processes'.*backend local"):
        runs.launch(db, ws, tiny_config(ref, backend="ray", ray_address="http://127.0.0.1:9", num_processes=2))
    with pytest.raises(UserError, match="key 'ray_address': no Ray cluster answered at http://127.0.0.1:9"):
        runs.launch(db, ws, tiny_config(ref, backend="ray", ray_address="127.0.0.1:9"))
    assert runs.list_runs(db) == []


@pytest.mark.process
@pytest.mark.timeout(600)
def test_ray_runs_fill_their_run_folder_and_stop_from_the_cli(sft_data, ray_cluster, monkeypatch):
    """Two jobs side by side: a single-worker one trains to the end; a 2-worker one is stopped, and both its
    workers save the same checkpoint."""
    from tunelab import ray_backend, runs
    db, ws, ref = sft_data
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)  # the default for ray_address
    run_id = runs.launch(db, ws, tiny_config(ref, backend="ray"))
    long_id = runs.launch(db, ws, tiny_config(ref, backend="ray", num_workers=2, max_steps=500, save_steps=1000))
    run = runs.get(db, run_id)
    assert run.backend == "ray" and run.ray_job_id and run.pid is None and run.status == "running"
    assert runs.get(db, long_id).status == "running"  # the cluster, not the local slot count, queues Ray runs
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["ray_address"] == ray_cluster.address and saved["gpus_per_worker"] == 0.0  # pinned

    run = runs.wait(db, run_id, poll_s=0.5, timeout_s=300)
    assert run.status == "completed", (run.error, runs.log_tail(run))
    # The run process recorded its outcome; the job ends as that process exits.
    wait_until(lambda: ray_backend.job_state(ray_cluster.address, run.ray_job_id) == "SUCCEEDED", timeout=60)
    train = [m for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3, 4] and all(m["loss"] > 0 for m in train)
    assert run.progress()["state"] == "completed" and run.run_seconds > 0
    assert "[tunelab" in runs.log_tail(run, 200)  # the job's output went to train.log
    assert (run.path / "final" / "adapter_config.json").exists()
    shown = json.loads(run_cli("runs", "show", run_id, "--json", env_home=ws.home).stdout)
    assert shown["backend"] == "ray" and shown["ray_job_id"] == run.ray_job_id

    wait_until(lambda: runs.get(db, long_id).progress().get("step", 0) >= 2)
    done = run_cli("runs", "stop", long_id, env_home=ws.home, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"run {long_id} stopped" in done.stdout
    run = runs.get(db, long_id)
    assert run.status == "stopped" and run.error is None
    assert ray_backend.job_state(ray_cluster.address, run.ray_job_id) == "STOPPED"
    step = run.progress()["step"]
    assert 2 <= step < 500 and (run.path / f"checkpoint-{step}" / "optimizer.pt").exists()  # saved on the way out
    assert "stop requested" in (run.path / "train.log").read_text() and not (run.path / "stop.request").exists()
    train = [m for m in runs.read_metrics(ws, long_id) if m["kind"] == "train"]
    assert train[-1]["step"] <= step  # nothing trained past the checkpoint


@pytest.mark.process
@pytest.mark.timeout(600)
def test_two_ray_train_workers_lower_the_loss_and_save_a_peft_adapter(sft_data, ray_cluster):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab import models, runs
    db, ws, ref = sft_data
    run_id = runs.launch(db, ws, tiny_config(ref, backend="ray", ray_address=ray_cluster.address, num_workers=2,
                                             max_steps=8, save_steps=4))
    run = runs.wait(db, run_id, poll_s=0.5, timeout_s=400)
    assert run.status == "completed", (run.error, runs.log_tail(run, 80))
    assert run.progress()["world_size"] == 2  # the Trainer itself saw both ranks
    log = (run.path / "train.log").read_text()
    assert "world_rank=1" in log  # Ray Train's report of its worker group

    train = [m for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 9))  # one line a step: rank 0 alone writes
    losses = [m["loss"] for m in train]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert (run.path / "checkpoint-8" / "optimizer.pt").exists()

    final = run.path / "final"
    base_dir = models.model_path(db, ws, "tiny")
    tokenizer = AutoTokenizer.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    inputs = tokenizer("Hello, how are you today?", return_tensors="pt")
    with torch.no_grad():
        before = base(**inputs).logits
        after = PeftModel.from_pretrained(base, final)(**inputs).logits
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.process
@pytest.mark.timeout(300)
def test_an_eval_runs_as_a_ray_job_in_its_own_folder(sft_data, ray_cluster):
    from tunelab import evaluate, jobs
    db, ws, ref = sft_data
    eval_id = evaluate.launch(db, ws, evaluate.EvalConfig(model="tiny", dataset=ref, limit=2, max_new_tokens=4,
                                                          backend="ray", ray_address=ray_cluster.address))
    job = jobs.find(db, "eval", str(eval_id))
    assert job.backend == "ray" and job.ray_job_id and job.pid is None and job.status == "running"
    row = evaluate.wait(db, eval_id, timeout_s=240)
    assert row["status"] == "completed" and row["metrics"]["rows"] == 2, (row["error"], open(row["log"]).read()[-2000:])
    assert "100.0% done" in (ws.home / "evals" / str(eval_id) / "job.log").read_text()
