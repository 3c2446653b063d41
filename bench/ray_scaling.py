"""Throughput of the ray backend: 1 vs 2 Ray Train workers (DDP over gloo on CPU) on the same SFT run.

    python bench/ray_scaling.py [--address http://HEAD:8265] [--model PATH] [--steps 30] [--batch 4]

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address")
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

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
