"""Training throughput of a real LoRA SFT run through the run manager, in real (non-padding) tokens/s.

    python bench/train_throughput.py [--model smollm2-135m-instruct] [--steps 10] [--batch-size 4]
                                     [--max-length 512] [--no-packing] [--gradient-checkpointing]

Runs in a temporary workspace: imports data/samples/acme_router_sft.jsonl, launches one run with
`core.runs.launch`, waits, and prints tokens/s over the training time (model loading and data
preparation excluded), the FLOP/s that implies (4N per token for LoRA, see core/cost.py), the matmul
benchmark, their ratio (what core.cost.TRAIN_EFFICIENCY should be on this machine), and the estimate
core.cost made before the run next to the actual time.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--tuning", default="lora", choices=["lora", "full"])
    ap.add_argument("--no-packing", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    os.environ["TUNELAB_HOME"] = str(home)
    from core import cost, datasets, db, models, runs, workspace
    ws = workspace.current()
    conn = db.connect(ws.db_path)
    # Reuse the prepared bundled model of the default workspace or the test cache, if there is one.
    for cache in (REPO / "data", Path.home() / ".cache" / "tunelab-tests"):
        if (cache / "models" / args.model / "config.json").exists():
            models.list_models(conn)
            models._record(conn, args.model, cache / "models" / args.model)
            break
    ref = datasets.import_file(conn, ws, REPO / "data" / "samples" / "acme_router_sft.jsonl", "acme").version.ref
    config = {"base_model": args.model, "dataset": ref, "tuning": args.tuning, "max_steps": args.steps,
              "per_device_train_batch_size": args.batch_size, "max_length": args.max_length,
              "packing": not args.no_packing, "gradient_checkpointing": args.gradient_checkpointing,
              "save_steps": 10_000, "eval_steps": 10_000, "learning_rate": 2e-4}
    start = time.time()
    run_id = runs.launch(conn, ws, config)
    run = runs.wait(conn, run_id, poll_s=1.0)
    wall = time.time() - start
    if run.status != "completed":
        raise SystemExit(f"run {run_id} {run.status}: {run.error}\n{runs.log_tail(run)}")
    status = run.progress()
    tokens, train_s = status["tokens"], status["elapsed_s"]
    params = models.get_model(conn, args.model).params
    achieved = cost.flops_per_token(params, args.tuning, args.gradient_checkpointing) * tokens / train_s
    matmul = cost.machine_flops(ws, run.device)
    print(f"{args.model} {args.tuning}, {args.steps} steps, batch {args.batch_size}, max_length {args.max_length}, "
          f"packing {not args.no_packing}, gradient checkpointing {args.gradient_checkpointing}, load {os.getloadavg()[0]:.1f}")
    print(f"real tokens/s (training time): {tokens / train_s:.1f}  ({tokens} tokens in {train_s:.1f} s)")
    print(f"achieved {achieved / 1e9:.1f} GFLOP/s; matmul benchmark {matmul / 1e9:.1f} GFLOP/s; "
          f"ratio {achieved / matmul:.3f} (cost.TRAIN_EFFICIENCY = {cost.TRAIN_EFFICIENCY})")
    print(f"wall time {wall:.1f} s (start-up {wall - train_s:.1f} s); estimated before launch {run.est_seconds:.1f} s")


if __name__ == "__main__":
    main()
