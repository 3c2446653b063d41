"""Time and money before a run, and the actuals after.

estimate = trained tokens x FLOPs per token / FLOP/s this machine achieves when training, plus start-up;
money = hours x the `gpu_hour_usd` or `cpu_hour_usd` setting.

FLOPs per trained token, with N the model's parameter count (Kaplan et al. 2020, "Scaling Laws", 2.1):
  full         6N: the forward pass is 2N (a multiply and an add per weight); the backward pass is 4N,
               2N for the gradients with respect to the activations and 2N for those with respect to the weights.
  lora, qlora  4N: the forward 2N and the activation gradients 2N still pass through every frozen weight,
               but weight gradients are computed only for the adapters, r x (d_in + d_out) per adapted
               layer, about 1% of N at r=16 on a 135M model, so they round away.
  gradient checkpointing reruns the forward pass during the backward: +2N.
QLoRA also de-quantizes the 4-bit weights on the fly; that cost shows up in the measured throughput of
past QLoRA runs rather than in the FLOP count.

The achieved FLOP/s comes from past completed runs on this machine (FLOPs they did / their training seconds),
or, before there are any, from a short matmul benchmark times TRAIN_EFFICIENCY.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab import workspace

# Fraction of the matmul benchmark's FLOP/s that training reaches on CPU with tunelab's defaults: 0.37 for
# SmolLM2-135M LoRA and 0.48 for full tuning in bench/cpu_limit.py here (counting 4N or 6N per token plus the
# LM head and attention). Only the first estimate on a machine uses it; later ones use the machine's past runs.
TRAIN_EFFICIENCY = 0.35
STARTUP_S = {"cpu": 25.0, "cuda": 40.0}  # interpreter, torch/transformers/TRL imports, model load, data prep
SAMPLE_ROWS = 2000  # rows tokenized for the length estimate
OVERHEAD_TOKENS_PER_MESSAGE = 4  # chat template markers around each turn (ChatML: <|im_start|>role\n ... <|im_end|>\n)


@dataclass
class Estimate:
    device: str
    params: int
    steps: int
    tokens: int            # trained tokens (padding excluded)
    eval_tokens: int
    flops: float
    flops_per_s: float
    basis: str             # where flops_per_s came from
    seconds: float
    hour_usd: float
    usd: float

    def to_dict(self) -> dict:
        return asdict(self)


def device_kind() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def hour_usd(db, device: str) -> float:
    return float(workspace.get_setting(db, "gpu_hour_usd" if device == "cuda" else "cpu_hour_usd"))


def flops_per_token(params: int, tuning: str, gradient_checkpointing: bool = False) -> float:
    per = 6 if tuning == "full" else 4
    return (per + (2 if gradient_checkpointing else 0)) * params


def method_flops_per_token(method: str, params: int, tuning: str, gradient_checkpointing: bool = False,
                           beta: float = 0.0) -> float:
    """FLOPs per token that the policy trains on (as TRL counts them: prompt and answer), by method.

    sft, reward  the training cost above. A reward model's pair is two sequences (prompt + chosen, prompt +
                 rejected), each a forward and backward pass; both count as tokens.
    dpo          + 2N: the frozen reference's forward pass over the same chosen and rejected tokens (TRL computes
                 the reference log-probs on the fly), so a pair costs 2 x (training + 2N) per token of one side.
    grpo, rloo   + 2N to sample each token (prefill and decoding with a KV cache: one forward pass a token)
                 + 2N for the reward model to score it (taken as the policy's size: it usually shares the base)
                 + 2N for the reference's forward pass when beta > 0, besides the update on the sampled tokens.
                 Sampling on CPU is memory-bound, so it reaches fewer FLOP/s than training: the estimate
                 is low until past runs calibrate the rate.
    """
    train = flops_per_token(params, tuning, gradient_checkpointing)
    if method == "dpo":
        return train + 2 * params
    if method in ("grpo", "rloo"):
        return train + 4 * params + (2 * params if beta else 0)
    return train


def _sequences_per_row(method: str) -> int:
    """A preference pair is trained as two sequences; the estimate takes rejected to be as long as chosen."""
    return 2 if method in ("reward", "dpo") else 1


def _token_lengths(model_dir: Path | None, rows: list[dict]) -> list[int]:
    """Tokens per conversation with the model's tokenizer (the fast `tokenizers` library: no transformers import);
    about 4 characters a token when the model is not prepared yet."""
    texts = [[m.get("content") or "" for m in _messages(r)] for r in rows]
    tokenizer_file = model_dir / "tokenizer.json" if model_dir else None
    if tokenizer_file and tokenizer_file.exists():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(tokenizer_file))
        flat = [t for conv in texts for t in conv]
        counts = iter(len(e.ids) for e in tok.encode_batch(flat, add_special_tokens=False)) if flat else iter(())
        return [sum(next(counts) for _ in conv) + OVERHEAD_TOKENS_PER_MESSAGE * len(conv) for conv in texts]
    return [sum(len(t) for t in conv) // 4 + OVERHEAD_TOKENS_PER_MESSAGE * len(conv) for conv in texts]


def _messages(row: dict) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    out = list(row.get("prompt", []))
    for key in ("chosen", "completion"):
        out += row.get(key, [])
    return out


def _tokens_per_row(lengths: list[int], max_length: int, packing: bool) -> tuple[float, int]:
    """(mean trained tokens per batch row, rows per epoch)."""
    capped = [min(n, max_length) for n in lengths] or [max_length]
    if packing:
        total = sum(capped)
        rows = max(1, math.ceil(total / max_length))
        return total / rows, rows
    return statistics.fmean(capped), len(capped)


def matmul_flops(device: str, n: int = 1024, windows: int = 5, window_s: float = 0.1) -> float:
    """FLOP/s of an n x n matmul in float32 (on a GPU, in the bf16 or fp16 its training autocasts to): the best
    of `windows` short windows, since other processes on the machine lower the average, not the best."""
    import torch
    dev = "cuda" if device == "cuda" else "cpu"
    if dev == "cuda":
        from tunelab.precision import half_dtype
        dtype = half_dtype()
    else:
        dtype = torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b  # warm-up
    rates = []
    for _ in range(windows):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < window_s:
            a @ b
            reps += 1
        if dev == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n ** 3 * reps / (time.perf_counter() - start))
    return max(rates)


def machine_flops(ws, device: str) -> float:
    """This machine's matmul FLOP/s, measured once and cached in the workspace."""
    cache = Path(ws.home) / "machine.json"
    try:
        doc = json.loads(cache.read_text())
        if doc.get("device") == device:
            return float(doc["matmul_flops"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        pass
    flops = matmul_flops(device)
    cache.write_text(json.dumps({"device": device, "matmul_flops": flops, "measured_at": time.time()}))
    return flops


def _past_flops_per_s(db, device: str, tuning: str) -> tuple[float, int] | None:
    """Median FLOP/s that recent completed runs on this device achieved (same tuning if any), and how many."""
    from tunelab.folders import read_status
    rows = db.execute(
        "SELECT r.tuning, r.folder, r.config_json, m.params FROM runs r JOIN models m ON m.name = r.base_model "
        "JOIN jobs j ON j.kind = 'train' AND j.target = r.id WHERE j.status = 'completed' AND r.device = ? "
        "AND m.params IS NOT NULL ORDER BY j.finished_at DESC LIMIT 50", [device]).fetchall()
    samples: dict[str, list[float]] = {}
    for run_tuning, folder, config_json, params in rows:
        st = read_status(Path(folder))
        tokens, seconds = st.get("tokens"), st.get("elapsed_s")
        if tokens and seconds:
            gc = bool(json.loads(config_json).get("gradient_checkpointing"))
            cfg = json.loads(config_json)
            per_token = method_flops_per_token(cfg.get("method", "sft"), params, run_tuning, gc, cfg.get("beta", 0.0))
            samples.setdefault(run_tuning, []).append(per_token * tokens / seconds)
    chosen = samples.get(tuning) or [x for xs in samples.values() for x in xs]
    return (statistics.median(chosen[:5]), len(chosen[:5])) if chosen else None


def estimate(db, ws, cfg) -> Estimate:
    """Time and money for a resolved run config, before it starts."""
    from tunelab import datasets, models

    info = models.get_model(db, cfg.base_model)
    params = info.params or 0
    version = datasets.resolve(db, ws, cfg.dataset)
    max_length = getattr(cfg, "max_length", 1024)
    packing = getattr(cfg, "packing", False)
    model_dir = Path(info.path) if info.prepared else None
    online = hasattr(cfg, "num_generations")  # grpo, rloo train on answers they sample, not on the dataset's
    if online:
        prompts = [{"prompt": p} for p in datasets.prompts_of(version)[:SAMPLE_ROWS]]
        # Each prompt is answered num_generations times, each answer taken at its longest.
        lengths = [n + cfg.max_completion_length for n in _token_lengths(model_dir, prompts)
                   for _ in range(cfg.num_generations)]
    else:
        lengths = _token_lengths(model_dir, version.load("train")[:SAMPLE_ROWS])
    per_row, rows_per_epoch = _tokens_per_row(lengths, max_length, packing)
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * rows_per_epoch / batch)
    tokens = int(steps * batch * per_row * _sequences_per_row(cfg.method))
    eval_tokens = 0
    if "validation" in version.files and not online:
        eval_lengths = _token_lengths(model_dir, version.load("validation")[:SAMPLE_ROWS])
        eval_tokens = (sum(min(n, max_length) for n in eval_lengths) * (steps // cfg.eval_steps)
                       * _sequences_per_row(cfg.method))
    per_token = method_flops_per_token(cfg.method, params, cfg.tuning, cfg.gradient_checkpointing,
                                       getattr(cfg, "beta", 0.0))
    eval_per_token = 4 * params if cfg.method == "dpo" else 2 * params  # forward passes: policy (and reference)
    flops = per_token * tokens + eval_per_token * eval_tokens
    device = device_kind()
    past = _past_flops_per_s(db, device, cfg.tuning)
    if past:
        flops_per_s, basis = past[0], f"median of {past[1]} past completed run(s) on this machine"
    else:
        flops_per_s = machine_flops(ws, device) * TRAIN_EFFICIENCY
        basis = f"matmul benchmark on this machine x {TRAIN_EFFICIENCY} training efficiency (no past runs yet)"
    seconds = flops / flops_per_s + STARTUP_S[device]
    rate = hour_usd(db, device)
    return Estimate(device, params, steps, tokens, eval_tokens, flops, flops_per_s, basis, seconds, rate,
                    seconds / 3600 * rate)


def actual(run) -> dict:
    """What a run took: process seconds (all attempts), money at the price recorded at launch, tokens and tokens/s."""
    st = run.progress()
    tokens = st.get("tokens")
    train_s = st.get("elapsed_s")
    return {"seconds": run.seconds, "usd": run.usd, "tokens": tokens, "train_seconds": train_s,
            "tokens_per_s": tokens / train_s if tokens and train_s else None,
            "est_seconds": run.est_seconds, "est_usd": run.est_usd}
