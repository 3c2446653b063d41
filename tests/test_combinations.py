"""Fine-tuned + RAG and fine-tuned + prompting are leaderboard rows of their own, beside base, prompting, RAG
and fine-tuned: `tunelab eval MODEL --adapter RUN --baseline rag` through the real CLI, with the training
facts of the run and the fine-tuned model's forgetting."""
import json
from pathlib import Path

import pytest

from tunelab import evaluate, leaderboard, runs
from tests.conftest import make_dataset, run_cli, stop_leftover_runs

FAST = {"k": 2, "limit": 2, "max_new_tokens": 4}


def _trained(db, ws, tmp_path) -> str:
    """The QA set (dataset 'qa') and a completed 2-step LoRA SFT run of the tiny model on it; returns its id."""
    version = make_dataset(db, ws, tmp_path)
    run_id = runs.launch(db, ws, {"base_model": "tiny", "dataset": version.ref, "method": "sft", "tuning": "lora",
                                  "learning_rate": 1e-2, "max_steps": 2, "per_device_train_batch_size": 2,
                                  "max_length": 96, "logging_steps": 1, "save_steps": 100, "eval_steps": 100,
                                  "warmup_ratio": 0.0})
    try:
        run = runs.wait(db, run_id, poll_s=0.5, timeout_s=240)
    finally:
        stop_leftover_runs(db)
    assert run.status == "completed", (run.error, runs.log_tail(run))
    return run_id


@pytest.mark.process
@pytest.mark.timeout(600)
def test_combinations_are_rows_with_their_training_facts(tiny_model, tmp_path):
    db, ws, name = tiny_model
    run_id = _trained(db, ws, tmp_path)
    version = runs.get(db, run_id).dataset

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
        assert (r["method"], r["tuning"], r["data"]) == ("sft", "lora", version)  # the run's facts
        assert r["train_seconds"] == tuned["train_seconds"] and r["perplexity"] is not None
    assert combo["baseline"] == "rag" and rows[f"{name} [rag]"]["method"] == "rag"
    # The weights are the fine-tuned model's: the same forgetting; the retrieved examples change the prompt.
    assert combo["forgetting"] == pytest.approx(tuned["forgetting"], rel=1e-4, abs=1e-6)
    assert tuned["forgetting"] != pytest.approx(0, abs=1e-6)
    assert combo["loss"] != pytest.approx(tuned["loss"])
    assert rows[f"{name} [rag]"]["forgetting"] == 0


@pytest.mark.e2e
@pytest.mark.process
@pytest.mark.timeout(400)
def test_the_evaluate_page_launches_a_combination_with_checks(app, page, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect

    from tunelab import auth, models
    from tunelab.workspace import Workspace
    from tests.conftest import sign_in, upload, wait_for_app
    db, ws = app.db(), Workspace(app.home).ensure()
    auth.add_user(db, "root", "admin", "correct horse")
    auth.add_user(db, "eve", "engineer", "correct horse")
    models.add_local(db, tiny_model_dir, "tiny")
    run_id = _trained(db, ws, tmp_path)
    own = tmp_path / "mine.yaml"
    own.write_text("- {kind: max_length, words: 1000, name: any_length}\n")

    sign_in(page, app, "eve", "correct horse")
    page.goto(f"{app.url}/evaluate")
    page.get_by_role("heading", name="Evaluate").wait_for()
    wait_for_app(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Model (MODEL+RUN").click()
    page.get_by_role("option", name=f"tiny+{run_id}", exact=True).click()
    page.get_by_text("rag", exact=True).click()
    for label, value in (("Rows (limit)", "2"), ("Max new tokens", "4")):
        page.get_by_role("spinbutton", name=label).fill(value)
    upload(page, page.locator('[data-testid="stFileUploaderDropzoneInput"]').last, str(own))
    page.get_by_role("button", name="Launch eval").click()
    page.get_by_text(f"started: tiny+{run_id} [rag] on qa").wait_for()
    (eval_id,) = [e["id"] for e in evaluate.list_evals(db)]
    row = evaluate.get(db, eval_id)
    stored = Path(row["config"]["checks"])  # the upload, kept in the workspace for the job
    assert (row["adapter"], row["baseline"], stored.name) == (run_id, "rag", "mine.yaml")
    assert stored.is_relative_to(Path(app.home) / "checks") and stored.read_text() == own.read_text()
    assert (row["config"]["limit"], row["config"]["max_new_tokens"]) == (2, 4)
    assert evaluate.wait(db, eval_id, timeout_s=240)["metrics"]["checks"] == {"any_length": 100}
    page.reload()
    wait_for_app(page)
    expect(page.get_by_text("Behaviour checks (mine.yaml), percent of answers passing: any_length 100%")
           ).to_be_visible()
