"""SFT runs on the tiny model: LoRA and full complete and change the weights, metrics are written, the
adapter loads with PEFT, a merged model matches base+adapter, and bad configs are refused before launch."""
import json
import time

import pytest
import yaml

from tunelab.errors import UserError
from tests.conftest import REPO, run_cli, stop_leftover_runs

SAMPLE = REPO / "data" / "samples" / "acme_router_sft.jsonl"


@pytest.fixture
def sft_data(tiny_model):
    """The sample SFT data imported and split 90/10: yields (db, ws, 'acme@2')."""
    from tunelab import datasets
    db, ws, _ = tiny_model
    version = datasets.import_file(db, ws, SAMPLE, "acme").version
    yield db, ws, datasets.split(db, ws, version.ref, val=0.1, seed=0).ref
    stop_leftover_runs(db)


def tiny_config(ref: str, **overrides) -> dict:
    return {"method": "sft", "base_model": "tiny", "dataset": ref, "tuning": "lora", "learning_rate": 5e-3,
            "max_steps": 4, "per_device_train_batch_size": 2, "max_length": 96, "logging_steps": 1,
            "save_steps": 2, "eval_steps": 2, "warmup_ratio": 0.0, "seed": 0, **overrides}


def _logits(model, tokenizer, text="Hello, how are you today?"):
    import torch
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.mark.process
@pytest.mark.timeout(300)
def test_lora_sft_completes_and_its_adapter_changes_the_model(sft_data):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab import cost, models, runs
    from tunelab.train import config

    db, ws, ref = sft_data
    cfg = config.resolve(db, ws, config.from_dict(tiny_config(ref)))
    est = cost.estimate(db, ws, cfg)
    assert est.steps == 4 and est.tokens > 0 and est.seconds > 0 and "benchmark" in est.basis

    run_id = runs.launch(db, ws, tiny_config(ref))
    run = runs.wait(db, run_id, poll_s=0.5, timeout_s=240)
    assert run.status == "completed", (run.error, runs.log_tail(run))
    assert run.est_seconds and run.run_seconds > 0 and run.finished_at >= run.started_at

    metrics = runs.read_metrics(ws, run_id)
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    assert all(m["loss"] > 0 and m["learning_rate"] is not None and m["grad_norm"] is not None for m in train)
    assert [m["tokens"] for m in train] == sorted(m["tokens"] for m in train) and train[-1]["tokens"] > 0
    assert [m["step"] for m in metrics if m["kind"] == "eval"] == [2, 4]
    status = run.progress()
    assert status["state"] == "completed" and status["step"] == 4 and "assistant tokens" in status["loss_on"]
    assert status["attention"] == "packed_sdpa"  # packing is on by default, and this is a CPU

    # The saved config reproduces the run: same keys, dataset pinned.
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["dataset"] == ref and saved["lora"]["target_modules"] == "all-linear"
    assert config.load_file(run.path / "config.yaml") == cfg

    # PEFT format; LoRA's B matrices start at zero, so any nonzero B means the adapter trained.
    _, adapter = models.ModelSpec("tiny", run_id).folders(db, ws)
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    base_dir = models.model_path(db, ws, "tiny")
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(base_dir).chat_template  # markers not saved
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    before = _logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, adapter)
    after = _logits(tuned, tokenizer)
    assert not torch.allclose(before, after, atol=1e-4)

    # Merge: a standalone registered model that computes what base+adapter computes.
    info = runs.merge(db, ws, run_id, "tiny-acme")
    assert (info.kind, info.source) == ("merged", f"run:{run_id}")
    merged = AutoModelForCausalLM.from_pretrained(models.model_path(db, ws, "tiny-acme"))
    assert torch.allclose(_logits(merged, tokenizer), after, atol=1e-4)
    assert [a["id"] for a in models.tuned_runs(db, "tiny")] == [run_id]

    # With a past run on this machine, the next estimate is based on it.
    assert "past completed run" in cost.estimate(db, ws, cfg).basis


