"""RLHF throughput: plain TRL against tunelab's default config, for the reward model, DPO and GRPO, in one process.

    python bench/rlhf_throughput.py [--model smollm2-135m-instruct|tiny|PATH] [--data FILE] [--methods reward,dpo,grpo]
                                    [--max-steps 6] [--batch-size 4] [--max-length 256]
                                    [--max-completion-length N] [--num-generations N]

The data is a preference file (default: the tests' tests/data/dpo_demo.json; LLaMA-Factory's
../shared/data/llamafactory/dpo_en_demo.json is the longer real one), imported into a temporary workspace and
split 80/20 so that both setups see the same train and validation rows. For each method:
  plain    TRL's trainer with its own defaults (learning rate, gradient checkpointing, ...), bf16 off on CPU,
           LoRA r=8 on all linear layers (peft LoraConfig), and the same rows, model, batch size and max_length.
  tunelab  the method's entry point in core/train/ (reward.train, dpo.train, grpo.train) with its default
           Config, run in this process through a RunContext, as bench/train_throughput.py does for SFT.
GRPO scores answers with the reward model the tunelab reward setup just trained (so --methods grpo needs
reward before it), and both GRPO setups sample the same num_generations answers of up to
max_completion_length tokens (tunelab's defaults unless given): those fix the work a step does.
Printed per setup: real tokens/s (non-padding tokens trained; for GRPO, tokens generated plus tokens trained,
over the same time), the first step left out as warm-up, and the final metric: held-out pairwise accuracy
(reward), the held-out DPO reward margin (dpo), the mean reward of the last steps (grpo). Last, one line per
method `tunelab/plain <method>: R.RRx` (goal >= 1.5, with no worse metric).
"""
import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from third_party import SHARED_DATA, require
from train_throughput import make_probe, model_dir, summary, train_probed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO / "tests" / "data" / "dpo_demo.json"
DPO_DEMO = SHARED_DATA / "llamafactory" / "dpo_en_demo.json"  # the real, longer pairs, for --data
METHODS = ("reward", "dpo", "grpo")
LAST = 3  # logged steps the GRPO mean reward is averaged over


def metric_of(method: str, trainer) -> tuple[str, float]:
    """(name, value) of the method's final metric, from the trainer's own log history (an eval pass for the
    two offline methods is run here, on the same validation rows for both setups)."""
    if method == "grpo":
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h and "loss" in h]
        return "mean reward", statistics.mean(rewards[-LAST:])
    logs = trainer.evaluate()
    key = "eval_accuracy" if method == "reward" else "eval_rewards/margins"
    return ("held-out accuracy" if method == "reward" else "held-out margin"), float(logs[key])


def generated_tokens(trainer, answers_per_step: int) -> float:
    """GRPO's sampled tokens after the first (warm-up) logged step: mean completion length x answers."""
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history
               if "completions/mean_length" in h and "loss" in h]
    return sum(lengths[1:]) * answers_per_step


def trl_as_shipped() -> None:
    """Undo tunelab's process-wide TRL patch (speedups.lm_head_on_labelled_positions_only, which every RunContext
    applies, so it stays on after a tunelab setup): plain TRL must run as installed. The next RunContext
    applies it again."""
    from trl.kernels.chunked_logprob import _use_triton
    from trl.trainer import utils as trl_utils
    trl_utils._use_triton = _use_triton


def plain_setup(method: str, path: Path, splits: dict, args, out: Path, reward=None):
    """TRL's trainer for `method` with its defaults, bf16 off on CPU, LoRA r=8 all-linear; (trainer, probe)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.datasets import prompt_messages
    from tunelab.train import dpo, reward as reward_mod

    trl_as_shipped()
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    common = dict(output_dir=str(out / f"plain-{method}"), bf16=cuda, per_device_train_batch_size=args.batch_size,
                  max_steps=args.max_steps, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)
    probe = make_probe()
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        data = Dataset.from_list([{"prompt": p} for p in map(prompt_messages, splits["train"]) if p])  # as grpo.train
        config = GRPOConfig(**common, num_generations=args.num_generations,
                            max_completion_length=args.max_completion_length)
        trainer = GRPOTrainer(model=model, reward_funcs=reward[0], reward_processing_classes=reward[1], args=config,
                              train_dataset=data, processing_class=tokenizer, callbacks=[probe],
                              peft_config=LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    else:
        pair = reward_mod._pair if method == "reward" else dpo._pair
        train, val = ([{k: v for k, v in pair(r).items() if k != "margin"} for r in splits[s]]
                      for s in ("train", "validation"))
        if method == "reward":
            from trl import RewardConfig as Config, RewardTrainer as Trainer
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
            model.config.pad_token_id = tokenizer.pad_token_id
            task = "SEQ_CLS"
        else:
            from trl import DPOConfig as Config, DPOTrainer as Trainer
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            task = "CAUSAL_LM"
        trainer = Trainer(model=model, args=Config(**common, max_length=args.max_length),
                          train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(val),
                          processing_class=tokenizer, callbacks=[probe],
                          peft_config=LoraConfig(r=8, target_modules="all-linear", task_type=task))
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)  # tunelab's setup prints a shorter line a step; so the logs compare
    trainer.train()
    return trainer, probe


def tunelab_setup(method: str, conn, ws, ref: str, args, reward_final: Path | None = None):
    """tunelab's entry point for `method` with its default Config, in this process; (trainer, probe, folder)."""
    from tunelab.train import config as configmod, runtime

    module = configmod.methods()[method]
    fields = {f.name for f in dataclasses.fields(module.Config)}
    shape = {"max_length": args.max_length} if "max_length" in fields else {
        "num_generations": args.num_generations, "max_completion_length": args.max_completion_length}
    cfg = module.Config(base_model="bench-model", dataset=ref, max_steps=args.max_steps, logging_steps=1,
                        per_device_train_batch_size=args.batch_size, save_steps=10 ** 6, eval_steps=10 ** 6, **shape)
    inputs = runtime.resolve_inputs(conn, ws, cfg)
    if method == "grpo":  # the reward model is this process's reward setup's result, not a run of the workspace
        cfg = dataclasses.replace(cfg, reward_model="bench-reward")
        inputs.update(reward=reward_final, reward_base=inputs["base_model"])
    folder = ws.runs_dir / f"bench-{method}"
    folder.mkdir(parents=True)
    ctx = runtime.RunContext(folder, conn, ws, cfg, inputs=inputs)
    if method == "reward":
        ctx.db = None  # no model registration: the bench's reward model is used from final/ directly
    trainer, probe = train_probed(ctx, module.train)
    return trainer, probe, folder


