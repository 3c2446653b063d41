"""Supervised fine-tuning (SFT) with TRL's SFTTrainer: full, LoRA or QLoRA.

The data is the dataset version's canonical `messages` rows, rendered by the model's own chat template.
Loss is on assistant tokens only by default. TRL computes that from the template's
`{% generation %}` markers; most templates have none, so, in this order:
  1. the template already has markers: use it;
  2. TRL ships a marked training template for this model family: TRL swaps it in;
  3. a plain ChatML template (SmolLM2, the tiny test model, many others): we add the markers around
     each assistant turn's content and its `<|im_end|>` (`mark_chatml`); the rendered text is unchanged;
  4. otherwise, each conversation becomes prompt (every turn before the last assistant turn) +
     completion (that turn), and TRL's completion-only loss trains the last assistant turn only.
The chosen way is written to train.log and status.json (`loss_on`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunelab.train import compiling, speedups
from tunelab.train.config import RunConfig


@dataclass
class Config(RunConfig):
    method: str = field(default="sft", metadata={"help": "Training method: a module in core/train/."})
    max_length: int = field(default=512, metadata={
        "help": "Longest tokenized sequence; longer conversations are cut at the end. With packing, the length "
                "of each packed row.", "min": 16})
    packing: bool = field(default=True, metadata={
        "help": "Pack several conversations into each max_length row (best-fit decreasing, padding-free, no "
                "attention between them): no step computes padding. With gradient checkpointing off, 1.4-1.6x the real "
                "tokens/s of TRL's defaults on CPU (bench/train_throughput.py: tuned against plain)."})
    attn_implementation: str = field(default="auto", metadata={
        "help": "Attention kernel. auto: flash_attention_2 on a GPU that has it installed; else, with packing, "
                "packed_sdpa (one SDPA call per packed conversation instead of one masked SDPA over the whole "
                "packed row, which computes every pair of tokens: 1.4x real tokens/s on CPU, same loss); else "
                "sdpa.", "choices": ("auto", "packed_sdpa", "sdpa", "eager", "flash_attention_2")})
    compile: str = field(default="auto", metadata={
        "help": "Compile each decoder block (torch.compile, regional; core/train/compiling.py), its code kept in "
                "the workspace's compile cache. SmolLM2-135M LoRA on 2 idle CPU cores (bench/cpu_limit.py): steady "
                "steps 1.24x faster than eager (0.59 of the matmul peak against 0.47); the first step takes 31 s "
                "against eager's 14 s on a cold cache (40-90 s on a loaded machine), 15 s on a warm one. on: "
                "always; off: never; auto: only once a completed compiled run of the same model, LoRA shape and "
                "attention has warmed the cache (a cold compile costs more than a short run gains).",
        "choices": compiling.CHOICES})
    assistant_only_loss: bool = field(default=True, metadata={
        "help": "Compute the loss on the assistant's tokens only, not on the user's and system's."})

    dataset_kinds = ("sft",)


# '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' inside {{ }}, where
# the newline is a real one or an escaped one.
_CHATML_TURN = re.compile(
    r"\{\{-?\s*'<\|im_start\|>'\s*\+\s*message\[(['\"])role\1\]\s*\+\s*'(\n|\\n)'\s*\+\s*"
    r"message\[(['\"])content\3\]\s*\+\s*'<\|im_end\|>'\s*\+\s*'(?:\n|\\n)'\s*-?\}\}")
_CHATML_TURN_CONCAT = re.compile(  # the same with '<|im_end|>\n' written as one literal
    r"\{\{-?\s*'<\|im_start\|>'\s*\+\s*message\[(['\"])role\1\]\s*\+\s*'(\n|\\n)'\s*\+\s*"
    r"message\[(['\"])content\3\]\s*\+\s*'<\|im_end\|>(?:\n|\\n)'\s*-?\}\}")


def mark_chatml(template: str | None) -> str | None:
    """A ChatML template with `{% generation %}` around each assistant turn's content and `<|im_end|>`.

    Renders the same text as the original; None when the template is not the plain ChatML per-turn form.
    """
    if not template or re.search(r"\{%-?\s*generation\s*-?%\}", template):
        return None
    for pattern in (_CHATML_TURN, _CHATML_TURN_CONCAT):
        m = pattern.search(template)
        if m:
            nl = m.group(2)
            marked = ("{% if message['role'] == 'assistant' %}"
                      f"{{{{ '<|im_start|>assistant{nl}' }}}}{{% generation %}}"
                      "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
                      f"{{{{ '{nl}' }}}}{{% else %}}{m.group(0)}{{% endif %}}")
            return template[:m.start()] + marked + template[m.end():]
    return None


def loss_plan(tokenizer) -> tuple[str, str | None]:
    """(how the loss is masked, the template to train with or None for prompt-completion)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if template and has_generation_markers(template):
        return "assistant tokens (the chat template's generation markers)", template
    try:
        patched = get_training_chat_template(tokenizer)
        if patched:
            return "assistant tokens (TRL's training template for this model family)", patched
    except ValueError:  # TRL has no training template for this one
        pass
    marked = mark_chatml(template)
    if marked:
        return "assistant tokens (ChatML template with generation markers added by tunelab)", marked
    return ("the last assistant turn of each conversation only (this chat template has no generation "
            "markers and no known training variant, so conversations are split into prompt and completion)"), None


