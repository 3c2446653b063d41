"""Reward model with TRL's RewardTrainer: a sequence-classification head with one output on the base model
(or on an SFT run's result via `init_from`), trained on preference pairs so that chosen scores above rejected.

The loss is -log sigmoid(r(chosen) - r(rejected)) (Bradley-Terry). Pairwise accuracy on the validation split
(the share of pairs scored the right way round) is written to metrics.jsonl as `eval_accuracy` every
`eval_steps` and once more at the end. A full model is registered as a model of kind 'reward'; a LoRA run's
`final/` holds the adapter with the trained head (`modules_to_save`), which loads on top of the base.
`score(...)` (the `tunelab score` command) prints what a trained reward model thinks of one answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import UserError
from tunelab.train import speedups
from tunelab.train.config import RunConfig

LABEL = "reward model"


@dataclass
class Config(RunConfig):
    method: str = field(default="reward", metadata={"help": "Training method: a module in core/train/."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW).", "min": 0.0})
    max_length: int = field(default=1024, metadata={
        "help": "Longest tokenized prompt + answer; TRL drops pairs where either side is longer (it does not cut "
                "them, which would hide the part that differs).", "min": 16})
    center_rewards_coefficient: float | None = field(default=None, metadata={
        "help": "Adds this times mean((r_chosen + r_rejected)^2) to the loss, keeping rewards centred on 0 "
                "(0.01 is the value from the TRL docs); empty means off.", "min": 0.0})

    dataset_kinds = ("preference",)


def resolve(db, ws, cfg: Config) -> Config:
    if cfg.tuning == "qlora":
        raise UserError("key 'tuning': reward models train with full or lora here; qlora is for sft and dpo")
    return cfg


def load_model(ctx):
    """(model, tokenizer, peft_config): a one-output sequence classifier on the base or on init_from's result.

    An init_from LoRA adapter was trained on the causal LM, so it is merged into the base first and the merged
    backbone is copied under the new head (the causal LM's output layer is not used by a reward model).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = ctx.cfg
    model_dir, init, tokenizer, dtype = ctx.model_source(" with a reward head")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1, dtype=dtype)
    # The head pools the last token that is not padding, so the model must know which token pads.
    model.config.pad_token_id = tokenizer.pad_token_id
    speedups.padding_free(model, ctx.device["kind"])
    if init is not None:
        from peft import PeftModel
        causal = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        merged = PeftModel.from_pretrained(causal, str(init)).merge_and_unload()
        model.base_model.load_state_dict(merged.base_model.state_dict())
    if cfg.tuning == "full":
        return model, tokenizer, None
    from peft import LoraConfig
    lora = cfg.lora
    # SEQ_CLS makes PEFT train and save the new head (`score`) in full next to the adapters.
    return model, tokenizer, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                        target_modules=lora.target_modules, task_type="SEQ_CLS")


def _pair(row: dict) -> dict:
    keep = ("role", "content")
    out = {key: [{k: m[k] for k in keep} for m in row[key]] for key in ("prompt", "chosen", "rejected")}
    if row.get("margin") is not None:
        out["margin"] = float(row["margin"])
    return out