def measure(method: str, which: str, trainer, probe, answers_per_step: int) -> dict:
    result = summary(probe)
    if method == "grpo":
        result["generated"] = generated_tokens(trainer, answers_per_step)
        result["tokens_per_s"] += result["generated"] / result["train_s"]
    result["metric_name"], result["metric"] = metric_of(method, trainer)
    print(json.dumps({"method": method, "setup": which,
                      **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}}), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"preference pairs (e.g. {DPO_DEMO})")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4, help="pairs a step (reward, dpo); answers a step (grpo)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-completion-length", type=int, default=None, help="GRPO; default: tunelab's")
    ap.add_argument("--num-generations", type=int, default=None, help="GRPO; default: tunelab's")
    args = ap.parse_args()
    require(args.data)
    methods = args.methods.split(",")
    if "grpo" in methods and "reward" not in methods:
        raise SystemExit("--methods: grpo scores answers with the reward setup's model, so it needs reward too")
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    os.environ["TUNELAB_HOME"] = str(home)
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    from tunelab import datasets, db, models, workspace
    from tunelab.train import grpo, reward as reward_mod, runtime
    args.num_generations = args.num_generations or grpo.Config.num_generations
    args.max_completion_length = args.max_completion_length or grpo.Config.max_completion_length
    ws = workspace.current()
    conn = db.connect(ws.db_path)
    path = model_dir(args.model, home)
    models.add_local(conn, path, "bench-model")
    imported = datasets.import_file(conn, ws, args.data, "prefs").version.ref
    version = datasets.split(conn, ws, imported, val=0.2)
    splits = runtime.dataset_rows(version.dir)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    print(f"{args.model}: {len(splits['train'])} train / {len(splits['validation'])} validation pairs of "
          f"{args.data.name}, {args.max_steps} steps, batch {args.batch_size}, max_length {args.max_length}; "
          f"{device}, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)

    results: dict[str, dict] = {}
    reward_final = reward = None
    for method in methods:
        results[method] = {}
        for which in ("plain", "tunelab"):
            print(f"--- {method} {which}", flush=True)
            if which == "plain":
                trainer, probe = plain_setup(method, path, splits, args, home, reward)
            else:
                trainer, probe, folder = tunelab_setup(method, conn, ws, version.ref, args, reward_final)
                if method == "reward":
                    reward_final = folder / "final"
                    reward = reward_mod.load_folder(reward_final, path)
            results[method][which] = measure(method, which, trainer, probe, args.batch_size)
            del trainer
            gc.collect()

    print(f"\n{'method':7} {'setup':8} {'real tok/s':>10} {'steps':>5} {'train s':>8}  final metric")
    for method, pair in results.items():
        for which, r in pair.items():
            gen = f" ({r['generated']:.0f} generated)" if "generated" in r else ""
            print(f"{method:7} {which:8} {r['tokens_per_s']:10.1f} {r['steps']:5d} {r['train_s']:8.1f}  "
                  f"{r['metric_name']} {r['metric']:.4f}{gen}")
    for method, pair in results.items():
        ratio = pair["tunelab"]["tokens_per_s"] / pair["plain"]["tokens_per_s"]
        print(f"tunelab/plain {method}: {ratio:.2f}x  ({pair['tunelab']['metric_name']} "
              f"{pair['tunelab']['metric']:.4f} vs {pair['plain']['metric']:.4f})")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (a shared, loaded machine: figures are noisy)")


if __name__ == "__main__":
    main()
