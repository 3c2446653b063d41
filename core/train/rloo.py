"""Online RL with TRL's RLOOTrainer: REINFORCE with a leave-one-out baseline (each answer's reward minus the
mean reward of the other answers to the same prompt), a KL penalty to the reference, and PPO-style clipping.
Same keys, data and reward model as grpo.py, which explains both."""
from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.train import grpo

LABEL = "PPO family: RLOO"


@dataclass
class Config(grpo.Config):
    method: str = field(default="rloo", metadata={"help": "Training method: a module in core/train/."})
    beta: float = field(default=0.05, metadata={
        "help": "Weight of the KL penalty to the reference (the starting policy); 0 drops the reference. "
                "0.05 is TRL's RLOO default.", "min": 0.0})
    normalize_advantages: bool = field(default=False, metadata={
        "help": "Scale the leave-one-out advantages to mean 0 and std 1 over each sampled batch. Off, the step "
                "size follows the reward model's scale: small reward differences give small updates."})


resolve = grpo.resolve


def train(ctx) -> None:
    from trl import RLOOConfig, RLOOTrainer
    grpo.online_rl(ctx, RLOOConfig, RLOOTrainer, normalize_advantages=ctx.cfg.normalize_advantages)
