"""Throughput of the ray backend: 1 vs 2 Ray Train workers (DDP over gloo on CPU) on the same SFT run.

    python bench/ray_scaling.py [--address http://HEAD:8265] [--model PATH] [--steps 30] [--batch 4]
    python bench/ray_scaling.py --plan-7b   # what a 7B LoRA on 8 GPUs ships, stores, pulls and costs

Without --address it starts a throwaway single-node cluster (2 CPUs) and stops it after. --model is a local
HF model folder (default: the tests' tiny random Llama, built on the spot). Prints, for each setup, the
real tokens per second over the training steps alone (metrics.jsonl: tokens / elapsed) and the wall time
from launch to completion (which includes starting the job and the workers).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETUPS = [  # (label, num_workers, cpus_per_worker)
    ("1 worker x 1 CPU", 1, 1),
    ("2 workers x 1 CPU", 2, 1),
    ("1 worker x 2 CPUs", 1, 2),
]


# A 7B LoRA on 8 GPUs through remote storage (`python bench/ray_scaling.py --plan-7b`): what it ships, stores
# and pulls, and tunelab's cost estimate for it. The figures that are not measured here sit in this block.
PLAN_PARAMS = 7.24e9            # Mistral-7B / Llama-2-7B class
PLAN_LORA_PARAMS = 42e6         # r=16 on every linear layer of a 32-layer 4096-wide model: 32 x 7 x 16 x (d_in + d_out)
PLAN_TOKENS = 10_000 * 1_024 * 3  # 10k conversations of about 1k tokens, 3 epochs
PLAN_GPUS = 8
PLAN_GPU_FLOPS = 989e12 * 0.40  # an H100's dense bf16 peak at 40% MFU, a usual LoRA figure
PLAN_DATASET_BYTES = 10_000 * 5_000  # JSONL, about 5 kB a conversation
PLAN_SAVES = 20                 # save_steps over the run; storage keeps the newest 2 (remote.KEEP_CHECKPOINTS)


def plan_7b() -> None:
    """Print the 7B LoRA plan: bytes each way and the estimator's time and money."""
    from tunelab import cost, remote, workspace
    bf16, fp32 = 2, 4
    model = PLAN_PARAMS * bf16
    adapter = PLAN_LORA_PARAMS * fp32
    checkpoint = adapter * 3 + 50e6  # adapter + AdamW's two moments + scheduler, RNG and trainer state
    flops = PLAN_TOKENS * cost.flops_per_token(int(PLAN_PARAMS), "lora")
    seconds = flops / (PLAN_GPUS * PLAN_GPU_FLOPS) + cost.STARTUP_S["cuda"]
    hour = workspace.SETTINGS_DEFAULTS["gpu_hour_usd"] * PLAN_GPUS  # the setting prices one GPU-hour
    gb = 1e9
    print(f"7B LoRA (r=16, all-linear) on {PLAN_GPUS} GPUs, {PLAN_TOKENS / 1e6:.1f}M trained tokens")
    print(f"  ships once per content hash: base model {model / gb:.1f} GB (bf16 safetensors), dataset "
          f"{PLAN_DATASET_BYTES / gb:.2f} GB, code ~0.5 MB (runtime_env py_modules)")
    print(f"  each node downloads the model once into its cache ({model / gb:.1f} GB per node, not per GPU)")
    print(f"  stores: {PLAN_SAVES} checkpoints of {checkpoint / gb:.2f} GB written, the newest "
          f"{remote.KEEP_CHECKPOINTS} kept ({remote.KEEP_CHECKPOINTS * checkpoint / gb:.2f} GB); final/ "
          f"{adapter / gb:.2f} GB; Ray Train's own state (kB)")
    print(f"  pulls to the studio: status.json and metrics.jsonl every refresh (kB), the Ray log, final/ "
          f"{adapter / gb:.2f} GB once; checkpoints stay in storage")
    print(f"  estimate: {flops:.2e} FLOPs (4N a token) / {PLAN_GPUS} x {PLAN_GPU_FLOPS / 1e12:.0f} TFLOP/s = "
          f"{seconds / 3600:.2f} h; at {hour:.0f} $/h (gpu_hour_usd {workspace.SETTINGS_DEFAULTS['gpu_hour_usd']} "
          f"x {PLAN_GPUS}) = ${seconds / 3600 * hour:.0f}, beside the usual $50-500 quoted for a 7B LoRA fine-tune")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address")
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--plan-7b", action="store_true", help="print the 7B LoRA on 8 GPUs plan and exit")
    args = ap.parse_args()
    if args.plan_7b:
        plan_7b()
        return

    cluster = None
    if not args.address:
        from tests.ray_cluster import ENV, RayCluster
        os.environ.update(ENV)
        cluster = RayCluster(num_cpus=2)
        args.address = cluster.address
        print(f"started a local cluster at {args.address} in {cluster.start_seconds:.1f}s", file=sys.stderr)
    try:
        run(args)
    finally:
        if cluster:
            cluster.stop()


def run(args) -> None:
    from tunelab import datasets, models, runs
    from tunelab import db as dbmod
    from tunelab import workspace as wsmod

    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-ray-"))
    os.environ["TUNELAB_HOME"] = str(home)
    ws = wsmod.current()
    db = dbmod.connect(ws.db_path)
    model = Path(args.model) if args.model else None
    if model is None:
        from tests.conftest import _build_tiny_model
        model = _build_tiny_model(Path(tempfile.mkdtemp(prefix="tiny-llama-")))
    models.add_local(db, model, "bench")
    ref = datasets.import_file(db, ws, REPO / "data" / "samples" / "acme_router_sft.jsonl", "acme").version.ref
    print(f"model {model}, {args.steps} steps, per-device batch {args.batch}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'setup':<20} {'tokens/s':>9} {'train s':>8} {'wall s':>7} {'tokens':>8}")
    for label, workers, cpus in SETUPS:
        config = {"base_model": "bench", "dataset": ref, "tuning": "lora", "max_steps": args.steps,
                  "per_device_train_batch_size": args.batch, "max_length": 256, "save_steps": 10_000,
                  "logging_steps": 1, "backend": "ray", "ray_address": args.address, "num_workers": workers,
                  "cpus_per_worker": cpus}
        started = time.time()
        run_id = runs.launch(db, ws, config)
        run_ = runs.wait(db, run_id, poll_s=0.5, timeout_s=3600)
        wall = time.time() - started
        if run_.status != "completed":
            print(f"{label:<20} {run_.status}: {run_.error}")
            continue
        last = [m for m in runs.read_metrics(ws, run_id) if m["kind"] == "train"][-1]
        print(f"{label:<20} {last['tokens'] / last['elapsed']:>9.0f} {last['elapsed']:>8.1f} {wall:>7.1f} "
              f"{last['tokens']:>8}", flush=True)


if __name__ == "__main__":
    main()
