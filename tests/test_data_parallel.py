"""Data parallelism on this machine (num_processes: 2, DDP over gloo on CPU): both ranks train one run,
metrics come from rank 0 alone, and a stop makes both save the same checkpoint and leave together."""
import pytest

from tests.conftest import REPO, wait_until

SAMPLE = REPO / "data" / "samples" / "acme_router_sft.jsonl"



@pytest.mark.process
@pytest.mark.timeout(600)
def test_two_local_processes_train_one_run_and_stop_together(tiny_model):
    from tunelab import datasets, runs
    db, ws, _ = tiny_model
    ref = datasets.import_file(db, ws, SAMPLE, "acme").version.ref
    run_id = runs.launch(db, ws, {"base_model": "tiny", "dataset": ref, "tuning": "lora", "learning_rate": 2e-2,
                                  "max_steps": 500, "save_steps": 1000, "per_device_train_batch_size": 2,
                                  "max_length": 96, "num_processes": 2})
    wait_until(lambda: runs.get(db, run_id).progress().get("step", 0) >= 3)
    run = runs.stop(db, run_id)
    assert run.status == "stopped" and run.error is None, (run.error, runs.log_tail(run, 60))
    status = run.progress()
    assert status["world_size"] == 2
    step = status["step"]
    assert (run.path / f"checkpoint-{step}" / "optimizer.pt").exists()
    train = [m for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    assert [m["step"] for m in train] == list(range(1, len(train) + 1)) and len(train) >= 3
    assert not (run.path / "stop.request").exists()