def _messages(row: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def _prompt_completion(row: dict) -> dict:
    msgs = _messages(row)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return {"prompt": msgs[:last], "completion": [msgs[last]]}


def attention(cfg: Config, device: dict) -> str:
    """The attention implementation `auto` stands for, on this device."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    from transformers.utils import is_flash_attn_2_available
    if device["kind"] == "cuda" and is_flash_attn_2_available():
        return "flash_attention_2"
    return speedups.PACKED_SDPA if cfg.packing else "sdpa"


def train(ctx) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg: Config = ctx.cfg
    model, tokenizer, peft_config = ctx.load_model()
    attn = attention(cfg, ctx.device)
    if attn == speedups.PACKED_SDPA:
        speedups.register_packed_sdpa()
    model.set_attn_implementation(attn)
    ctx.phase(f"reading {cfg.dataset}")
    splits = ctx.dataset_rows()
    original_template = tokenizer.chat_template

    how, template = "all tokens", None
    if cfg.assistant_only_loss:
        how, template = loss_plan(tokenizer)
    as_prompt_completion = cfg.assistant_only_loss and template is None
    if template is not None:
        tokenizer.chat_template = template
    to_row = _prompt_completion if as_prompt_completion else (lambda r: {"messages": _messages(r)})
    train_ds = Dataset.from_list([to_row(r) for r in splits["train"]])
    eval_rows = splits.get("validation")
    eval_ds = Dataset.from_list([to_row(r) for r in eval_rows]) if eval_rows else None
    ctx.phase(f"loss on {how}; attention {attn}; {len(train_ds)} training rows"
              + (f", {len(eval_ds)} validation rows" if eval_ds is not None else ", no validation split"))
    ctx.report(loss_on=how, attention=attn)

    args = SFTConfig(
        **ctx.training_args(has_eval=eval_ds is not None),
        max_length=cfg.max_length,
        packing=cfg.packing,
        assistant_only_loss=cfg.assistant_only_loss and not as_prompt_completion,
        completion_only_loss=True if as_prompt_completion else None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config)
    compiled = compile_blocks(ctx, trainer.model, attn)
    # The saved result carries the model's own template; the markers only mattered for the loss mask.
    ctx.fit(trainer, restore=lambda: setattr(tokenizer, "chat_template", original_template))
    if compiled:
        compiling.mark_warm(*compiled, run=ctx.run_id)


def compile_blocks(ctx, model, attn: str) -> tuple | None:
    """Compile the decoder blocks when cfg.compile asks for it; (cache folder, key) to mark warm after the run,
    or None when eager. Without a workspace (a remote cluster) nothing is cached, and auto stays eager."""
    cfg: Config = ctx.cfg
    cache = ctx.ws.compile_cache_dir if ctx.ws is not None else None
    key = compiling.cache_key(model, attention=attn, gradient_checkpointing=cfg.gradient_checkpointing)
    on = compiling.wanted(cfg.compile, cache, key)
    ctx.report(compiled=on)
    if not on:
        return None
    if cache is not None:
        compiling.use_cache(cache)
    blocks = compiling.compile_blocks(model)
    ctx.phase(f"compiling {blocks} decoder blocks ({'warm' if compiling.is_warm(cache, key) else 'cold'} cache)")
    return (cache, key) if cache is not None else None
