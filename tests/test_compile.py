"""Regional compilation of LoRA SFT (core/train/compiling.py) on the tiny model, with real torch.compile in real
run processes: the same losses as eager, the compiled code kept in the workspace's compile cache, and
`compile: auto` eager until a compiled run has warmed that cache, compiled after."""
import pytest

from tunelab.errors import UserError


def train(db, ws, ref: str, compile: str):
    """A 4-step LoRA SFT run of the tiny model; (its status.json, its train losses, its log)."""
    from tunelab import runs
    run_id = runs.launch(db, ws, {"base_model": "tiny", "dataset": ref, "max_steps": 4, "per_device_train_batch_size": 2,
                                  "max_length": 96, "learning_rate": 5e-3, "warmup_ratio": 0.0, "seed": 0,
                                  "compile": compile})
    run = runs.wait(db, run_id, poll_s=0.5, timeout_s=240)
    log = (run.path / "train.log").read_text()
    assert run.status == "completed", (run.error, log[-3000:])
    return run.progress(), [m["loss"] for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"], log


@pytest.mark.process
@pytest.mark.timeout(600)
def test_compiled_sft_matches_eager_fills_the_cache_and_auto_waits_for_a_warm_one(sft_data):
    db, ws, ref = sft_data
    cache = ws.compile_cache_dir

    status, eager, _ = train(db, ws, ref, "auto")
    assert status["compiled"] is False and not (cache / "warm").exists()  # no warm cache yet: auto stays eager

    status, cold, log = train(db, ws, ref, "on")
    assert status["compiled"] is True and "compiling 2 decoder blocks (cold cache)" in log
    assert cold == pytest.approx(eager, rel=1e-4) and len(cold) == 4
    assert list((cache / "warm").glob("*.json"))  # the marker auto looks for
    assert sum(1 for p in cache.rglob("*") if p.is_file()) > 10  # Inductor's compiled code and graphs, not /tmp's

    status, warm, log = train(db, ws, ref, "auto")
    assert status["compiled"] is True and "compiling 2 decoder blocks (warm cache)" in log
    assert warm == pytest.approx(eager, rel=1e-4)


def test_compile_takes_auto_on_or_off():
    from tunelab.train import config
    with pytest.raises(UserError, match="compile"):
        config.from_dict({"base_model": "m", "dataset": "d", "compile": "always"})


def test_auto_on_a_cold_cache_compiles_after_the_second_step_only_when_the_rest_of_the_run_pays_for_it():
    """The callback `compile: auto` adds on a cold cache, driven as the Trainer drives it: it times the second
    step and compiles the real model's blocks once, only if the steps left save more than a cold compile costs."""
    import time

    from transformers import LlamaConfig, LlamaForCausalLM, TrainerControl, TrainerState

    from tunelab.train import compiling

    def blocks_compiled(max_steps: int) -> tuple[int, list]:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2))
        reports = []
        callback = compiling.compile_when_worth_it(model, lambda step_s, left: reports.append((step_s, left)))
        state = TrainerState(max_steps=max_steps)
        for step in (1, 2, 3, 4):
            time.sleep(0.05)  # the step's work
            state.global_step = step
            callback.on_step_end(None, state, TrainerControl())
        return sum(b._compiled_call_impl is not None for b in compiling.decoder_blocks(model)), reports

    assert blocks_compiled(max_steps=10) == (0, [])  # 8 steps of 0.05 s would save far less than a compile costs
    compiled, reports = blocks_compiled(max_steps=10 ** 6)
    assert compiled == 2 and len(reports) == 1  # once, after the second step
    step_s, left = reports[0]
    assert left == 10 ** 6 - 2 and 0.05 <= step_s < 1
    assert compiling.worth_compiling(step_s, left) and not compiling.worth_compiling(step_s, 8)