@pytest.mark.process
@pytest.mark.timeout(300)
def test_full_sft_from_the_cli_changes_every_layer(sft_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from tunelab import models

    db, ws, ref = sft_data
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(tiny_config(ref, tuning="full", max_steps=3, learning_rate=1e-3, eval_steps=50)))
    done = run_cli("train", str(path), "--wait", env_home=ws.home, timeout=300)
    run_id = done.stdout.strip()
    assert done.returncode == 0, done.stderr
    assert run_id.startswith("r") and f"run {run_id} completed" in done.stderr

    shown = json.loads(run_cli("runs", "show", run_id, "--json", env_home=ws.home).stdout)
    assert shown["status"] == "completed" and shown["tuning"] == "full" and shown["actual"]["seconds"] > 0
    listed = json.loads(run_cli("runs", "list", "--json", env_home=ws.home).stdout)
    assert [r["id"] for r in listed] == [run_id]

    final = ws.runs_dir / run_id / "final"
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()
    before = load_file(models.model_path(db, ws, "tiny") / "model.safetensors")
    after = load_file(final / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("layers.0." in k for k in changed) and any("layers.1." in k for k in changed)
    # A line per step; with eval_steps past the end, the trainer evaluates once, at the last step.
    metrics = [json.loads(x) for x in (ws.runs_dir / run_id / "metrics.jsonl").read_text().splitlines()]
    assert [(m["kind"], m["step"]) for m in metrics] == [("train", 1), ("train", 2), ("train", 3), ("eval", 3)]


@pytest.mark.process
@pytest.mark.timeout(120)
def test_bad_configs_name_the_key_and_exit_2(sft_data, tmp_path):
    db, ws, ref = sft_data
    cases = [
        ({"lerning_rate": 1e-4}, "line 1: key 'lerning_rate': unknown key for method 'sft' (did you mean "
                                 "'learning_rate'?)"),
        ({"max_steps": "ten"}, "key 'max_steps': expected int, got str 'ten'"),
        ({"lora": {"r": 8, "alpah": 16}}, "key 'lora.alpah': unknown key (did you mean 'lora.alpha'?)"),
        ({"tuning": "half"}, "key 'tuning': 'half' is not one of: full, lora, qlora"),
        ({"packing": "yes"}, "key 'packing': expected bool"),
        ({"dataset": "nope@1"}, "key 'dataset':"),
        ({"base_model": "no-such-model"}, "key 'base_model': model 'no-such-model' is not registered"),
        ({"method": "ppo"}, "key 'method': unknown method 'ppo'"),
        ({"init_from": "r99"}, "key 'init_from': no run 'r99'"),
    ]
    for overrides, expected in cases:
        path = tmp_path / "bad.yaml"
        cfg = {k: v for k, v in {**tiny_config(ref), **overrides}.items()}
        if "lerning_rate" in overrides:  # first line, to check the line number
            cfg = {"lerning_rate": cfg.pop("lerning_rate"), **cfg}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with pytest.raises(UserError) as err:
            from tunelab import runs
            from tunelab.train import config
            runs.launch(db, ws, config.load_file(path))
        assert expected in str(err.value), str(err.value)
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0  # nothing was queued
    assert not list(ws.runs_dir.iterdir())

    done = run_cli("train", str(path), env_home=ws.home)  # the last case, through the real command
    assert done.returncode == 2 and "init_from" in done.stderr and done.stdout == ""


@pytest.mark.process
@pytest.mark.timeout(120)
def test_qlora_is_refused_on_cpu_before_launch(sft_data, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    db, ws, ref = sft_data
    path = tmp_path / "qlora.yaml"
    path.write_text(yaml.safe_dump(tiny_config(ref, tuning="qlora")))
    start = time.time()
    done = run_cli("train", str(path), "--wait", env_home=ws.home)
    assert done.returncode == 2 and done.stdout == ""
    assert "key 'tuning': qlora needs a CUDA GPU" in done.stderr and "use tuning: lora" in done.stderr
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    assert time.time() - start < 60


def test_config_yaml_round_trip_and_float_strings():
    from tunelab.train import config
    cfg = config.parse_yaml("base_model: m\ndataset: d@1\nlearning_rate: 2e-4\nlora:\n  r: 8\n  target_modules: [q_proj, v_proj]\n")
    assert cfg.learning_rate == 2e-4  # YAML 1.1 reads 2e-4 as a string; the float field takes it
    assert cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.packing is True
    assert config.parse_yaml(config.to_yaml(cfg)) == cfg
    with pytest.raises(UserError, match="key 'base_model' is required"):
        config.parse_yaml("dataset: d@1\n")
    assert config.diff({"a": config.to_dict(cfg), "b": config.to_dict(config.parse_yaml(
        "base_model: m\ndataset: d@1\nlearning_rate: 1e-3\nlora: {r: 8, target_modules: [q_proj, v_proj]}\n"))}) == {
        "learning_rate": {"a": 2e-4, "b": 1e-3}}


def test_chatml_templates_get_generation_markers_without_changing_the_text(tiny_model_dir):
    from transformers import AutoTokenizer

    from tunelab.train import sft
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    how, template = sft.loss_plan(tok)
    assert "ChatML template with generation markers added by tunelab" in how
    msgs = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Paris"},
            {"role": "user", "content": "1 2 3"}, {"role": "assistant", "content": "4 5"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False,
                                                                                     chat_template=template)
    out = tok.apply_chat_template(msgs, chat_template=template, return_dict=True, return_assistant_tokens_mask=True)
    trained = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == "Paris<|im_end|>4 5<|im_end|>"  # assistant turns and their end-of-turn token only
    assert sft.mark_chatml("{{ messages[0]['content'] }}") is None


@pytest.mark.process
@pytest.mark.timeout(900)
@pytest.mark.slow
def test_a_few_lora_steps_on_the_bundled_model(bundled_model):
    import math

    from tunelab import datasets, runs
    db, ws, name = bundled_model
    ref = datasets.import_file(db, ws, SAMPLE, "acme").version.ref
    run_id = runs.launch(db, ws, {"base_model": name, "dataset": ref, "tuning": "lora", "max_steps": 3,
                                  "per_device_train_batch_size": 2, "max_length": 256, "learning_rate": 1e-3,
                                  "lora": {"r": 8, "alpha": 16}, "save_steps": 100, "warmup_ratio": 0.0})
    try:
        run = runs.wait(db, run_id, poll_s=1.0, timeout_s=600)
    finally:
        stop_leftover_runs(db)
    assert run.status == "completed", (run.error, runs.log_tail(run))
    losses = [m["loss"] for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
    # A trained 135M model is far below the uniform guess over its 49k-token vocabulary (ln 49152 = 10.8).
    assert len(losses) == 3 and all(0 < x < 0.5 * math.log(49152) for x in losses)
    assert "ChatML template with generation markers added by tunelab" in run.progress()["loss_on"]
    assert (run.path / "final" / "adapter_model.safetensors").exists()
