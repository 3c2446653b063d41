"""One ModelSpec: `NAME` or `NAME+RUN` parsed and written in one place; what can be chosen to chat with
(never a reward model) and to score with; and a full-tuning run's model, usable wherever a model is:
`tunelab generate`, `tunelab eval`, campaigns and the leaderboard."""
import json
import re

import pytest

from tunelab import datasets, feedback, leaderboard, models, runs
from tunelab.errors import UserError
from tunelab.models import ModelSpec
from tests.conftest import REPO, run_cli

SAMPLES = REPO / "data" / "samples"


@pytest.mark.parametrize("text, spec", [
    ("tiny", ModelSpec("tiny")),
    ("tiny+r2", ModelSpec("tiny", "r2")),
    ("  smollm2-135m-instruct+r10 ", ModelSpec("smollm2-135m-instruct", "r10")),
])
def test_parse_and_format_round_trip(text, spec):
    assert ModelSpec.parse(text) == spec
    assert ModelSpec.parse(spec.format()) == spec and str(spec) == spec.format() == text.strip()


@pytest.mark.parametrize("text, message", [
    ("", "the model name is empty"),
    ("+r2", "the model name is empty"),
    ("tiny+", "the run id after '+' is empty"),
    ("tiny+r1+r2", "one '+' at most"),
    ("my model+r1", "model name 'my model'"),
    ("tiny+../../etc", "run name '../../etc'"),
])
def test_parse_names_the_bad_part(text, message):
    with pytest.raises(UserError, match=re.escape(f"model spec {text.strip()!r}: ") + ".*" + re.escape(message)):
        ModelSpec.parse(text)


@pytest.fixture
def tiny_data(tiny_model, tmp_path):
    """The tiny model with the sample SFT set (split) and a small preference set: yields (db, ws, sft_ref,
    pref_ref); no run process outlives the test."""
    db, ws, _ = tiny_model
    sft = datasets.import_file(db, ws, SAMPLES / "acme_router_sft.jsonl", "acme").version
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": "No."})
                               for i in range(8)))
    pref = datasets.import_file(db, ws, pairs, "pairs").version
    yield db, ws, datasets.split(db, ws, sft.ref, val=0.1, seed=0).ref, pref.ref
    for run in runs.list_runs(db):
        if run.status in ("queued", "running"):
            runs.stop(db, run.id, grace_s=5)


def train(db, ws, **config) -> str:
    """A few steps on the tiny model, waited for; returns the completed run's id."""
    run_id = runs.launch(db, ws, {"base_model": "tiny", "learning_rate": 1e-3, "max_steps": 2,
                                  "per_device_train_batch_size": 2, "max_length": 96, "logging_steps": 1,
                                  "save_steps": 100, "eval_steps": 100, "warmup_ratio": 0.0, **config})
    run = runs.wait(db, run_id, poll_s=0.5, timeout_s=240)
    assert run.status == "completed", (run.error, runs.log_tail(run))
    return run_id


@pytest.mark.process
@pytest.mark.timeout(400)
def test_a_reward_run_is_scored_with_never_chatted_with(tiny_data):
    """The Playground listed a LoRA reward run as a chat adapter; its choices come from `chat_choices` now."""
    db, ws, sft_ref, pref_ref = tiny_data
    adapter = train(db, ws, method="sft", dataset=sft_ref, tuning="lora")
    reward = train(db, ws, method="reward", dataset=pref_ref, tuning="lora")

    assert models.chat_choices(db) == [ModelSpec("smollm2-135m-instruct"), ModelSpec("tiny"),
                                       ModelSpec("tiny", adapter)]
    assert models.reward_runs(db) == [reward]
    assert [r["id"] for r in models.tuned_runs(db, "tiny")] == [adapter]
    with pytest.raises(UserError, match="reward model"):
        ModelSpec("tiny", reward).check(db, ws)
    with pytest.raises(UserError, match="reward model"):
        feedback.create_campaign(db, ws, "c", ["tiny", f"tiny+{reward}"], prompts=["Hi"])
    done = run_cli("generate", "--model", "tiny", "--adapter", reward, "--prompt", "Hi", env_home=ws.home, timeout=120)
    assert done.returncode == 2 and "reward model" in done.stderr, done.stderr


