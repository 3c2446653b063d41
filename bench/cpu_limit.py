"""Training FLOP/s that tunelab's default SFT reaches, as a fraction of the matmul FLOP/s torch reaches here.

    python bench/cpu_limit.py [--model smollm2-135m-instruct] [--rows 64] [--max-steps 8] [--tuning lora|full]

In one process: (1) the peak, the best matmul FLOP/s of torch on square float32 matrices (bfloat16 on a GPU),
n = 1024, 2048, 4096, best of five 0.2 s windows each; (2) a run of tunelab's default SFT config through our
entry point (bench/train_throughput.py's `tunelab_setup`) on the first --rows alpaca rows; (3) the run's FLOPs.
Goal: achieved / peak >= 0.5.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--tuning", default="lora", choices=["lora", "full"])
    ap.add_argument("--data", type=Path, default=ALPACA)
    args = ap.parse_args()
    require(args.data)
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    os.environ["TUNELAB_HOME"] = str(home)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    peak, by_size = peak_matmul_flops()
    print("matmul peak: " + ", ".join(f"n={n} {f / 1e9:.1f}" for n, f in by_size.items()) + " GFLOP/s", flush=True)
    rows = json.loads(args.data.read_text())[:args.rows]
    model, _, probe, trainer = tunelab_setup(model_dir(args.model, home), rows, args, home, tuning=args.tuning)
    run = summary(probe)
    s, d = shapes(model), data_counts(trainer.train_dataset)
    per_token = model_flops_per_token(s, d, args.tuning == "full")
    achieved = per_token * run["tokens_per_s"]
    rule_of_thumb = 6 * s["n_all"] * run["tokens_per_s"]
    print(f"\n{args.model} {args.tuning}: {run['tokens_per_s']:.1f} real tokens/s over {run['steps']} steps "
          f"({d['labelled'] / d['tokens']:.0%} of tokens labelled, mean conversation "
          f"{d['squares'] / d['tokens']:.0f} tokens by squares)")
    print(f"model FLOPs per token {per_token / 1e6:.3g} M: linear {s['n_linear'] / 1e6:.3g} M params, "
          f"LoRA {s['n_lora'] / 1e6:.3g} M, LM head {s['head'] / 1e6:.3g} M")
    print(f"achieved {achieved / 1e9:.1f} GFLOP/s of a {peak / 1e9:.1f} GFLOP/s matmul peak: "
          f"{achieved / peak:.2f} (goal >= 0.5: {'met' if achieved / peak >= 0.5 else 'MISSED'})")
    print(f"for comparison, 6 x all {s['n_all'] / 1e6:.0f} M params x tokens/s = {rule_of_thumb / 1e9:.1f} GFLOP/s "
          f"= {rule_of_thumb / peak:.2f} of peak (overcounts LoRA: no weight gradients for the frozen base)")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
