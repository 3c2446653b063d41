"""Direct Preference Optimization with TRL's DPOTrainer: the policy learns from preference pairs directly,
with no reward model, by raising log p(chosen) - log p(rejected) relative to a frozen reference.

The reference is the starting policy: the base model, or the result of the `init_from` run (an SFT adapter or
model). With a fresh LoRA adapter TRL gets the reference by switching the adapter off; when training on from an
earlier adapter it keeps a frozen copy of that adapter; in full tuning the reference is a frozen copy of the
starting weights. TRL logs, and metrics.jsonl keeps, per step: rewards/chosen and rewards/rejected (beta times
the policy-to-reference log-ratio of each answer), rewards/margins (their difference), rewards/accuracies (the
share of pairs whose chosen answer has the higher implicit reward), and the same with eval_ on the validation split.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from tunelab.train import speedups
from tunelab.train.config import RunConfig

LABEL = "DPO"

# TRL 1.16's DPOConfig.loss_type values: sigmoid is the DPO paper's loss, ipo the IPO paper's squared loss, ...
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")


@dataclass
class Config(RunConfig):
    method: str = field(default="dpo", metadata={"help": "Training method: a module in core/train/."})
    learning_rate: float = field(default=5e-5, metadata={
        "help": "Peak learning rate (AdamW); DPO wants less than SFT (5e-7 to 5e-6 for full tuning of big models, "
                "about 5e-5 for LoRA).", "min": 0.0})
    beta: float = field(default=0.1, metadata={
        "help": "How far the policy may move from the reference: higher keeps it closer. For ipo it is the "
                "regularization tau.", "min": 0.0})
    loss_type: str = field(default="sigmoid", metadata={
        "help": "sigmoid: the DPO paper's loss; ipo: IPO's squared loss (less overfitting on near-deterministic "
                "preferences); hinge: SLiC; robust: noisy labels (with label_smoothing); others as in TRL's "
                "DPOConfig.", "choices": LOSS_TYPES})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "Assumed share of flipped preference labels (for sigmoid and robust), 0 to 0.5.", "min": 0.0,
        "max": 0.5})
    max_length: int = field(default=1024, metadata={
        "help": "Longest tokenized prompt + answer; longer ones are cut at the end.", "min": 16})

    dataset_kinds = ("preference",)


def _pair(row: dict) -> dict:
    keep = ("role", "content")
    return {key: [{k: m[k] for k in keep} for m in row[key]] for key in ("prompt", "chosen", "rejected")}


def train(ctx) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    cfg: Config = ctx.cfg
    model, tokenizer, peft_config = ctx.load_model()
    speedups.padding_free(model, ctx.device["kind"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Full tuning: a frozen copy of the starting weights. (TRL would reload the reference from the model's
    # folder, which is the bare base when init_from's adapter was merged in.) LoRA: TRL handles it, see above.
    ref_model = None
    if peft_config is None and not hasattr(model, "peft_config"):
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    ctx.phase(f"reading {cfg.dataset}")
    splits = ctx.dataset_rows()
    train_ds = Dataset.from_list([_pair(r) for r in splits["train"]])
    eval_rows = splits.get("validation")
    eval_ds = Dataset.from_list([_pair(r) for r in eval_rows]) if eval_rows else None
    ctx.phase(f"{len(train_ds)} training pairs" + (f", {len(eval_ds)} validation pairs" if eval_ds is not None
                                                   else ", no validation split"))
    args = DPOConfig(**ctx.training_args(has_eval=eval_ds is not None), beta=cfg.beta, loss_type=[cfg.loss_type],
                     label_smoothing=cfg.label_smoothing, max_length=cfg.max_length)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config)
    ctx.fit(trainer)
