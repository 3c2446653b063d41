"""LoRA SFT throughput: plain TRL, hand-tuned TRL and tunelab's default config, in one process, on the same data.

    python bench/train_throughput.py [--model tiny|smollm2-135m-instruct|PATH] [--rows 256] [--max-steps N]
                                     [--setups plain,tuned,tunelab] [--data FILE]

Each setup trains one epoch over the first --rows rows of alpaca_en_demo.json (the same real tokens for
all three, so their losses compare at equal tokens seen) and prints:
  real tokens/s   non-padding tokens over the training time; the first step (warm-up) is left out
  train loss      the mean of the last 5 logged losses
  held-out loss   the completion tokens' mean NLL on the next 64 rows, one function for all three
and then the ratios tunelab/plain (goal >= 1.5) and tunelab/tuned (goal >= 1.0).

The setups (LoRA r=8 on all linear layers, batch 4, max_length 512 for the two TRL ones):
  plain    SFTTrainer with its defaults: no packing, gradient checkpointing on. Changed: bf16 off on CPU
           (about 25x slower there; bf16 stays on a GPU), and learning_rate 2e-4 for all three setups so
           that the losses compare the setups, not step sizes (TRL's default 2e-5 is meant for full tuning).
  tuned    what a TRL expert writes by hand for this machine: packing (best-fit, padding-free) and no
           gradient checkpointing (memory allows it at this size).
  tunelab  tunelab.train.sft.train, our entry point, with tunelab's defaults (sft.Config) and nothing else
           set but the data, the epoch and no checkpoints; it runs in this process through a RunContext.
--model tiny builds the tests' 2-layer random model (seconds, figures meaningless except as a smoke test);
smollm2-135m-instruct uses the prepared bundled model (data/ or the tests' cache); PATH is any HF folder.
--max-steps caps each setup (quick checks; the tokens seen then differ).
"""
import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from third_party import SHARED_DATA, require

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ALPACA = SHARED_DATA / "llamafactory" / "alpaca_en_demo.json"
HELD_OUT = 64
LR = 2e-4
SETUPS = ("plain", "tuned", "tunelab")


def conversation(row: dict) -> tuple[list[dict], list[dict]]:
    """An alpaca row as (prompt messages, completion messages)."""
    user = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": user}], [{"role": "assistant", "content": row["output"]}]


def model_dir(name: str, home: Path) -> Path:
    if name == "tiny":
        from tests.conftest import _build_tiny_model
        return _build_tiny_model(home / "tiny")
    if Path(name).is_dir():
        return Path(name)
    tests_cache = Path(os.environ.get("TUNELAB_TEST_CACHE", Path.home() / ".cache" / "tunelab-tests"))
    for cache in (REPO / "data", tests_cache):
        if (cache / "models" / name / "config.json").exists():
            return cache / "models" / name
    raise SystemExit(f"{name}: not prepared; run `tunelab models prepare {name}` first")


