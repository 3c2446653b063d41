"""RLHF methods on the tiny model, through the real run manager (each run its own process).

A synthetic preference set where chosen answers are mostly digits and rejected ones mostly words: the digit
share is a graded feature, so a reward model can learn it, DPO can move toward it, and random answers sampled
by the tiny policy differ along it, which gives GRPO and RLOO a signal to climb. One reward model is trained per
module and shared by the tests that need it."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from tunelab.errors import UserError
from tests.conftest import REPO, run_cli

TOPICS = ["France", "health", "sleep", "numbers", "the weather", "cats", "music", "tea", "running", "books"]
WORDS = ["the", "capital", "of", "France", "is", "Paris", "hello", "how", "are", "you", "today", "give", "three",
         "tips", "for", "staying", "healthy", "eat", "well", "sleep", "exercise"]


def _answer(rng: random.Random, digit_share: float) -> str:
    return " ".join(str(rng.randrange(10)) if rng.random() < digit_share else rng.choice(WORDS) for _ in range(8))


def digit_preferences(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": f"Tell me about {rng.choice(TOPICS)}."}],
             "chosen": [{"role": "assistant", "content": _answer(rng, rng.uniform(0.7, 1.0))}],
             "rejected": [{"role": "assistant", "content": _answer(rng, rng.uniform(0.0, 0.3))}]}
            for _ in range(n)]


def quarters(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter."""
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def base_config(method: str, ref: str, **overrides) -> dict:
    return {"method": method, "base_model": "tiny", "dataset": ref, "tuning": "full", "learning_rate": 1e-3,
            "per_device_train_batch_size": 8, "logging_steps": 1, "save_steps": 100, "eval_steps": 100,
            "warmup_ratio": 0.0, "lr_scheduler_type": "linear", "seed": 0, **overrides}


def finished(db, run_id: str, timeout_s: float = 300):
    from tunelab import runs
    run = runs.wait(db, run_id, poll_s=0.5, timeout_s=timeout_s)
    assert run.status == "completed", (run.error, runs.log_tail(run))
    return run


@pytest.fixture(scope="module")
def rlhf(tmp_path_factory, tiny_model_dir):
    """A workspace with the tiny model, the preference set split 75/25, and a trained full reward model."""
    from tunelab import datasets, db as dbmod, models, runs, workspace

    home = tmp_path_factory.mktemp("rlhf") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_HOME", str(home))
        ws = workspace.current()
        db = dbmod.connect(ws.db_path)
        models.add_local(db, tiny_model_dir, "tiny")
        path = home.parent / "prefs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in digit_preferences(96)))
        version = datasets.import_file(db, ws, path, "prefs").version
        assert version.kind == "preference"
        ref = datasets.split(db, ws, version.ref, val=0.25, seed=0).ref
        reward_run = runs.launch(db, ws, base_config("reward", ref, max_steps=30, eval_steps=15))
        finished(db, reward_run)
        yield db, ws, ref, reward_run
        db.close()


