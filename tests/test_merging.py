"""Adapter merging (`tunelab models merge-adapters`): real LoRA runs on the tiny model merged with each of
PEFT's methods; the merged adapter loads with peft, has the weights the method defines, is evaluated
(forgetting included) and ranked like any other adapter; bad inputs are refused naming the field."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tunelab import evaluate, leaderboard, merging, models, runs
from tunelab.errors import UserError
from tunelab.models import ModelSpec
from tests.conftest import make_dataset, run_cli, stop_leftover_runs

RANK, ALPHA = 4, 8  # scale alpha/r = 2, so the linear formula's √(w·s) is not √w


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_model_dir):
    """One workspace for the module, with LoRA runs a (r=4), b (r=4, another seed and rate), c (r=2), a full
    run and a LoRA run on another base: yields (db, ws, ref, ids)."""
    from tunelab import db as dbmod, workspace
    tmp = tmp_path_factory.mktemp("merging")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_HOME", str(tmp / "home"))
        ws = workspace.current()
        db = dbmod.connect(ws.db_path)
        models.add_local(db, tiny_model_dir, "tiny")
        models.add_local(db, tiny_model_dir, "tiny-b")
        ref = make_dataset(db, ws, tmp).ref
        common = {"method": "sft", "base_model": "tiny", "dataset": ref, "max_steps": 2, "learning_rate": 5e-2,
                  "per_device_train_batch_size": 2, "max_length": 64, "save_steps": 100, "eval_steps": 100,
                  "warmup_ratio": 0.0, "lora": {"r": RANK, "alpha": ALPHA}}
        configs = {"a": common, "b": {**common, "seed": 1, "learning_rate": 3e-2},
                   "c": {**common, "lora": {"r": 2, "alpha": 4}}, "full": {**common, "tuning": "full"},
                   "other_base": {**common, "base_model": "tiny-b"}}
        try:
            ids = {k: runs.launch(db, ws, c, estimate=False) for k, c in configs.items()}
            for run_id in ids.values():
                run = runs.wait(db, run_id, poll_s=0.5, timeout_s=300)
                assert run.status == "completed", (run.error, runs.log_tail(run))
            yield db, ws, ref, ids
        finally:
            stop_leftover_runs(db)
            db.close()


def tensors(ws, run_id: str) -> dict[str, torch.Tensor]:
    return load_file(ws.runs_dir / run_id / "final" / "adapter_model.safetensors")


@pytest.mark.process
@pytest.mark.timeout(600)
def test_linear_merge_is_the_weighted_sum_peft_defines_and_evaluates_like_any_adapter(lab):
    db, ws, ref, ids = lab
    merged = merging.merge_adapters(db, ws, [ids["a"], ids["b"]], "linear", [0.7, 0.3], "blend")

    run = runs.get(db, merged)
    assert (run.status, run.method, run.tuning, run.base_model) == ("completed", "merge", "lora", "tiny")
    assert run.config["name"] == "blend" and run.config["runs"] == [ids["a"], ids["b"]]
    assert ModelSpec("tiny", merged) in models.chat_choices(db)
    # PEFT's linear merge: A = Σ √(wᵢ·sᵢ)·Aᵢ, B = Σ √(wᵢ·sᵢ)·Bᵢ with sᵢ = alpha/r, and the new adapter's scale is 1.
    a, b, out = tensors(ws, ids["a"]), tensors(ws, ids["b"]), tensors(ws, merged)
    assert set(out) == set(a) and len(out) > 0
    scale = ALPHA / RANK
    for key in out:
        expected = (0.7 * scale) ** 0.5 * a[key] + (0.3 * scale) ** 0.5 * b[key]
        torch.testing.assert_close(out[key], expected)
    assert any(a[k].abs().sum() > 0 and not torch.equal(a[k], b[k]) for k in a if "lora_B" in k)  # not trivial
    config = json.loads((ws.runs_dir / merged / "final" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK, RANK)

    # It loads with peft on the base and answers.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base_dir, adapter = ModelSpec("tiny", merged).check(db, ws).folders(db, ws)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter))
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()

    # Evaluated like any adapter: forgetting measured against the base, a leaderboard row with its method.
    eval_id = evaluate.create(db, ws, evaluate.EvalConfig(model=f"tiny+{merged}", dataset=ref, limit=2,
                                                          max_new_tokens=4))
    row = evaluate.execute(db, ws, eval_id)
    assert row["status"] == "completed", row["error"]
    assert row["metrics"]["forgetting"] is not None and row["metrics"]["base_reference_perplexity"] > 0
    board = {r["model"]: r for r in leaderboard.build(db)["rows"]}
    assert board[f"tiny+{merged}"]["method"] == "merge" and board[f"tiny+{merged}"]["run_id"] == merged


@pytest.mark.process
@pytest.mark.timeout(600)
def test_svd_merges_different_ranks_into_the_best_low_rank_sum(lab):
    db, ws, _, ids = lab
    merged = merging.merge_adapters(db, ws, [ids["a"], ids["c"]], "svd", [1.0, 0.5], "svd-blend")
    a, c, out = tensors(ws, ids["a"]), tensors(ws, ids["c"]), tensors(ws, merged)
    for key_a in (k for k in out if "lora_A" in k):
        key_b = key_a.replace("lora_A", "lora_B")
        # Σ wᵢ·sᵢ·Bᵢ·Aᵢ (both sources have alpha/r = 2), cut to rank 4: the residual is the dropped singular values.
        target = 1.0 * 2 * a[key_b] @ a[key_a] + 0.5 * 2 * c[key_b] @ c[key_a]
        got = out[key_b] @ out[key_a]
        assert out[key_a].shape[0] == RANK
        dropped = torch.linalg.svdvals(target)[RANK:]
        torch.testing.assert_close(torch.linalg.norm(target - got), torch.linalg.norm(dropped), atol=1e-5, rtol=1e-3)


@pytest.mark.process
@pytest.mark.timeout(600)
def test_ties_and_dare_ties_prune_and_repeat(lab):
    db, ws, _, ids = lab
    linear = merging.merge_adapters(db, ws, [ids["a"], ids["b"]], "linear", [0.5, 0.5], "lin")
    ties = merging.merge_adapters(db, ws, [ids["a"], ids["b"]], "ties", [0.5, 0.5], "ties", density=0.3)
    dare = [merging.merge_adapters(db, ws, [ids["a"], ids["b"]], "dare_ties", [0.5, 0.5], f"dare{i}", density=0.3)
            for i in (1, 2)]
    lin = tensors(ws, linear)
    for run_id in (ties, *dare):
        assert runs.get(db, run_id).config["combination_type"] in ("ties", "dare_ties")
        out = tensors(ws, run_id)
        assert set(out) == set(lin) and any(not torch.allclose(out[k], lin[k]) for k in out)
    first, second = tensors(ws, dare[0]), tensors(ws, dare[1])
    assert all(torch.equal(first[k], second[k]) for k in first)  # DARE's random drop is seeded: repeatable


@pytest.mark.process
@pytest.mark.timeout(600)
@pytest.mark.parametrize("pick, method, weights, density, name, message", [
    (["a"], "linear", [1.0], None, "x", "runs: a merge needs at least two"),
    (["a", "a"], "linear", [0.5, 0.5], None, "x", "names a run twice"),
    (["a", "b"], "cat", [0.5, 0.5], None, "x", "--method 'cat': choose one of linear, ties, dare_ties, svd"),
    (["a", "b"], "linear", [1.0], None, "x", "--weights: 1 weights for 2 runs"),
    (["a", "b"], "ties", [0.5, 0.5], None, "x", "--density None: ties keeps"),
    (["a", "b"], "dare_ties", [0.5, 0.5], 1.5, "x", "--density 1.5"),
    (["a", "b"], "linear", [0.5, 0.5], 0.5, "x", "--density: only ties and dare_ties prune"),
    (["a", "b"], "linear", [0.5, 0.5], None, "tiny", "--name 'tiny': a registered model has that name"),
    (["a", "b"], "linear", [0.5, 0.5], None, "../x", "merged adapter name '../x'"),
    (["a", "full"], "linear", [0.5, 0.5], None, "x", "is a full run; its result is a whole model, not a LoRA"),
    (["a", "other_base"], "svd", [0.5, 0.5], None, "x", "merged adapters must share one base"),
    (["a", "c"], "ties", [0.5, 0.5], 0.5, "x", "r=4, .* r=2. Use --method svd"),
])
def test_bad_inputs_name_the_field_and_write_nothing(lab, pick, method, weights, density, name, message):
    db, ws, _, ids = lab
    before = len(runs.list_runs(db))
    with pytest.raises(UserError, match=message if ".*" in message else re.escape(message)):
        merging.merge_adapters(db, ws, [ids[p] for p in pick], method, weights, name, density=density)
    assert len(runs.list_runs(db)) == before


@pytest.mark.process
@pytest.mark.timeout(600)
def test_cli_merges_and_refuses_a_taken_name(lab):
    db, ws, _, ids = lab
    done = run_cli("models", "merge-adapters", ids["a"], ids["b"], "--method", "linear", "--weights", "0.5,0.5",
                   "--name", "cli-blend", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    merged = done.stdout.strip()  # the run id, as `tunelab train` prints it
    assert runs.get(db, merged).config["name"] == "cli-blend" and f"use it as tiny+{merged}" in done.stderr
    again = run_cli("models", "merge-adapters", ids["a"], ids["b"], "--method", "linear", "--weights", "0.5,0.5",
                    "--name", "cli-blend", env_home=ws.home)
    assert again.returncode == 2 and "--name 'cli-blend': another merged adapter has that name" in again.stderr
    bad = run_cli("models", "merge-adapters", ids["a"], ids["b"], "--method", "linear", "--weights", "half,half",
                  "--name", "y", env_home=ws.home)
    assert bad.returncode == 2 and "--weights 'half,half'" in bad.stderr


@pytest.mark.process
@pytest.mark.timeout(600)
def test_models_page_merges_and_shows_the_serve_command(lab, page):
    """The Models page's form: pick two adapters, a method and weights; the merge is a run, named as asked."""
    from playwright.sync_api import expect

    from tunelab import auth
    from tests.conftest import App, sign_in, wait_for_app
    db, ws, ref, ids = lab
    auth.add_user(db, "root", "admin", "a long enough password")
    app = App(ws.home)
    try:
        sign_in(page, app, "root", "a long enough password")
        page.goto(f"{app.url}/models")
        page.get_by_role("heading", name="Merge adapters").wait_for()
        wait_for_app(page)
        form = page.get_by_test_id("stForm").filter(has_text="Merge")
        for run_id in (ids["a"], ids["b"]):
            form.get_by_test_id("stMultiSelect").click()
            page.keyboard.type(f"tiny+{run_id} (sft")  # the list is long (every merge so far): filter it
            page.get_by_role("option", name=f"tiny+{run_id} (sft, {ref})", exact=True).click()
        form.get_by_label("Weights, one per adapter in order").fill("0.2,0.8")
        form.get_by_label("Name of the merged adapter").fill("from-the-page")
        form.get_by_role("button", name="Merge").click()
        expect(page.get_by_text("Merged into run")).to_contain_text("use it as tiny+", timeout=120_000)
        merged = [r for r in runs.list_runs(db) if r.method == "merge" and r.config["name"] == "from-the-page"]
        assert len(merged) == 1 and merged[0].config["weights"] == [0.2, 0.8]
        assert merged[0].config["runs"] == [ids["a"], ids["b"]]
        expect(page.get_by_test_id("stCode").filter(has_text="tunelab serve").first).to_contain_text(
            "tunelab serve ")
    finally:
        app.stop()