def make_probe():
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """(time, real tokens so far, loss) at every logged step."""
        def __init__(self):
            self.points: list[tuple[float, int, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "num_tokens" in logs:
                self.points.append((time.perf_counter(), int(logs["num_tokens"]), float(logs["loss"])))

    return Probe()


def summary(probe) -> dict:
    pts = probe.points
    (t0, n0, _), (t1, n1, _) = pts[0], pts[-1]  # from the end of step 1: its warm-up is left out
    return {"tokens_per_s": (n1 - n0) / (t1 - t0), "tokens": n1, "train_s": t1 - t0, "steps": len(pts),
            "train_loss": statistics.mean(p[2] for p in pts[-5:])}


def train_probed(ctx, train) -> tuple:
    """Run a method's entry point `train(ctx)` in this process with a probe on the trainer it builds;
    (trainer, probe). bench/rlhf_throughput.py uses it for the RLHF methods."""
    from tunelab.train import runtime

    probe, seen = make_probe(), {}

    def fit(trainer, restore=None):
        trainer.add_callback(probe)
        seen["trainer"] = trainer
        runtime.RunContext.fit(ctx, trainer, restore)

    ctx.fit = fit
    train(ctx)
    return seen["trainer"], probe


def heldout_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean NLL of the completion tokens, prompt masked: the same measure whatever trained the model."""
    import torch
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for row in rows:
            prompt, completion = conversation(row)
            p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
            full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)[:512]
            ids = torch.tensor([full], device=device)
            labels = ids.clone()
            labels[:, :len(p)] = -100
            n = int((labels[:, 1:] != -100).sum())
            if n:
                total += float(model(input_ids=ids, labels=labels).loss) * n
                count += n
    return total / count


def trl_setup(which: str, path: Path, rows: list[dict], args, out: Path):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list([dict(zip(("prompt", "completion"), conversation(r))) for r in rows])
    tuned = {"packing": True, "gradient_checkpointing": False} if which == "tuned" else {}
    config = SFTConfig(output_dir=str(out / which), bf16=cuda, per_device_train_batch_size=4, max_length=512,
                       learning_rate=LR, num_train_epochs=1, max_steps=args.max_steps, logging_steps=1,
                       save_strategy="no", report_to="none", disable_tqdm=True, **tuned)
    probe = make_probe()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"),
                         callbacks=[probe])
    trainer.train()
    return trainer.model, tokenizer, probe


def tunelab_setup(path: Path, rows: list[dict], args, home: Path, **overrides):
    """Our entry point in this process; returns (trained model, tokenizer, probe, trainer)."""
    from tunelab import datasets, db, models, workspace
    from tunelab.train import runtime, sft

    ws = workspace.current()
    conn = db.connect(ws.db_path)
    models.add_local(conn, path, "bench-model")
    source = home / "alpaca.json"
    source.write_text(json.dumps(rows))
    ref = datasets.import_file(conn, ws, source, "alpaca").version.ref
    cfg = sft.Config(base_model="bench-model", dataset=ref, num_train_epochs=1, max_steps=args.max_steps,
                     save_steps=10 ** 6, eval_steps=10 ** 6, **overrides)
    folder = ws.runs_dir / "bench"
    folder.mkdir(parents=True)
    trainer, probe = train_probed(runtime.RunContext(folder, conn, ws, cfg), sft.train)
    return trainer.model, trainer.processing_class, probe, trainer


def run_setup(which: str, path: Path, train_rows, held_out, args, home: Path) -> dict:
    print(f"--- {which}", flush=True)
    if which == "tunelab":
        model, tokenizer, probe, _ = tunelab_setup(path, train_rows, args, home)
    else:
        model, tokenizer, probe = trl_setup(which, path, train_rows, args, home)
    result = summary(probe)
    result["heldout_loss"] = heldout_loss(model, tokenizer, held_out)
    print(json.dumps({"setup": which, **{k: round(v, 4) for k, v in result.items()}}), flush=True)
    del model
    gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--data", type=Path, default=ALPACA)
    args = ap.parse_args()
    require(args.data)
    setups = args.setups.split(",")
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    os.environ["TUNELAB_HOME"] = str(home)
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    data = json.loads(args.data.read_text())
    train_rows, held_out = data[:args.rows], data[args.rows:args.rows + HELD_OUT]
    path = model_dir(args.model, home)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    print(f"{args.model}: {args.rows} rows of {args.data.name}, {device}, load {os.getloadavg()[0]:.1f}", flush=True)
    results = {which: run_setup(which, path, train_rows, held_out, args, home) for which in setups}

    print(f"\n{'setup':8} {'real tok/s':>10} {'tokens':>7} {'steps':>5} {'train s':>8} {'train loss':>10} "
          f"{'held-out loss':>13}")
    for which, r in results.items():
        print(f"{which:8} {r['tokens_per_s']:10.1f} {r['tokens']:7d} {r['steps']:5d} {r['train_s']:8.1f} "
              f"{r['train_loss']:10.4f} {r['heldout_loss']:13.4f}")
    for base, goal in (("plain", 1.5), ("tuned", 1.0)):
        if "tunelab" in results and base in results:
            ratio = results["tunelab"]["tokens_per_s"] / results[base]["tokens_per_s"]
            print(f"tunelab/{base}: {ratio:.2f}x tokens/s (goal >= {goal}: {'met' if ratio >= goal else 'MISSED'}); "
                  f"held-out loss {results['tunelab']['heldout_loss']:.4f} vs {results[base]['heldout_loss']:.4f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
