"""Fine-tuned + RAG and fine-tuned + prompting are leaderboard rows of their own, beside base, prompting, RAG
and fine-tuned: `tunelab eval MODEL --adapter RUN --baseline rag` through the real CLI, with the training
facts of the run and the fine-tuned model's forgetting."""
import json

import pytest

from tunelab import evaluate, leaderboard, runs
from tests.conftest import make_dataset, run_cli, stop_leftover_runs

FAST = {"k": 2, "limit": 2, "max_new_tokens": 4}


@pytest.mark.process
@pytest.mark.timeout(600)
def test_combinations_are_rows_with_their_training_facts(tiny_model, tmp_path):
    db, ws, name = tiny_model
    version = make_dataset(db, ws, tmp_path)
    run_id = runs.launch(db, ws, {"base_model": name, "dataset": version.ref, "method": "sft", "tuning": "lora",
                                  "learning_rate": 1e-2, "max_steps": 2, "per_device_train_batch_size": 2,
                                  "max_length": 96, "logging_steps": 1, "save_steps": 100, "eval_steps": 100,
                                  "warmup_ratio": 0.0})
    try:
        run = runs.wait(db, run_id, poll_s=0.5, timeout_s=240)
    finally:
        stop_leftover_runs(db)
    assert run.status == "completed", (run.error, runs.log_tail(run))

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    done = run_cli("eval", name, "--adapter", run_id, "--baseline", "rag", "--dataset", "qa", *flags, "--wait",
                   "--json", env_home=ws.home, timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["label"] == f"{name}+{run_id} [rag]" and doc["status"] == "completed"
    row = evaluate.get(db, doc["id"])
    assert (row["model"], row["adapter"], row["baseline"]) == (name, run_id, "rag")
    # NAME+RUN as the model is the same spec; prompting is the other combination.
    done = run_cli("eval", f"{name}+{run_id}", "--baseline", "prompting", "--dataset", "qa", *flags, "--wait",
                   "--json", env_home=ws.home, timeout=300)
    assert done.returncode == 0 and json.loads(done.stdout)["label"] == f"{name}+{run_id} [prompting]", done.stderr

    for plan in ({}, {"baseline": "rag"}, {"adapter": run_id}):  # the rows they stand beside, in this process
        evaluate.execute(db, ws, evaluate.create(db, ws, evaluate.EvalConfig(model=name, dataset="qa", **FAST,
                                                                             **plan)))
    rows = {r["model"]: r for r in leaderboard.build(db)["rows"]}
    tuned, combo = rows[f"{name}+{run_id}"], rows[f"{name}+{run_id} [rag]"]
    assert set(rows) == {name, f"{name} [rag]", f"{name}+{run_id}", f"{name}+{run_id} [rag]",
                         f"{name}+{run_id} [prompting]"}
    for label in (f"{name}+{run_id} [rag]", f"{name}+{run_id} [prompting]"):
        r = rows[label]
        assert (r["base_model"], r["adapter"], r["run_id"]) == (name, run_id, run_id)
        assert (r["method"], r["tuning"], r["data"]) == ("sft", "lora", version.ref)  # the run's facts
        assert r["train_seconds"] == tuned["train_seconds"] and r["perplexity"] is not None
    assert combo["baseline"] == "rag" and rows[f"{name} [rag]"]["method"] == "rag"
    # The weights are the fine-tuned model's: the same forgetting; the retrieved examples change the prompt.
    assert combo["forgetting"] == pytest.approx(tuned["forgetting"], rel=1e-4, abs=1e-6)
    assert tuned["forgetting"] != pytest.approx(0, abs=1e-6)
    assert combo["loss"] != pytest.approx(tuned["loss"])
    assert rows[f"{name} [rag]"]["forgetting"] == 0
