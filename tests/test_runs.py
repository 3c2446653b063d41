"""The run manager with real run processes: a SIGKILLed run is seen as interrupted and resumes from its
checkpoint; stop saves a checkpoint; the queue starts the next run when a slot frees; a reused pid is
not taken for the run."""
import json
import os
import re
import signal

import psutil
import pytest
import yaml

from tests.conftest import run_cli, wait_until

def tiny_config(ref: str, **overrides) -> dict:
    return {"base_model": "tiny", "dataset": ref, "tuning": "lora", "learning_rate": 5e-3, "max_steps": 6,
            "per_device_train_batch_size": 2, "max_length": 96, "save_steps": 2, "warmup_ratio": 0.0, **overrides}



@pytest.mark.process
@pytest.mark.timeout(600)
def test_sigkilled_run_is_interrupted_and_resumes_from_its_checkpoint(sft_data):
    from tunelab import jobs, runs
    db, ws, ref = sft_data
    run_id = runs.launch(db, ws, tiny_config(ref))
    run = runs.get(db, run_id)
    # checkpoint-2 lives only until checkpoint-6 rotates it out: on the tiny model, a few hundred ms.
    wait_until(lambda: (run.path / "checkpoint-2" / "trainer_state.json").exists(), every=0.01)
    os.kill(run.pid, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(run.pid) or psutil.Process(run.pid).status() == psutil.STATUS_ZOMBIE)

    assert runs.get(db, run_id).status == "running"  # reads are pure: nothing changes until a reconcile
    jobs.reconcile(db)
    run = runs.get(db, run_id)
    assert run.status == "interrupted" and "killed by SIGKILL" in run.error and run.pid is None

    done = run_cli("runs", "resume", run_id, "--wait", env_home=ws.home, timeout=300)
    assert done.returncode == 0, done.stderr
    run = runs.get(db, run_id)
    assert run.status == "completed"
    log = (run.path / "train.log").read_text()
    assert log.count("resuming from checkpoint-") == 1
    resumed_from = int(log.split("resuming from checkpoint-")[1].split()[0])
    assert resumed_from >= 2 and f"training: 6 steps, from step {resumed_from}" in log
    state = json.loads((run.path / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [m["step"] for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the killed attempt's lines past the checkpoint were replaced
    assert (run.path / "final" / "adapter_config.json").exists()


@pytest.mark.process
@pytest.mark.timeout(600)
def test_stop_saves_a_checkpoint_and_the_queue_starts_the_next_run(sft_data):
    from tunelab import runs, workspace
    db, ws, ref = sft_data
    assert workspace.get_setting(db, "max_concurrent_jobs") == 1
    long = tiny_config(ref, max_steps=50_000, save_steps=100_000)  # far longer than the test takes
    first, second, third = (runs.launch(db, ws, {**long, "seed": s}) for s in range(3))
    assert [runs.get(db, r).status for r in (first, second, third)] == ["running", "queued", "queued"]

    assert runs.stop(db, third).status == "stopped"  # a queued run leaves the queue and never starts
    wait_until(lambda: runs.get(db, first).progress().get("step", 0) >= 2)
    run = runs.stop(db, first)
    assert run.status == "stopped" and run.error is None
    step = run.progress()["step"]
    assert (run.path / f"checkpoint-{step}" / "optimizer.pt").exists()  # saved on the way out
    assert "stop requested" in (run.path / "train.log").read_text()

    nxt = runs.get(db, second)  # the freed slot went to the next queued run
    assert nxt.status == "running" and psutil.pid_exists(nxt.pid)
    assert runs.get(db, third).status == "stopped" and runs.get(db, third).pid is None
    done = run_cli("runs", "stop", second, env_home=ws.home, timeout=120)
    assert done.returncode == 0 and f"run {second} stopped" in done.stdout
    assert runs.get(db, second).status == "stopped"
    assert not psutil.pid_exists(nxt.pid) or psutil.Process(nxt.pid).status() == psutil.STATUS_ZOMBIE

    done = run_cli("runs", "stop", third, env_home=ws.home)
    assert done.returncode == 2 and "only a queued or running run can be stopped" in done.stderr
    listed = json.loads(run_cli("runs", "list", "--json", env_home=ws.home).stdout)
    assert {r["id"]: r["status"] for r in listed} == {first: "stopped", second: "stopped", third: "stopped"}


@pytest.mark.process
@pytest.mark.timeout(300)
def test_a_diverging_run_fails_and_says_why(sft_data, tmp_path):
    from tunelab import runs
    db, ws, ref = sft_data
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(tiny_config(ref, tuning="full", learning_rate=1e8)))
    done = run_cli("train", str(path), "--wait", env_home=ws.home, timeout=300)
    run_id = done.stdout.strip()
    assert done.returncode == 1 and f"run {run_id} failed: training diverged:" in done.stderr
    run = runs.get(db, run_id)
    assert run.status == "failed" and re.search(r"(loss|grad_norm) became (nan|inf) at step \d", run.error)
    assert "Traceback" in runs.log_tail(run, 60)
    assert not (run.path / "final").exists()


def test_a_reused_pid_is_not_taken_for_the_run():
    from tunelab import jobs
    me = psutil.Process(os.getpid())
    assert jobs.alive(me.pid, me.create_time())
    assert not jobs.alive(me.pid, me.create_time() - 3600)  # same pid, another process's start time
    assert not jobs.alive(None, None)
