"""Online RL against a trained reward model with TRL's GRPOTrainer (this module) or RLOOTrainer (rloo.py).

These are the PPO family as TRL maintains it (TRL 1.14 removed the classic PPOTrainer): like PPO they sample
answers from the policy, score them, and take clipped policy-gradient steps with a KL penalty to a frozen
reference, but they need no value model. For each prompt they sample `num_generations` answers and use the
group as the baseline: GRPO subtracts the group's mean reward (and divides by its spread), RLOO subtracts the
mean of the other answers (leave one out).

Prompts come from any dataset version (`tunelab.datasets.prompts_of`): an SFT conversation gives the turns before
its last answer, a preference pair its prompt. The reward is the `reward_model` run's score of prompt + answer,
rendered with that model's chat template. `beta` weighs the KL to the reference (the starting policy; 0 drops
the reference). metrics.jsonl gets per step: reward (mean), reward_std (its spread), kl, and
completions/mean_length, besides the loss.

Batch sizes count answers, not prompts: each optimizer step trains on per_device_train_batch_size x
gradient_accumulation_steps answers, i.e. that divided by num_generations prompts, so it must divide evenly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import UserError
from tunelab.precision import inference_dtype
from tunelab.train import speedups
from tunelab.train.config import RunConfig

LABEL = "PPO family: GRPO"

PROMPT_KINDS = ("sft", "preference", "kto", "prompts")


@dataclass
class Config(RunConfig):
    method: str = field(default="grpo", metadata={"help": "Training method: a module in core/train/."})
    reward_model: str | None = field(default=None, metadata={
        "help": "Run id of a completed reward-model run (method: reward) that scores the sampled answers."})
    learning_rate: float = field(default=1e-5, metadata={
        "help": "Peak learning rate (AdamW); online RL is noisy, so lower than SFT.", "min": 0.0})
    beta: float = field(default=0.04, metadata={
        "help": "Weight of the KL penalty to the reference (the starting policy); 0 drops the reference and "
                "lets the policy drift freely toward whatever the reward model likes.", "min": 0.0})
    num_generations: int = field(default=4, metadata={
        "help": "Answers sampled per prompt; the group is the baseline. At least 2, and it must divide "
                "per_device_train_batch_size x gradient_accumulation_steps.", "min": 2})
    max_completion_length: int = field(default=64, metadata={
        "help": "Most tokens per sampled answer. Sampling is most of the time on CPU (TRL's default is 512).",
        "min": 1})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature: answers in a group must differ for the group baseline to say anything.",
        "min": 0.0})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clipping range of the probability ratio.",
                                                   "min": 0.0})

    dataset_kinds = PROMPT_KINDS


def resolve(db, ws, cfg: Config) -> Config:
    """Check the reward_model run and the batch arithmetic before launch."""
    if not cfg.reward_model:
        raise UserError(f"key 'reward_model': method {cfg.method!r} needs the id of a completed reward-model run "
                        "(train one with method: reward)")
    row = db.execute("SELECT r.method, j.status, r.folder FROM runs r JOIN jobs j ON j.kind = 'train' "
                     "AND j.target = r.id WHERE r.id = ?", [cfg.reward_model]).fetchone()
    if row is None:
        raise UserError(f"key 'reward_model': no run {cfg.reward_model!r}")
    method, status, folder = row
    if method != "reward":
        raise UserError(f"key 'reward_model': run {cfg.reward_model} is a {method!r} run, not a reward model")
    if status != "completed":
        raise UserError(f"key 'reward_model': run {cfg.reward_model} is {status}; it must have completed")
    if cfg.beta and cfg.tuning == "full" and cfg.init_from:
        init = db.execute("SELECT folder FROM runs WHERE id = ?", [cfg.init_from]).fetchone()
        if init and (Path(init[0]) / "final" / "adapter_config.json").exists():
            raise UserError(f"key 'tuning': full tuning from run {cfg.init_from}'s LoRA adapter would take the bare "
                            "base as the KL reference; use tuning: lora (trains that adapter on, with it as the "
                            "reference), or merge it first (`tunelab models merge`) and use the merged model as "
                            "base_model")
    answers = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if answers % cfg.num_generations:
        raise UserError(f"key 'num_generations': {cfg.num_generations} does not divide per_device_train_batch_size "
                        f"x gradient_accumulation_steps = {answers} (the answers per step, sampled in groups of "
                        f"num_generations)")
    return cfg


def online_rl(ctx, config_class, trainer_class, **extra) -> None:
    """Build and run TRL's GRPO or RLOO trainer; both take the same arguments here."""
    from datasets import Dataset

    from tunelab.datasets import prompt_messages
    from tunelab.train import reward

    cfg = ctx.cfg
    model, tokenizer, peft_config = ctx.load_model()
    speedups.padding_free(model, ctx.device["kind"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ctx.phase(f"loading reward model {cfg.reward_model}")
    # Scoring is answering: in the precision models answer in (bf16 on a CPU with native bf16)
    reward_model, reward_tokenizer = reward.load_folder(ctx.inputs["reward"], ctx.inputs.get("reward_base"),
                                                        dtype=inference_dtype())
    speedups.padding_free(reward_model, ctx.device["kind"])
    ctx.phase(f"reading prompts from {cfg.dataset}")
    prompts = [p for p in map(prompt_messages, ctx.dataset_rows().get("train", [])) if p]
    if not prompts:
        raise UserError(f"key 'dataset': {cfg.dataset} has no prompts in its train split")
    train_ds = Dataset.from_list([{"prompt": [{"role": m["role"], "content": m["content"]} for m in p]}
                                  for p in prompts])
    ctx.phase(f"{len(train_ds)} prompts, {cfg.num_generations} answers each, up to {cfg.max_completion_length} "
              "tokens")
    # No evaluation pass: it would sample answers for every validation prompt; the training reward is the signal.
    args = config_class(**ctx.training_args(has_eval=False), beta=cfg.beta, num_generations=cfg.num_generations,
                        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                        epsilon=cfg.epsilon, **extra)
    trainer = trainer_class(model=model, reward_funcs=reward_model, reward_processing_classes=reward_tokenizer,
                            args=args, train_dataset=train_ds, processing_class=tokenizer, peft_config=peft_config)
    if speedups.rollout_copy(trainer.model, inference_dtype()):  # speedups.py, item 3
        ctx.phase(f"rollouts from a merged copy of the policy in {str(inference_dtype()).removeprefix('torch.')}")
    ctx.fit(trainer)


def train(ctx) -> None:
    from trl import GRPOConfig, GRPOTrainer
    online_rl(ctx, GRPOConfig, GRPOTrainer)
