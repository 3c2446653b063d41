"""Seconds per optimizer step of each RLHF method on the real bundled model (SmolLM2-135M), on this machine.

    python bench/rlhf_steps.py [--steps 3] [--batch-size 2] [--max-length 512] [--max-completion-length 32]

Runs, through the real run manager in a temporary workspace, a LoRA reward model, DPO, GRPO and RLOO (the last
two scored by that reward model) for a few steps on LLaMA-Factory's dpo_en_demo pairs
(../shared/data/llamafactory), and prints for each the median seconds per step (from metrics.jsonl, the first
step left out as warm-up) and the whole process's seconds. The bundled model is prepared once into
TUNELAB_TEST_CACHE (default ~/.cache/tunelab-tests), shared with the tests.
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from third_party import SHARED_DATA, require

DPO_DEMO = SHARED_DATA / "llamafactory" / "dpo_en_demo.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2, help="pairs a step (reward, dpo); prompts a step (grpo, rloo)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--num-generations", type=int, default=2)
    args = ap.parse_args()
    require(DPO_DEMO)

    from tunelab import db as dbmod, models, workspace
    cache = Path(os.environ.get("TUNELAB_TEST_CACHE", Path.home() / ".cache" / "tunelab-tests"))
    cache_ws = workspace.Workspace(cache).ensure()
    model_dir = models.prepare(dbmod.connect(cache_ws.db_path), cache_ws, models.DEFAULT_MODEL)

    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-")) / "home"
    os.environ["TUNELAB_HOME"] = str(home)
    from tunelab import datasets, runs
    ws = workspace.current()
    db = dbmod.connect(ws.db_path)
    models.add_local(db, model_dir, "smollm2")
    ref = datasets.import_file(db, ws, DPO_DEMO, "dpo-demo").version.ref
    common = {"base_model": "smollm2", "dataset": ref, "tuning": "lora", "max_steps": args.steps, "logging_steps": 1,
              "save_steps": 1000, "eval_steps": 1000, "warmup_ratio": 0.0, "seed": 0}
    pairs = {"per_device_train_batch_size": args.batch_size, "max_length": args.max_length}
    configs = {"reward": {"method": "reward", **pairs}, "dpo": {"method": "dpo", **pairs}}
    online = {"per_device_train_batch_size": args.batch_size * args.num_generations,
              "num_generations": args.num_generations, "max_completion_length": args.max_completion_length}

    print(f"SmolLM2-135M, LoRA r=16, {args.steps} steps each; load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'method':<8} {'s/step':>8} {'process s':>10}  what a step is")
    reward_run = None
    for method in ("reward", "dpo", "grpo", "rloo"):
        cfg = configs.get(method) or {"method": method, "reward_model": reward_run, **online}
        start = time.time()
        run_id = runs.launch(db, ws, {**common, **cfg})
        run = runs.wait(db, run_id, poll_s=0.5)
        if run.status != "completed":
            raise SystemExit(f"{method} run {run_id} {run.status}: {run.error}\n{runs.log_tail(run)}")
        reward_run = reward_run or run_id
        elapsed = [m["elapsed"] for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"]
        per_step = statistics.median([b - a for a, b in zip(elapsed, elapsed[1:])]) if len(elapsed) > 1 else elapsed[0]
        what = (f"{args.batch_size} pairs, max_length {args.max_length}" if method in configs else
                f"{args.batch_size} prompts x {args.num_generations} answers of up to {args.max_completion_length} "
                "tokens, sampled, scored and trained")
        print(f"{method:<8} {per_step:8.2f} {time.time() - start:10.1f}  {what}", flush=True)


if __name__ == "__main__":
    main()
