"""Batched sampling with the chat template, for the CLI, the playground and labeling campaigns.

Prompts are padded on the left so that a whole batch decodes together; on CPU this gives several
times the tokens/s of one prompt at a time (bench/generate.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab import precision


@dataclass
class SamplingSettings:
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per answer.", "min": 1})
    temperature: float = field(default=0.7, metadata={"help": "0 means greedy decoding.", "min": 0.0})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass.", "min": 0.0, "max": 1.0})
    seed: int = field(default=0, metadata={"help": "Same seed, same settings and same prompts give the same answers."})
    system_prompt: str | None = field(default=None, metadata={"help": "Prepended as a system turn when set."})

    def to_dict(self) -> dict:
        return asdict(self)


def load(model_dir: Path, adapter: Path | None = None, merge: bool = True):
    """Model and tokenizer, in eval mode, in precision.inference_dtype(), with the adapter applied when given.

    The adapter is merged into the weights by default: unmerged all-linear LoRA layers generated ~9x
    slower on CPU (117 s against 13 s for 8 answers of 96 tokens, SmolLM2-135M). Keep it unmerged
    (`merge=False`) to switch it off later with `disable_adapter()`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=precision.inference_dtype())
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def to_messages(prompt: str | list[dict], system_prompt: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def generate(model, tokenizer, prompts: list[str | list[dict]], settings: SamplingSettings | None = None,
             batch_size: int = 8, progress=None) -> list[str]:
    """One answer per prompt (a string or a list of chat messages), in the prompts' order."""
    settings = settings or SamplingSettings()
    texts = [tokenizer.apply_chat_template(to_messages(p, settings.system_prompt), tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    # Sort by length so each batch pads little; restore order at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        texts_out = decode_batch(model, tokenizer, batch["input_ids"], batch["attention_mask"], settings, start)
        for i, text in zip(idx, texts_out):
            answers[i] = text
        if progress:
            progress(min(start + batch_size, len(order)) / len(order), f"{min(start + batch_size, len(order))}/{len(order)} answers")
    return answers  # type: ignore[return-value]


def decode_batch(model, tokenizer, input_ids, attention_mask, settings: SamplingSettings, offset: int = 0,
                 cache=None) -> list[str]:
    """The answers to one left-padded batch of prompt tokens. `cache` may hold the prompts' keys and
    values but their last token's (evaluate.answers_and_loss has them from scoring), so only that token and the
    answer are computed here. The seed is settings.seed + offset, the batch's first row in sorted order."""
    import torch

    greedy = settings.temperature <= 0
    torch.manual_seed(settings.seed + offset)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
            cache=cache, max_new_tokens=settings.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else settings.temperature, top_p=None if greedy else settings.top_p,
            top_k=None, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, input_ids.shape[1]:]]


def answer_plan(plan: dict, on_answers, progress=None, batch_size: int = 8) -> None:
    """Sample the answers a campaign's generation plan asks for (feedback.generation.generation_plan: the
    prompts, the sampling settings, and per model its folders and the sample indices still missing), calling
    `on_answers(spec, sample, prompt_ids, texts, settings)` as each (model, sample) ends. It reads only the
    plan, never the database, so a cluster without the workspace runs it too (core/remote.py)."""
    import gc

    base = SamplingSettings(**plan["settings"])
    prompt_ids = [pid for pid, _ in plan["prompts"]]
    messages = [m for _, m in plan["prompts"]]
    units = plan["n_models"] * plan["samples"]  # every (model, sample), done or not: progress counts them all
    for m in plan["models"]:
        model, tokenizer = load(Path(m["model"]), Path(m["adapter"]) if m["adapter"] else None)
        for s in m["samples"]:
            k = m["index"] * plan["samples"] + s
            settings = SamplingSettings(**{**asdict(base), "seed": base.seed + s})

            def report(f: float, msg: str, k=k, spec=m["spec"], s=s) -> None:
                if progress:
                    progress((k + f) / units, f"{spec} sample {s + 1}: {msg}")
            report(0.0, "generating")
            texts = generate(model, tokenizer, messages, settings, batch_size=batch_size, progress=report)
            on_answers(m["spec"], s, prompt_ids, texts, settings)
        del model, tokenizer
        gc.collect()
