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
