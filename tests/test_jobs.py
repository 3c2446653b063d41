"""One job lifecycle for runs, evals and generation: one queue (an eval waits for a run's slot), logs in each
job's folder, a reused pid is not taken for a job, wait's timeout, stop, pure reads with an explicit
reconcile, and `tunelab jobs list/show/stop` through the real CLI."""
import json
import os
import signal
import time

import psutil
import pytest

from tests.conftest import REPO, run_cli, wait_until

SAMPLE = REPO / "data" / "samples" / "acme_router_sft.jsonl"


@pytest.fixture
def sft_data(tiny_model):
    """The tiny model and the sample SFT data; no job process outlives the test."""
    from tunelab import datasets, jobs
    db, ws, _ = tiny_model
    yield db, ws, datasets.import_file(db, ws, SAMPLE, "acme").version.ref
    jobs.reconcile(db)
    for job in jobs.list_jobs(db):
        if job.status in jobs.ACTIVE:
            jobs.stop(db, job.id, grace_s=5)


def long_run(ref: str) -> dict:
    return {"base_model": "tiny", "dataset": ref, "tuning": "lora", "max_steps": 50_000, "save_steps": 100_000,
            "per_device_train_batch_size": 2, "max_length": 96}


def small_eval(ref: str):
    from tunelab import evaluate
    return evaluate.EvalConfig(model="tiny", dataset=ref, limit=2, max_new_tokens=4)


@pytest.mark.process
@pytest.mark.timeout(400)
def test_a_run_and_an_eval_share_one_queue_and_the_cli_lists_shows_and_stops_them(sft_data):
    from tunelab import evaluate, jobs, runs, workspace
    db, ws, ref = sft_data
    assert workspace.get_setting(db, "max_concurrent_jobs") == 1
    run_id = runs.launch(db, ws, long_run(ref))
    eval_id = evaluate.launch(db, ws, small_eval(ref))
    spare_id = evaluate.launch(db, ws, small_eval(ref))
    run_job, eval_job = jobs.find(db, "train", run_id), jobs.find(db, "eval", str(eval_id))
    assert (run_job.status, eval_job.status) == ("running", "queued")  # the eval waits for the run's slot
    with pytest.raises(TimeoutError, match=f"eval job {eval_job.id} .* still queued after 1"):
        jobs.wait(db, eval_job.id, timeout_s=1, poll_s=0.2)

    listed = run_cli("jobs", "list", "--json", env_home=ws.home)
    assert listed.returncode == 0, listed.stderr
    assert [(j["kind"], j["target"], j["status"]) for j in json.loads(listed.stdout)] == [
        ("eval", str(spare_id), "queued"), ("eval", str(eval_id), "queued"), ("train", run_id, "running")]
    shown = run_cli("jobs", "show", str(run_job.id), env_home=ws.home)
    assert shown.returncode == 0 and "train.log" in shown.stdout and f"{run_job.pid}" in shown.stdout

    stopped = run_cli("jobs", "stop", str(jobs.find(db, "eval", str(spare_id)).id), env_home=ws.home)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout  # a queued job leaves the queue
    wait_until(lambda: runs.get(db, run_id).progress().get("step", 0) >= 1)
    stopped = run_cli("jobs", "stop", str(run_job.id), env_home=ws.home, timeout=120)
    assert stopped.returncode == 0 and f"job {run_job.id} (train {run_id}) stopped" in stopped.stdout
    assert "stop requested" in (ws.runs_dir / run_id / "train.log").read_text()  # SIGTERM: saved, then exited

    done = jobs.wait(db, eval_job.id, timeout_s=240)  # the freed slot went to the queued eval
    assert done.status == "completed", (done.error, done.log_path.read_text()[-2000:])
    assert done.started_at >= jobs.get(db, run_job.id).finished_at - 1
    assert done.log_path == ws.home / "evals" / str(eval_id) / "job.log" and "100.0% done" in done.log_path.read_text()
    assert evaluate.get(db, spare_id)["status"] == "stopped"
    again = run_cli("jobs", "stop", str(run_job.id), env_home=ws.home)
    assert again.returncode == 2 and "only a queued or running one can be stopped" in again.stderr
    missing = run_cli("jobs", "show", "999", "--json", env_home=ws.home)
    assert missing.returncode == 2 and missing.stdout == "" and "no job 999" in missing.stderr


@pytest.mark.process
@pytest.mark.timeout(300)
def test_reads_change_nothing_until_reconcile(sft_data):
    from tunelab import evaluate, jobs, runs
    db, ws, ref = sft_data
    run_id = runs.launch(db, ws, long_run(ref))
    job = jobs.find(db, "train", run_id)
    wait_until(lambda: runs.get(db, run_id).progress().get("phase", "starting") != "starting")
    os.killpg(job.pid, signal.SIGKILL)
    wait_until(lambda: not jobs.alive(job.pid, job.proc_start))

    eval_id = evaluate.launch(db, ws, small_eval(ref))  # queued behind the dead run, as far as the table knows
    for _ in range(2):
        assert runs.get(db, run_id).status == "running" and [r.status for r in runs.list_runs(db)] == ["running"]
        assert jobs.get(db, job.id).status == "running" and evaluate.get(db, eval_id)["status"] == "queued"
        assert [j.status for j in jobs.list_jobs(db)] == ["queued", "running"]
        assert [e["status"] for e in evaluate.list_evals(db)] == ["queued"]

    jobs.reconcile(db)
    run = runs.get(db, run_id)
    assert run.status == "interrupted" and "killed by SIGKILL" in run.error and str(ws.runs_dir / run_id) in run.error
    assert evaluate.get(db, eval_id)["status"] in ("running", "completed")  # reconcile filled the free slot
    assert evaluate.wait(db, eval_id, timeout_s=240)["status"] == "completed"


def test_a_reused_pid_is_not_taken_for_a_job(workspace):
    from tunelab import jobs
    db, ws = workspace
    me = psutil.Process(os.getpid())
    assert jobs.alive(me.pid, me.create_time()) and not jobs.alive(me.pid, me.create_time() - 3600)
    job_id = jobs.add(db, "eval", "1", ws.home / "evals" / "1")
    # A job that ran in a process with this test's pid but started an hour earlier: the pid was reused.
    db.execute("UPDATE jobs SET status = 'running', pid = ?, proc_start = ?, stop_requested_at = ? WHERE id = ?",
               [me.pid, me.create_time() - 3600, time.time() - 3600, job_id])
    jobs.reconcile(db)  # must neither take this process for the job nor SIGKILL it for the old stop
    assert jobs.get(db, job_id).status == "stopped"