def train(ctx) -> None:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    cfg: Config = ctx.cfg
    model, tokenizer, peft_config = load_model(ctx)
    ctx.phase(f"reading {cfg.dataset}")
    splits = ctx.dataset_rows()
    rows = [_pair(r) for r in splits["train"]]
    if any("margin" in r for r in rows) and not all("margin" in r for r in rows):
        rows = [{k: v for k, v in r.items() if k != "margin"} for r in rows]  # the collator needs all or none
    train_ds = Dataset.from_list(rows)
    eval_rows = splits.get("validation")
    eval_ds = Dataset.from_list([{k: v for k, v in _pair(r).items() if k != "margin"} for r in eval_rows]) \
        if eval_rows else None
    ctx.phase(f"{len(train_ds)} training pairs" + (f", {len(eval_ds)} validation pairs for pairwise accuracy"
                                                   if eval_ds is not None else
                                                   "; no validation split, so no held-out accuracy "
                                                   "(split the dataset with `tunelab data split`)"))
    args = RewardConfig(**ctx.training_args(has_eval=eval_ds is not None), max_length=cfg.max_length,
                        center_rewards_coefficient=cfg.center_rewards_coefficient)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=peft_config)
    kept = len(trainer.train_dataset)
    if kept == 0 or (eval_ds is not None and len(trainer.eval_dataset) == 0):
        raise UserError(f"key 'max_length': no {'training' if kept == 0 else 'validation'} pair of {cfg.dataset} "
                        f"fits in {cfg.max_length} tokens; raise max_length")
    if kept < len(train_ds):
        ctx.phase(f"{kept} of {len(train_ds)} training pairs fit in max_length {cfg.max_length}; the rest are left out")
    ctx.fit(trainer)
    if eval_ds is not None:
        evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        if not evals or evals[-1]["step"] != trainer.state.global_step:  # the Trainer did not evaluate at the end
            trainer.evaluate()
        last = [h for h in trainer.state.log_history if "eval_accuracy" in h][-1]
        ctx.report(eval_accuracy=last["eval_accuracy"])
        ctx.phase(f"held-out pairwise accuracy {last['eval_accuracy']:.3f}")
    # On a cluster without the workspace (no database) the studio registers it when it pulls final/ back.
    if ctx.db is not None and (name := register(ctx.db, ctx.run_id, ctx.folder / "final")):
        ctx.phase(f"registered the reward model as {name!r}")


def model_name(run_id: str) -> str:
    """The name a full reward run's model is registered under."""
    return f"reward-{run_id}"


def register(db, run_id: str, final: Path) -> str | None:
    """Register a full reward run's model (a LoRA one's adapter loads on its base instead), once; its name."""
    if not (Path(final) / "config.json").exists():
        return None
    from tunelab import models
    name = model_name(run_id)
    if not db.execute("SELECT 1 FROM models WHERE name = ?", [name]).fetchone():
        models.add_local(db, final, name, kind="reward", source=f"run:{run_id}")
    return name


# ---------------------------------------------------------------- using a trained reward model

def reward_dir(ws, run_id: str) -> Path:
    """The `final/` folder of a completed reward run (a whole model, or an adapter with its head).

    Read from the run folder (config.yaml, status.json), not the run manager: a GRPO or RLOO training
    process calls this, and a training process must not touch job state."""
    import yaml

    from tunelab import workspace
    from tunelab.folders import read_status
    folder = Path(ws.runs_dir) / workspace.check_name(run_id, "run")
    if not (folder / "config.yaml").is_file():
        raise UserError(f"no run {run_id!r} (see `tunelab runs list`)")
    method = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("method", "sft")
    if method != "reward":
        raise UserError(f"run {run_id} is a {method!r} run, not a reward model (method: reward)")
    state, final = read_status(folder).get("state"), folder / "final"
    if state != "completed" or not final.is_dir():
        raise UserError(f"run {run_id} is {state or 'not started'} and has no result in {final}")
    return final


def load(db, ws, run_id: str):
    """(model, tokenizer) of a completed reward run, in eval mode; a LoRA one with its adapter merged in."""
    return load_folder(reward_dir(ws, run_id), db=db, ws=ws)


def load_folder(final: Path, base: Path | None = None, db=None, ws=None, dtype=None):
    """(model, tokenizer) from a reward run's final/ (an adapter on `base`, else on the base its config
    names), in eval mode and `dtype` (float32 unless given), with a LoRA adapter merged in; a GRPO or RLOO
    run gets both as its inputs."""
    from tunelab import evaluate
    model, tokenizer = evaluate.load_reward_model(Path(final), db, ws, base=base, dtype=dtype)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model, tokenizer


def score(db, ws, run_id: str, prompt: str | list[dict], response: str, max_length: int = 1024) -> float:
    """The reward run `run_id` gives `response` as the answer to `prompt` (a string or chat messages)."""
    from tunelab import evaluate
    from tunelab.generate import to_messages
    model, tokenizer = load(db, ws, run_id)
    return evaluate.reward_scores(model, tokenizer, [to_messages(prompt)], [response], 1, max_length)[0]