@pytest.mark.process
@pytest.mark.timeout(600)
def test_reward_model_ranks_held_out_pairs_and_scores_answers(rlhf):
    from tunelab import models, runs
    from tunelab.train import reward

    db, ws, ref, run_id = rlhf
    metrics = runs.read_metrics(ws, run_id)
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [15, 30]
    assert evals[-1]["eval_accuracy"] >= 0.9, evals  # pairwise accuracy on the 24 validation pairs
    train = [m for m in metrics if m["kind"] == "train"]
    assert len(train) == 30 and all("accuracy" in m and "margin" in m for m in train)
    first, last = quarters([m["margin"] for m in train])
    assert last > first + 1.0  # chosen pulls away from rejected
    assert runs.get(db, run_id).progress()["eval_accuracy"] == evals[-1]["eval_accuracy"]

    info = models.get_model(db, reward.model_name(run_id))
    assert (info.kind, info.source) == ("reward", f"run:{run_id}") and info.prepared

    digits = reward.score(db, ws, run_id, "Tell me about tea.", "4 1 7 7 0 2 9 3")
    words = reward.score(db, ws, run_id, "Tell me about tea.", "hello how are you today give three tips")
    assert digits > words + 1.0

    done = run_cli("score", "--reward", run_id, "--prompt", "Tell me about tea.", "--response", "4 1 7 7 0 2 9 3",
                   "--json", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["reward_run"] == run_id and abs(doc["reward"] - digits) < 1e-4
    bad = run_cli("score", "--reward", "r999", "--prompt", "p", "--response", "r", env_home=ws.home)
    assert bad.returncode == 2 and "no run 'r999'" in bad.stderr and bad.stdout == ""


@pytest.mark.process
@pytest.mark.timeout(600)
def test_dpo_raises_the_reward_margin_and_accuracy(rlhf):
    from tunelab import runs

    db, ws, ref, _ = rlhf
    run_id = runs.launch(db, ws, base_config("dpo", ref, learning_rate=2e-3, max_steps=12, eval_steps=12,
                                             lr_scheduler_type="constant", beta=0.1))
    run = finished(db, run_id)
    metrics = runs.read_metrics(ws, run_id)
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 13))
    assert all({"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(m)
               for m in train)
    first, last = quarters([m["rewards/margins"] for m in train])
    assert last > first + 0.1, [m["rewards/margins"] for m in train]
    first, last = quarters([m["rewards/accuracies"] for m in train])
    assert last > first and last >= 0.9
    (ev,) = [m for m in metrics if m["kind"] == "eval"]
    assert ev["eval_rewards/accuracies"] >= 0.9 and ev["eval_rewards/margins"] > 0
    assert (run.path / "final" / "model.safetensors").exists()


@pytest.mark.process
@pytest.mark.timeout(600)
def test_grpo_raises_the_reward_models_score_and_rloo_trains(rlhf):
    from tunelab import runs

    db, ws, ref, reward_run = rlhf
    online = dict(reward_model=reward_run, learning_rate=2e-2, max_steps=16, num_generations=4,
                  max_completion_length=16, lr_scheduler_type="constant", beta=0.04)
    # Both are queued at once; with one run at a time (the default) the second starts when the first ends.
    grpo = runs.launch(db, ws, base_config("grpo", ref, **online))
    rloo = runs.launch(db, ws, base_config("rloo", ref, normalize_advantages=True, **online))
    assert runs.get(db, rloo).status == "queued"
    for run_id in (grpo, rloo):
        finished(db, run_id, timeout_s=400)
        train = [m for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
        assert len(train) == 16
        assert all({"reward", "reward_std", "kl", "completions/mean_length"} <= set(m) for m in train)
        assert train[-1]["kl"] > 0  # the policy moved away from the reference
        if run_id == grpo:
            # The bar: GRPO raises the reward model's mean score. The reward model's scale differs
            # between fixture runs (gains of 0.2 to 0.75 seen), so ask for a rise well above the ~0.05
            # step-to-step noise. RLOO rose in most runs too (0.15 -> 0.89), but in 16 tiny steps not in
            # all of them (-0.89 -> -0.90 once), so for RLOO this test checks that it trains and logs.
            first, last = quarters([m["reward"] for m in train])
            assert last > first + 0.1, (run_id, [round(m["reward"], 2) for m in train])


@pytest.mark.process
@pytest.mark.timeout(300)
def test_online_rl_configs_are_checked_before_launch(rlhf):
    from tunelab import runs

    db, ws, ref, reward_run = rlhf
    cases = [
        ({}, "key 'reward_model': method 'grpo' needs the id of a completed reward-model run"),
        ({"reward_model": "r999"}, "key 'reward_model': no run 'r999'"),
        ({"reward_model": reward_run, "num_generations": 3},
         "key 'num_generations': 3 does not divide per_device_train_batch_size x gradient_accumulation_steps = 8"),
        ({"reward_model": reward_run, "num_generations": 1}, "key 'num_generations': must be at least 2"),
    ]
    before = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    for overrides, expected in cases:
        with pytest.raises(UserError) as err:
            runs.launch(db, ws, base_config("grpo", ref, max_steps=1, **overrides))
        assert expected in str(err.value), str(err.value)
    with pytest.raises(UserError, match="key 'dataset': .* is a 'preference' dataset; method 'sft'"):
        runs.launch(db, ws, base_config("sft", ref, max_steps=1))
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == before


@pytest.mark.process
@pytest.mark.timeout(300)
def test_cost_estimates_count_what_each_method_computes(rlhf):
    from tunelab import cost, models
    from tunelab.train import config

    db, ws, ref, reward_run = rlhf
    n = models.get_model(db, "tiny").params

    def estimate(method, **overrides):
        return cost.estimate(db, ws, config.resolve(db, ws, config.from_dict(base_config(method, ref, max_steps=10,
                                                                                           **overrides))))
    rm, dpo = estimate("reward"), estimate("dpo")
    assert rm.steps == dpo.steps == 10 and rm.tokens == dpo.tokens > 0  # both sides of 80 pairs
    assert rm.flops == pytest.approx(6 * n * rm.tokens) and dpo.flops == pytest.approx(8 * n * dpo.tokens)
    grpo = estimate("grpo", reward_model=reward_run, num_generations=4, max_completion_length=16, beta=0.04)
    assert grpo.flops == pytest.approx((6 + 2 + 2 + 2) * n * grpo.tokens)  # update, sample, score, reference
    assert grpo.tokens > 10 * 8 * 16  # 8 answers a step, each its prompt plus up to 16 tokens


@pytest.mark.process
@pytest.mark.timeout(600)
def test_a_killed_dpo_run_resumes_from_its_checkpoint(rlhf):
    from tunelab import jobs, runs

    db, ws, ref, _ = rlhf
    run_id = runs.launch(db, ws, base_config("dpo", ref, tuning="lora", learning_rate=5e-3, max_steps=10,
                                             save_steps=3, lora={"r": 8, "alpha": 16}))
    run = runs.get(db, run_id)
    deadline = time.time() + 240
    # Any checkpoint will do (older ones are pruned as newer ones land); polled often, since the ten
    # steps of the tiny model can pass in well under a second once it has loaded.
    while not list(run.path.glob("checkpoint-*/trainer_state.json")):
        assert time.time() < deadline and runs.get(db, run_id).status == "running", runs.log_tail(run)
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # no chance to save anything more
    while runs.get(db, run_id).status == "running":
        time.sleep(0.2)
        jobs.reconcile(db)  # reads change nothing: reconciling notices the killed process
    killed = runs.get(db, run_id)
    assert killed.status == "interrupted" and "SIGKILL" in killed.error
    steps_before = [m["step"] for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    assert len(steps_before) >= 3

    runs.resume(db, run_id)
    done = finished(db, run_id)
    assert "resuming from checkpoint-" in runs.log_tail(done, 400)
    train = [m for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 11))  # steps after the checkpoint were trained once more
    assert all("rewards/margins" in m for m in train)
    assert (done.path / "final" / "adapter_config.json").exists()


@pytest.mark.process
@pytest.mark.timeout(900)
@pytest.mark.slow
def test_reward_model_on_the_bundled_model_and_real_preferences(bundled_model, tmp_path):
    """A few LoRA steps of a reward model on SmolLM2-135M with the sharegpt preference fixture."""
    from tunelab import datasets, runs
    from tests.conftest import TEST_DATA

    db, ws, name = bundled_model
    version = datasets.import_file(db, ws, TEST_DATA / "dpo_demo.json", "dpo-demo").version
    assert version.kind == "preference" and version.rows == 120
    ref = datasets.split(db, ws, version.ref, val=0.1, seed=0).ref
    # Pairs longer than max_length are left out (median 85 tokens here; 91 of 120 fit in 256).
    run_id = runs.launch(db, ws, {"method": "reward", "base_model": name, "dataset": ref, "tuning": "lora",
                                  "learning_rate": 1e-4, "max_steps": 2, "per_device_train_batch_size": 1,
                                  "max_length": 256, "logging_steps": 1, "eval_steps": 100, "save_steps": 100,
                                  "warmup_ratio": 0.0, "seed": 0})
    run = finished(db, run_id, timeout_s=240)
    assert "training pairs fit in max_length 256" in runs.log_tail(run, 200)
    metrics = runs.read_metrics(ws, run_id)
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2]
    (ev,) = [m for m in metrics if m["kind"] == "eval"]  # the end-of-run evaluation
    assert 0.0 <= ev["eval_accuracy"] <= 1.0
    assert (run.path / "final" / "adapter_config.json").exists()
    from tunelab.train import reward
    assert isinstance(reward.score(db, ws, run_id, "Hi!", "Hello! How can I help you today?"), float)


@pytest.mark.process
@pytest.mark.timeout(300)
def test_rlhf_throughput_bench_compares_every_method_on_the_tiny_model(tmp_path):
    """bench/rlhf_throughput.py (issue 17, item 1) end to end in seconds: plain TRL and tunelab's setup for the
    reward model, DPO and GRPO each print their figures, and each method its `tunelab/plain` ratio. The
    figures of a random 2-layer model mean nothing; this checks that the bench still runs against the
    installed TRL (its plain setups and the private switch it resets)."""
    done = subprocess.run([sys.executable, "bench/rlhf_throughput.py", "--model", "tiny", "--max-steps", "3",
                           "--batch-size", "2", "--max-completion-length", "8", "--num-generations", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "TMPDIR": str(tmp_path)})  # the bench's workspace is a mkdtemp
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(r["method"], r["setup"]) for r in results] == [
        (m, s) for m in ("reward", "dpo", "grpo") for s in ("plain", "tunelab")]
    assert all(r["tokens_per_s"] > 0 and r["steps"] == 3 for r in results)
    assert all(r["generated"] > 0 for r in results if r["method"] == "grpo")
    for method in ("reward", "dpo", "grpo"):
        assert re.search(rf"^tunelab/plain {method}: \d+\.\d\dx ", done.stdout, re.M), done.stdout[-2000:]
