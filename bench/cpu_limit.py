"""Training FLOP/s that tunelab's default SFT reaches, as a fraction of the matmul FLOP/s torch reaches here.

    python bench/cpu_limit.py [--model smollm2-135m-instruct] [--rows 64] [--max-steps 8] [--tuning lora|full]
                              [--compile off,on]

(1) the peak, the best matmul FLOP/s of torch on square float32 matrices (bfloat16 on a GPU), n = 1024, 2048,
4096, best of five 0.2 s windows each; (2) runs of tunelab's default SFT config through our entry point
(bench/train_throughput.py's `tunelab_setup`) on the first --rows alpaca rows, each in a fresh process, one a
line: `off` eager; `on` the decoder blocks compiled (core/train/compiling.py), first against an empty compile
cache (cold), then once more in a new process against the cache the cold run filled (warm); (3) each run's FLOPs.
Per run: the first step's seconds (compiling included), the steady real tokens/s (step 1 left out) and the
fraction of peak. Goal: achieved / peak >= 0.5.

The FLOP count is the model's (the work a step needs, as MFU counts it), from the packed training data the
trainer actually used (real tokens, labelled tokens, each conversation's length) and the model's shapes:
  linear layers  forward 2 x N_linear per token, backward 2 x N_linear for the activation gradients, and,
                 when full tuning, 2 x N_linear more for the weight gradients (LoRA: the adapters' 6 x N_lora)
  LM head        needed at labelled positions only: 4 x vocab x hidden per labelled token (6x when trained)
  attention      causal, per conversation of n tokens and per layer: 2 x heads x head_dim x n^2 forward,
                 twice that backward
Recomputation (gradient checkpointing; TRL's chunked LM head recomputes its logits in the backward pass)
is work done but not counted. For comparison it also prints 6 x N x tokens (N = every parameter on the
path, the usual rule of thumb), which for LoRA counts weight gradients that are never computed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from third_party import require
from train_throughput import ALPACA, model_dir, summary, tunelab_setup


def peak_matmul_flops() -> tuple[float, dict]:
    import torch

    from tunelab import cost
    device = "cuda" if torch.cuda.is_available() else "cpu"
    found = {n: cost.matmul_flops(device, n, window_s=0.2)
             for n in (1024, 2048, 4096) + ((8192,) if device == "cuda" else ())}
    return max(found.values()), found


def shapes(model) -> dict:
    """Parameter counts by role, read off the modules (the frozen base layers of a LoRA model included)."""
    import torch
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    n_linear = n_lora = 0
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            if "lora_" in name:
                n_lora += module.weight.numel()
            else:
                n_linear += module.weight.numel()
    cfg = base.config.get_text_config()
    return {"n_linear": n_linear, "n_lora": n_lora, "head": head.weight.numel(),
            "n_all": sum(p.numel() for p in base.parameters()), "layers": cfg.num_hidden_layers,
            "attn_width": cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)}


def data_counts(dataset) -> dict:
    """Real tokens, labelled tokens and the sum of squared conversation lengths of the packed training data."""
    tokens = labelled = squares = 0
    for row in dataset:
        tokens += len(row["input_ids"])
        lengths = row.get("seq_lengths") or [len(row["input_ids"])]
        labelled += sum(label != -100 for label in row["labels"]) if "labels" in row else len(row["input_ids"])
        squares += sum(n * n for n in lengths)
    return {"tokens": tokens, "labelled": labelled, "squares": squares}


def model_flops_per_token(s: dict, d: dict, full: bool) -> float:
    linear = (6 if full else 4) * s["n_linear"] + 6 * s["n_lora"]
    head = (6 if full else 4) * s["head"] * d["labelled"] / d["tokens"]
    attention = 3 * 2 * s["attn_width"] * s["layers"] * d["squares"] / d["tokens"]
    return linear + head + attention


def run_one(args) -> None:
    """A child: one training run in this process, its figures as one JSON line."""
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    if args.cache_from:  # the warm run: a fresh process and workspace, the cold run's compile cache
        (home / "cache").symlink_to(args.cache_from / "cache", target_is_directory=True)
    os.environ["TUNELAB_HOME"] = str(home)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    rows = json.loads(args.data.read_text())[:args.rows]
    model, _, probe, trainer = tunelab_setup(model_dir(args.model, home), rows, args, home, tuning=args.tuning,
                                             compile=args.child)
    run = summary(probe)
    s, d = shapes(model), data_counts(trainer.train_dataset)
    first = json.loads((home / "runs" / "bench" / "metrics.jsonl").read_text().splitlines()[0])
    print("RESULT " + json.dumps({**run, "home": str(home), "first_step_s": first["elapsed"], "load": os.getloadavg()[0],
                                  "per_token": model_flops_per_token(s, d, args.tuning == "full"), "shapes": s,
                                  "data": d, "n_all": s["n_all"]}), flush=True)


def child(args, mode: str, cache_from: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--rows", str(args.rows),
           "--max-steps", str(args.max_steps), "--tuning", args.tuning, "--data", str(args.data)]
    out = subprocess.run(cmd + (["--cache-from", str(cache_from)] if cache_from else []), capture_output=True,
                         text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"{mode} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--tuning", default="lora", choices=["lora", "full"])
    ap.add_argument("--data", type=Path, default=ALPACA)
    ap.add_argument("--compile", default="off,on", help="runs to make: off (eager), on (cold, then warm)")
    ap.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    ap.add_argument("--cache-from", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    require(args.data)
    if args.child:
        return run_one(args)

    peak, by_size = peak_matmul_flops()
    print("matmul peak: " + ", ".join(f"n={n} {f / 1e9:.1f}" for n, f in by_size.items()) + " GFLOP/s", flush=True)
    runs = {}
    for mode in args.compile.split(","):
        if mode == "off":
            runs["eager"] = child(args, "off")
        else:
            runs["compiled, cold"] = child(args, "on")
            runs["compiled, warm"] = child(args, "on", cache_from=Path(runs["compiled, cold"]["home"]))
        for name, r in runs.items():
            if "printed" not in r:
                r["printed"] = True
                print(f"  {name}: first step {r['first_step_s']:.1f} s, {r['tokens_per_s']:.1f} tokens/s "
                      f"(load {r['load']:.1f})", flush=True)

    r = next(iter(runs.values()))
    s, d = r["shapes"], r["data"]
    print(f"\n{args.model} {args.tuning}: {r['steps']} steps ({d['labelled'] / d['tokens']:.0%} of tokens labelled, "
          f"mean conversation {d['squares'] / d['tokens']:.0f} tokens by squares)")
    print(f"model FLOPs per token {r['per_token'] / 1e6:.3g} M: linear {s['n_linear'] / 1e6:.3g} M params, "
          f"LoRA {s['n_lora'] / 1e6:.3g} M, LM head {s['head'] / 1e6:.3g} M; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'run':16} {'first step s':>12} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>7} {'load':>5}")
    for name, r in runs.items():
        achieved = r["per_token"] * r["tokens_per_s"]
        print(f"{name:16} {r['first_step_s']:12.1f} {r['tokens_per_s']:9.1f} {achieved / 1e9:8.1f} "
              f"{achieved / peak:7.2f} {r['load']:5.1f}")
    best = max(runs.values(), key=lambda r: r["tokens_per_s"])
    fraction = best["per_token"] * best["tokens_per_s"] / peak
    thumb = 6 * best["n_all"] * best["tokens_per_s"] / peak
    print(f"best fraction of peak {fraction:.2f} (goal >= 0.5: {'met' if fraction >= 0.5 else 'MISSED'}); for "
          f"comparison, 6 x all {best['n_all'] / 1e6:.0f} M params x tokens/s = {thumb:.2f} of peak (overcounts LoRA: "
          "no weight gradients for the frozen base)")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