@pytest.mark.process
@pytest.mark.timeout(600)
def test_a_full_sft_run_is_a_model_like_any_other(tiny_data, tiny_model_dir):
    db, ws, sft_ref, _ = tiny_data
    run_id = train(db, ws, method="sft", dataset=sft_ref, tuning="full")
    spec = ModelSpec("tiny", run_id)
    assert spec in models.chat_choices(db)
    assert spec.check(db, ws).folders(db, ws) == (ws.runs_dir / run_id / "final", None)  # its whole model

    # The command a user runs; `--model tiny+RUN` is the same spec.
    done = run_cli("generate", "--model", "tiny", "--adapter", run_id, "--prompt", "Hello", "--max-new-tokens", "4",
                   "--json", env_home=ws.home, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["spec"] == str(spec) and answer["adapter"] == run_id and isinstance(answer["answer"], str)
    same = run_cli("generate", "--model", str(spec), "--prompt", "Hello", "--max-new-tokens", "4", "--json",
                   env_home=ws.home, timeout=120)
    assert same.returncode == 0 and json.loads(same.stdout)["answer"] == answer["answer"], same.stderr

    # A campaign between the base and the run's model.
    datasets.import_file(db, ws, SAMPLES / "prompts.jsonl", "questions")
    done = run_cli("feedback", "create", "duel", "--models", f"tiny,{spec}", "--prompts", "questions",
                   "--max-new-tokens", "4", "--wait", env_home=ws.home, timeout=240)
    assert done.returncode == 0, done.stderr
    answered = db.execute("SELECT model, count(*) FROM responses GROUP BY model ORDER BY model").fetchall()
    assert answered == [("tiny", 20), (str(spec), 20)]

    # An eval, its forgetting measured against the base it was trained from, and its leaderboard row.
    done = run_cli("eval", str(spec), "--dataset", sft_ref, "--limit", "2", "--max-new-tokens", "4", "--wait", "--json",
                   env_home=ws.home, timeout=240)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["label"] == str(spec)
    assert doc["metrics"]["base_reference_perplexity"] != pytest.approx(doc["metrics"]["reference_perplexity"])
    row = {r["model"]: r for r in leaderboard.build(db)["rows"]}[str(spec)]
    assert (row["base_model"], row["adapter"], row["run_id"]) == ("tiny", run_id, run_id)
    assert (row["method"], row["tuning"]) == ("sft", "full") and row["train_seconds"] > 0

    # What check refuses, by name.
    with pytest.raises(UserError, match="no run 'r404'"):
        ModelSpec("tiny", "r404").check(db, ws)
    models.add_local(db, tiny_model_dir, "tiny-b")
    with pytest.raises(UserError, match=f"run {run_id} was trained on 'tiny', not 'tiny-b'"):
        ModelSpec("tiny-b", run_id).check(db, ws)


@pytest.mark.process
@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_the_playground_offers_no_reward_run(app, tiny_data, page):
    """In Chromium: the Playground's model choices are the models, without the reward LoRA run it used to list."""
    from tunelab import auth
    from tests.conftest import sign_in, wait_for_app

    db, ws, _, pref_ref = tiny_data
    assert ws.home == app.home
    reward = train(db, ws, method="reward", dataset=pref_ref, tuning="lora")
    auth.add_user(db, "root", "admin", "admin password")
    sign_in(page, app, "root", "admin password")
    page.goto(f"{app.url}/playground")
    wait_for_app(page)
    page.get_by_test_id("stSelectbox").filter(has_text="model").first.click()
    options = page.get_by_role("option").all_inner_texts()
    assert options == ["smollm2-135m-instruct", "tiny"] and f"tiny+{reward}" not in options

    # The other pages that offer models or reward runs draw from the same functions.
    page.goto(f"{app.url}/evaluate")
    wait_for_app(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Model").first.click()
    assert page.get_by_role("option").all_inner_texts() == options
    page.keyboard.press("Escape")
    page.get_by_test_id("stSelectbox").filter(has_text="Reward model run").click()
    assert page.get_by_role("option").all_inner_texts() == ["none", reward]
    for name in ("feedback", "models", "launch"):
        page.goto(f"{app.url}/{name}")
        wait_for_app(page)
        page.get_by_role("heading", name=name.capitalize()).first.wait_for()
        assert page.get_by_test_id("stException").count() == 0, name
