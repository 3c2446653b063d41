"""Eval runs: held-out loss and perplexity, task metrics, reward-model score, forgetting, and the
prompting and RAG baselines that answer "should we fine-tune at all?".

One eval run scores one model spec (a base model, base + a run's LoRA adapter, or a merged model)
on one split of an eval dataset version, optionally as a baseline:
- prompting: the model with a system prompt and k fixed few-shot examples from the train split;
- rag: the same, but the k examples are the train rows BM25 (bm25s) ranks nearest to each prompt.
Both baselines show their examples as earlier user/assistant turns, so the only difference between
them is which examples; a train row whose prompt equals the eval prompt is never shown. On a fine-tuned
spec (NAME+RUN) they are the combinations production systems use, fine-tuned + prompting and
fine-tuned + RAG: rows of their own, `NAME+RUN [rag]`, beside `NAME [rag]` and `NAME+RUN`.

Metrics (all over the evaluated rows):
- loss / perplexity: mean cross-entropy of the reference answer's tokens given the prompt (the
  baseline's prompt, with its examples, for baselines), exp of it for perplexity;
- exact_match, rouge_l, bleu, chrf on a 0–100 scale, from greedy answers: exact match after
  trimming, collapsing whitespace and case-folding; ROUGE-L F1 from rouge-score; corpus BLEU and
  chrF from sacrebleu;
- length_words: mean words per answer;
- reward: mean score of a reward model (a sequence-classification model, or a PEFT adapter on one,
  in `<run>/final`) on prompt + answer;
- forgetting: perplexity on general text (the reference set) and its change against the base
  model in percent, +10 meaning 10% higher perplexity than before training. Prompting and RAG leave
  the weights alone, so their forgetting is 0 on a base model, and the fine-tuned model's on NAME+RUN;
- format: percent of answers that pass every behaviour check (core/checks.py: regular expressions,
  required sections, JSON and JSON Schema, length, refusals, forbidden phrases), and `checks`, the pass
  rate of each. The checks are the eval's own file (`checks`), else the ones its dataset declares.

`launch` records the run in SQLite and queues it as an `eval` job (core/jobs.py: the queue shared with
training, local or Ray); the job process writes progress to `<home>/evals/<id>/status.json`, its log to
`job.log` there, the answers to `outputs.jsonl` there, and the metrics to the eval row.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from dataclasses import asdict, astuple, dataclass, field, fields
from pathlib import Path
from typing import Callable

from tunelab import folders, samples
from tunelab.errors import UserError
from tunelab.models import ModelSpec
from tunelab.workspace import Workspace

Progress = Callable[[float, str], None]

BASELINES = ("prompting", "rag")
GENERAL_TEXT = samples.path("general_text.jsonl")
DEFAULT_SYSTEM_PROMPT = ("Answer the last question in the same style and format as the answers in the "
                         "conversation so far.")


@dataclass
class EvalConfig:
    model: str = field(metadata={"help": "Registered model name (a base or merged model), or NAME+RUN_ID."})
    dataset: str = field(metadata={"help": "Eval dataset, NAME or NAME@VERSION."})
    adapter: str | None = field(default=None, metadata={
        "help": "Id of a completed run on the model whose result to evaluate: its LoRA adapter, or for full "
                "tuning its whole model."})
    baseline: str | None = field(default=None, metadata={
        "help": "prompting (system prompt + k few-shot train examples) or rag (k BM25-retrieved train "
                "examples); empty for the model as it is. With an adapter, the combination: fine-tuned + "
                "prompting or fine-tuned + RAG.", "choices": BASELINES})
    split: str | None = field(default=None, metadata={
        "help": "Split to evaluate; default test, else validation, else train (which a fine-tuned model has seen)."})
    k: int = field(default=3, metadata={"help": "Examples shown by the prompting and RAG baselines."})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System prompt of the baselines."})
    reward: str | None = field(default=None, metadata={"help": "Run id of a reward model to score the answers."})
    reference: str | None = field(default=None, metadata={
        "help": "General-text set for forgetting: a dataset NAME[@VERSION] or a JSONL file with a 'text' field; "
                "default the bundled data/samples/general_text.jsonl."})
    checks: str | None = field(default=None, metadata={
        "help": "Behaviour checks on the answers: a YAML or JSON file listing regex, sections, json (with an "
                "optional JSON Schema), max_length, forbidden and refusal checks; format is the percent of answers "
                "passing all. Default: the checks the eval dataset declares (the bundled sample declares its "
                "'Answer: ... / Steps: 1. ...' format)."})
    limit: int | None = field(default=100, metadata={"help": "Evaluate at most this many rows (and reference texts)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens per generated answer (greedy)."})
    max_length: int = field(default=1024, metadata={"help": "Longest sequence scored for loss; longer prompts are cut on the left."})
    per_device_eval_batch_size: int = field(default=8, metadata={
        "help": "Rows per pass: each batch is scored and answered in one pass. Larger batches generate faster (on "
                "2 CPU cores, 20 answers in one batch took half the time of batches of 8); the loss's logits grow "
                "with batch x reference length x vocabulary, so large models want less."})
    seed: int = field(default=0, metadata={"help": "Seed for choosing the few-shot examples."})
    backend: str = field(default="local", metadata={
        "help": "local (this machine, in the job queue) or ray (a job on the Ray cluster at ray_address; the code "
                "and workspace must be at the same paths there, unless the ray_storage setting names remote "
                "storage).", "choices": ("local", "ray")})
    ray_address: str | None = field(default=None, metadata={
        "help": "backend ray: the cluster's dashboard address (default: the RAY_ADDRESS environment variable)."})

    def __post_init__(self):
        if "+" in self.model and not self.adapter:  # NAME+RUN_ID given as the model
            self.model, self.adapter = astuple(ModelSpec.parse(self.model))
        if self.baseline == "":
            self.baseline = None
        if self.baseline is not None and self.baseline not in BASELINES:
            raise UserError(f"baseline {self.baseline!r}: choose one of {', '.join(BASELINES)}")
        if self.k < 1 and self.baseline:
            raise UserError(f"k: must be at least 1 for the {self.baseline} baseline, got {self.k}")
        if self.backend not in ("local", "ray"):
            raise UserError(f"backend {self.backend!r}: choose local or ray")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit: must be at least 1, got {self.limit}")

    @property
    def spec(self) -> ModelSpec:
        """The model spec shared with campaigns and the Playground: NAME or NAME+RUN_ID."""
        return ModelSpec(self.model, self.adapter)

    @property
    def label(self) -> str:
        """The leaderboard row this run belongs to."""
        return f"{self.spec} [{self.baseline}]" if self.baseline else str(self.spec)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown eval setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# ---------------------------------------------------------------- metrics on text

def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).casefold()


def exact_match(predictions: list[str], references: list[str]) -> float:
    return 100.0 * sum(normalize(p) == normalize(r) for p, r in zip(predictions, references)) / len(references)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return 100.0 * sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


def bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu
    return sacrebleu.corpus_bleu(predictions, [references]).score


def chrf(predictions: list[str], references: list[str]) -> float:
    import sacrebleu
    return sacrebleu.corpus_chrf(predictions, [references]).score


def length_words(predictions: list[str]) -> float:
    return sum(len(p.split()) for p in predictions) / len(predictions)


def text_metrics(predictions: list[str], references: list[str]) -> dict:
    """Exact match, ROUGE-L, BLEU and chrF (0–100) and mean answer length in words."""
    return {"exact_match": exact_match(predictions, references), "rouge_l": rouge_l(predictions, references),
            "bleu": bleu(predictions, references), "chrf": chrf(predictions, references),
            "length_words": length_words(predictions)}


# ---------------------------------------------------------------- examples and baselines

def examples_of(rows: list[dict], kind: str) -> list[tuple[list[dict], str | None]]:
    """(prompt messages, reference answer) per row; prompts-only rows have no reference."""
    out = []
    for i, row in enumerate(rows):
        if kind == "sft":
            msgs = row["messages"]
            last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last is None:
                raise UserError(f"row {i + 1}: an sft row without an assistant turn")
            out.append((msgs[:last], msgs[last]["content"]))
        elif kind == "preference":
            out.append((row["prompt"], row["chosen"][-1]["content"]))
        elif kind == "kto":
            out.append((row["prompt"], row["completion"][-1]["content"] if row["label"] else None))
        else:
            out.append((row["prompt"], None))
    return out


def _prompt_text(prompt: list[dict]) -> str:
    return "\n".join(m["content"] for m in prompt if m["role"] != "system")


def _with_examples(prompt: list[dict], shots: list[tuple[list[dict], str]], system_prompt: str) -> list[dict]:
    own_system = [m["content"] for m in prompt if m["role"] == "system"]
    system = "\n\n".join([system_prompt, *own_system]) if system_prompt else "\n\n".join(own_system)
    turns = [{"role": "system", "content": system}] if system else []
    for shot_prompt, answer in shots:
        turns += [m for m in shot_prompt if m["role"] != "system"]
        turns.append({"role": "assistant", "content": answer})
    return turns + [m for m in prompt if m["role"] != "system"]


def baseline_prompts(baseline: str, prompts: list[list[dict]], pool: list[tuple[list[dict], str]], k: int,
                     system_prompt: str, seed: int = 0) -> list[list[dict]]:
    """The prompts a baseline sends: k examples from `pool` as earlier turns, then the prompt."""
    pool = [(p, a) for p, a in pool if a is not None]
    if not pool:
        raise UserError(f"the {baseline} baseline needs train rows with answers to show as examples")
    keys = [_prompt_text(p) for p, _ in pool]
    out = []
    if baseline == "prompting":
        fixed = random.Random(seed).sample(range(len(pool)), min(len(pool), k + 1))
        for prompt in prompts:
            text = _prompt_text(prompt)
            shots = [pool[i] for i in fixed if keys[i] != text][:k]
            out.append(_with_examples(prompt, shots, system_prompt))
        return out
    import logging

    import bm25s
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(keys, stopwords="en", show_progress=False), show_progress=False)
    texts = [_prompt_text(p) for p in prompts]
    want = min(len(pool), k + 1)
    found, _ = retriever.retrieve(bm25s.tokenize(texts, stopwords="en", show_progress=False), k=want,
                                  show_progress=False)
    for prompt, text, hits in zip(prompts, texts, found):
        # Most relevant last, nearest the question, as retrieved context usually sits.
        shots = [pool[int(i)] for i in hits if keys[int(i)] != text][:k]
        out.append(_with_examples(prompt, shots[::-1], system_prompt))
    return out


# ---------------------------------------------------------------- metrics that need a model

def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _nll(model, sequences: list[tuple[list[int], int]], batch_size: int, progress: Progress | None = None,
         what: str = "") -> tuple[float, int]:
    """Summed cross-entropy and token count over the tokens of each sequence from index `start` on."""
    import torch
    total, count = 0.0, 0
    for done, idx in enumerate(_batches(len(sequences), batch_size)):
        batch = [sequences[i] for i in idx]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, (ids, start) in enumerate(batch):
            input_ids[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
            labels[r, start:len(ids)] = torch.tensor(ids[start:])
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:].to(logits.device)
        loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                 shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((shift_labels != -100).sum())
        if progress:
            progress((done + 1) * batch_size / len(sequences), what)
    return total, count


def _prompt_and_answer_ids(tokenizer, prompt: list[dict], answer: str | None) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (chat template, generation prompt added) and of the answer's turn after it."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    if answer is None:
        return head_ids, []
    whole = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    # The answer's text is what the full conversation adds after the generation prompt.
    tail = whole[len(head):] if whole.startswith(head) else answer
    return head_ids, tokenizer(tail, add_special_tokens=False)["input_ids"]


SHARED_START_MIN = 16  # tokens: a shorter shared start is not worth a forward pass of its own


def _shared_start(heads: list[list[int]]) -> int:
    """How many tokens all `heads` start with, leaving each at least one of its own (generate feeds it)."""
    n = min(map(len, heads)) - 1
    first = heads[0]
    for head in heads[1:]:
        n = next((k for k in range(n) if head[k] != first[k]), n)
    return max(n, 0)


def answers_and_loss(model, tokenizer, prompts: list[list[dict]], references: list[str | None],
                     settings=None, batch_size: int = 8, max_length: int = 1024,
                     progress: Progress | None = None) -> tuple[list[str] | None, float | None]:
    """(greedy answers, mean cross-entropy of the references' tokens given their prompts) in one pass.

    Each batch is one forward pass over prompt + reference, prompts left-padded to end in one column, so
    the keys and values of every prompt are computed once: the loss reads the reference positions' logits
    (the LM head runs on those alone), and the answers are generated from the same cache, cropped back to
    the prompts. On a RAG or few-shot prompt that saves the whole second prompt pass (about a third of an
    eval on CPU). A start that every prompt of a batch shares (the prompting baseline's system prompt and
    fixed examples) is computed once for the batch. Rows whose reference is None are generated but not
    scored; a row longer than `max_length` is scored on its own with the prompt cut on the left (_nll), as
    before. `settings` None scores only; the loss is None when no row is scored."""
    import torch

    from tunelab import generate

    rows = [_prompt_and_answer_ids(tokenizer, p, r) for p, r in zip(prompts, references)]
    alone = [i for i, (head, tail) in enumerate(rows) if references[i] is not None and len(head) + len(tail) > max_length]
    total, count = 0.0, 0
    if alone:
        cut = []
        for i in alone:
            head, tail = rows[i]
            tail = tail[:max_length - 1]
            head = head[max(0, len(head) - (max_length - len(tail))):]
            cut.append((head + tail, len(head)))
        total, count = _nll(model, cut, batch_size)
    # Generating, every row goes through; scoring only, the rows with a reference that fit.
    order = sorted((i for i in range(len(rows)) if settings is not None or (references[i] is not None
                                                                            and i not in alone)),
                   key=lambda i: len(rows[i][0]))
    answers: list[str | None] = [None] * len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        heads = [rows[i][0] for i in idx]
        tails = [[] if i in alone else rows[i][1] for i in idx]
        width_p, width_r = max(map(len, heads)), max(map(len, tails))
        shared = _shared_start(heads) if len(idx) > 1 else 0
        if shared < SHARED_START_MIN:
            shared = 0
        # Columns: the shared start | padding | the rest of each prompt, ending at width_p | its reference.
        input_ids = torch.full((len(idx), width_p + width_r), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full((len(idx), width_r), -100, dtype=torch.long)
        for r, (head, tail) in enumerate(zip(heads, tails)):
            input_ids[r, :shared] = torch.tensor(head[:shared], dtype=torch.long)
            input_ids[r, width_p - len(head) + shared:width_p + len(tail)] = torch.tensor(head[shared:] + tail)
            mask[r, :shared] = 1
            mask[r, width_p - len(head) + shared:width_p + len(tail)] = 1
            labels[r, :len(tail)] = torch.tensor(tail, dtype=torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            cache = None
            if shared:
                cache = model(input_ids=input_ids[:1, :shared].to(model.device), use_cache=True).cache
                cache.batch_repeat_interleave(len(idx))
            out = model(input_ids=input_ids[:, shared:].to(model.device), attention_mask=mask.to(model.device),
                        position_ids=positions[:, shared:].to(model.device), cache=cache,
                        use_cache=settings is not None or bool(shared), logits_to_keep=width_r + 1)
        if width_r:  # the logit at column width_p - 1 + j predicts reference token j
            logits = out.logits[:, :width_r].float()
            labels = labels.to(logits.device)
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                             ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
        if settings is not None:
            cache = out.cache
            try:  # back to the prompts' keys and values but their last token's, which generate feeds again
                cache.crop(-(width_r + 1))
            except RuntimeError:  # a sliding-window or recurrent layer that kept no past: a fresh prefill
                cache = None
            texts = generate.decode_batch(model, tokenizer, input_ids[:, :width_p], mask[:, :width_p], settings,
                                          start, cache=cache)
            for i, text in zip(idx, texts):
                answers[i] = text
        del out
        if progress:
            n = min(start + batch_size, len(order))
            progress(n / len(order), f"{n}/{len(order)} answers" if settings is not None else "held-out loss")
    return (answers if settings is not None else None), (total / count if count else None)  # type: ignore[return-value]


def answer_loss(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8,
                max_length: int = 1024, progress: Progress | None = None) -> float:
    """Mean cross-entropy (nats per token) of each answer given its prompt, chat template applied."""
    return answers_and_loss(model, tokenizer, prompts, answers, None, batch_size, max_length, progress)[1]


def text_perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 512,
                    progress: Progress | None = None) -> float:
    """Perplexity of plain text (no chat template), each text cut to `max_length` tokens."""
    sequences = [(tokenizer(t, add_special_tokens=False)["input_ids"][:max_length], 0) for t in texts]
    sequences = [s for s in sequences if len(s[0]) > 1]
    if not sequences:
        raise UserError("the reference set has no text of two or more tokens")
    total, count = _nll(model, sequences, batch_size, progress, "reference perplexity")
    return math.exp(total / count)


def reward_base(folder: Path, db=None, ws: Workspace | None = None) -> Path | None:
    """The base model folder a reward adapter in `folder` sits on (None for a whole model)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        return None
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    if Path(base).is_dir():
        return Path(base)
    if db is None or not base:
        raise UserError(f"{folder}/adapter_config.json: base model {base!r} is not a folder")
    from tunelab import models
    return models.model_path(db, ws, base)


def load_reward_model(folder: Path, db=None, ws: Workspace | None = None, base: Path | None = None, dtype=None):
    """A sequence-classification model from a folder, or a PEFT adapter on one (on `base`, else the one its
    adapter_config names), in `dtype` (float32 unless given); with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel
        base = str(base or reward_base(folder, db, ws))
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype or torch.float32)
        model = PeftModel.from_pretrained(model, str(folder))
        tokenizer_dir = folder if (folder / "tokenizer_config.json").exists() else Path(base)
    elif (folder / "config.json").exists():
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype or torch.float32)
        tokenizer_dir = folder
    else:
        raise UserError(f"{folder}: neither a model (config.json) nor an adapter (adapter_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # The model pools the last token that is not its pad token, so padding must use that very token.
    if model.config.pad_token_id is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id)
    else:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def reward_scores(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8,
                  max_length: int = 1024) -> list[float]:
    """The reward model's first logit for each prompt + answer conversation."""
    import torch
    texts = []
    for prompt, answer in zip(prompts, answers):
        convo = prompt + [{"role": "assistant", "content": answer}]
        if tokenizer.chat_template:
            texts.append(tokenizer.apply_chat_template(convo, tokenize=False))
        else:
            texts.append("\n".join(f"{m['role']}: {m['content']}" for m in convo))
    tokenizer.padding_side = "right"
    scores = []
    for idx in _batches(len(texts), batch_size):
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length, add_special_tokens=False)
        with torch.no_grad():
            scores += model(**batch).logits[:, 0].float().tolist()
    return scores


def reference_texts(db, ws: Workspace, reference: str | None, limit: int | None) -> tuple[str, list[str]]:
    """(label, texts) of the general-text set: a JSONL file with 'text', or any dataset version."""
    path = Path(reference).expanduser() if reference else GENERAL_TEXT
    if reference is None and not path.exists():
        raise UserError(f"no reference set given and the bundled {path} is missing")
    if path.suffix in (".jsonl", ".json") and path.is_file():
        from tunelab.datasets import formats
        texts = []
        for record in formats.read_records(path):
            if not isinstance(record.data.get("text"), str):
                raise UserError(f"{path.name}: {record.where}: no 'text' field")
            texts.append(record.data["text"])
        label = path.name
    else:
        from tunelab import datasets
        version = datasets.resolve(db, ws, reference)
        texts = []
        for row in version.load_all():
            if isinstance(row.get("text"), str):
                texts.append(row["text"])
            else:
                msgs = row.get("messages") or row.get("prompt", []) + row.get("chosen", row.get("completion", []))
                texts.append("\n".join(m["content"] for m in msgs))
        label = version.ref
    return label, texts[:limit] if limit else texts


# ---------------------------------------------------------------- one eval, in this process

def _base_of_merged(db, model: str) -> str | None:
    """The base model a merged model came from (its source is 'run:<id>'), if known."""
    from tunelab import models
    info = models.get_model(db, model)
    if not info.source.startswith("run:"):
        return None
    from tunelab import runs
    return runs.get(db, info.source.split(":", 1)[1])["base_model"]


def run_eval(db, ws: Workspace, config: EvalConfig, progress: Progress | None = None,
             outputs: Path | None = None) -> dict:
    """Evaluate `config` here and now; returns the metrics. `outputs` receives one JSON line per row."""
    return evaluate_inputs(eval_inputs(db, ws, config), config, progress, outputs)


def eval_inputs(db, ws: Workspace, config: EvalConfig) -> dict:
    """Everything an eval reads, as paths and plain values, so that it runs without the workspace
    (core/remote.py ships these): the dataset version's folder, kind and ref; the model and adapter
    folders; the reward model's folder and base; the reference texts; the base model of a merged or
    fully tuned model (for forgetting); the behaviour checks, as plain declarations."""
    from tunelab import datasets, models
    version = datasets.resolve(db, ws, config.dataset)
    split_files = version.files  # checked against the version's content hash
    path, adapter = config.spec.folders(db, ws)
    reward = None
    if config.reward:
        reward = ws.runs_dir / config.reward / "final"
        if not reward.exists():
            raise UserError(f"reward run {config.reward}: no model at {reward}")
    ref_label, texts = reference_texts(db, ws, config.reference, config.limit)
    merged_from = None if adapter is not None else config.model if config.adapter else _base_of_merged(db, config.model)
    checks_source, declared = declared_checks(db, ws, version, config.checks)
    return {"dataset": next(iter(split_files.values())).parent, "dataset_kind": version.kind,
            "dataset_ref": version.ref, "model": path, "adapter": adapter, "reward": reward,
            "reward_base": reward_base(reward, db, ws) if reward else None, "reference_label": ref_label,
            "reference_texts": texts, "checks": declared, "checks_source": checks_source,
            "merged_from": models.model_path(db, ws, merged_from) if merged_from is not None else None}


def declared_checks(db, ws: Workspace, version, path: str | None) -> tuple[str | None, list[dict] | None]:
    """(where from, declarations) of an eval's behaviour checks: its own file, else the ones its dataset
    declares, which for now are the bundled samples' `<stem>.checks.yaml`, used when the dataset's first
    version was imported from that very sample file (same content hash, whatever it was named); else none."""
    from tunelab import checks, datasets
    if path:
        return Path(path).name, checks.load(path)
    root = datasets.lineage(db, ws, version.ref)[0]
    for sidecar in sorted(Path(samples.__file__).parent.glob("*.checks.yaml")):
        data = sidecar.with_name(sidecar.name.removesuffix(".checks.yaml") + ".jsonl")
        if data.is_file() and hashlib.sha256(data.read_bytes()).hexdigest() == root.source_hash:
            return sidecar.name, checks.load(sidecar)
    return None, None


def evaluate_inputs(inputs: dict, config: EvalConfig, progress: Progress | None = None,
                    outputs: Path | None = None) -> dict:
    """Evaluate `config` on `inputs` (eval_inputs, or copies of them on a cluster); returns the metrics."""
    from tunelab import generate
    from tunelab.train.runtime import dataset_rows

    report = progress or (lambda f, m: None)
    started = time.time()
    splits = dataset_rows(inputs["dataset"])
    ref, kind = inputs["dataset_ref"], inputs["dataset_kind"]
    if config.split and config.split not in splits:
        raise UserError(f"dataset {ref} has no {config.split!r} split; it has {', '.join(splits)}")
    split = config.split or next(s for s in ("test", "validation", "train") if s in splits)
    rows = splits[split][:config.limit] if config.limit else splits[split]
    if not rows:
        raise UserError(f"dataset {ref}: split {split!r} is empty")
    examples = examples_of(rows, kind)
    prompts = [p for p, _ in examples]
    references = [r for _, r in examples]
    scored = [i for i, r in enumerate(references) if r is not None]
    notes = []
    if split == "train":
        notes.append("evaluated on the train split, which a fine-tuned model has seen")
    if config.baseline:
        if split == "train":
            notes.append(f"{config.baseline} examples come from the same rows; a row never sees itself")
        pool = examples_of(splits.get("train", []), kind)
        prompts = baseline_prompts(config.baseline, prompts, pool, config.k, config.system_prompt, config.seed)

    report(0.02, f"loading {config.spec}")
    path, adapter = inputs["model"], inputs["adapter"]
    model, tokenizer = generate.load(path, adapter, merge=False)  # the base perplexity below needs it apart
    bs = config.per_device_eval_batch_size
    ref_label, texts = inputs["reference_label"], inputs["reference_texts"]
    ref_length = min(config.max_length, 512)
    base_ppl = None
    if adapter is not None:
        report(0.03, "base reference perplexity (forgetting)")
        with model.disable_adapter():
            base_ppl = text_perplexity(model, tokenizer, texts, bs, ref_length)
        model = model.merge_and_unload()  # merged weights generate much faster (see generate.load)

    metrics: dict = {"rows": len(rows), "scored_rows": len(scored), "split": split, "dataset": ref,
                     "precision": str(model.dtype).removeprefix("torch.")}  # see precision.inference_dtype
    settings = generate.SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=0.0, seed=config.seed)
    answers, loss = answers_and_loss(model, tokenizer, prompts, references, settings, bs, config.max_length,
                                     lambda f, m: report(0.05 + 0.7 * min(f, 1), f"held-out loss and answers: {m}"))
    if scored:
        metrics.update(loss=loss, perplexity=math.exp(loss))
        metrics.update(text_metrics([answers[i] for i in scored], [references[i] for i in scored]))
    else:
        metrics["length_words"] = length_words(answers)

    passed = None
    if inputs.get("checks"):  # absent from a cluster job's inputs when there are none
        from tunelab import checks
        declared = checks.parse(inputs["checks"], inputs.get("checks_source") or "checks")
        passed = [checks.run(answer, declared) for answer in answers]
        every, each = checks.pass_rates(passed)
        metrics.update(format=every, checks=each, checks_source=inputs.get("checks_source"))

    rewards = None
    if config.reward:
        report(0.72, f"scoring with reward model {config.reward}")
        rm, rm_tok = load_reward_model(inputs["reward"], base=inputs["reward_base"])
        # The reward model judges the answer to the task's own prompt, not the baseline's scaffolding.
        rewards = reward_scores(rm, rm_tok, [p for p, _ in examples], answers, bs, config.max_length)
        metrics["reward"] = sum(rewards) / len(rewards)
        metrics["reward_model"] = config.reward

    report(0.8, "reference perplexity (forgetting)")
    ref_ppl = text_perplexity(model, tokenizer, texts, bs, ref_length, lambda f, m: report(0.8 + 0.15 * min(f, 1), m))
    metrics.update(reference=ref_label, reference_perplexity=ref_ppl)
    # A full-tuning run's model, or a merged one, is compared with the base it was trained from.
    if inputs["merged_from"] is not None:
        base_model, base_tok = generate.load(inputs["merged_from"])
        base_ppl = text_perplexity(base_model, base_tok, texts, bs, ref_length)
    elif base_ppl is None:
        base_ppl = ref_ppl  # the weights are the base model's own (baselines only change the prompt)
    metrics.update(base_reference_perplexity=base_ppl, forgetting=100.0 * (ref_ppl / base_ppl - 1.0))
    metrics.update(notes=notes, seconds=time.time() - started)

    if outputs is not None:
        outputs.parent.mkdir(parents=True, exist_ok=True)
        with open(outputs, "w", encoding="utf-8") as fh:
            for i, (prompt, answer) in enumerate(zip(prompts, answers)):
                fh.write(json.dumps({"prompt": prompt, "reference": references[i], "answer": answer,
                                     "reward": rewards[i] if rewards else None,
                                     "checks": passed[i] if passed else None}) + "\n")
    report(1.0, "done")
    return metrics


# ---------------------------------------------------------------- eval runs in the background (eval jobs)

def evals_dir(ws: Workspace) -> Path:
    return ws.home / "evals"


_SELECT = ("SELECT e.*, j.id AS job_id, j.status, j.error, j.pid, j.started_at, j.finished_at, j.folder AS job_folder "
           "FROM eval_runs e LEFT JOIN jobs j ON j.kind = 'eval' AND j.target = CAST(e.id AS TEXT)")


def _rows(db, where: str, args: list) -> list[dict]:
    from tunelab import jobs
    cur = db.execute(f"{_SELECT} {where}", args)
    cols = [d[0] for d in cur.description]
    out = []
    for r in cur.fetchall():
        row = dict(zip(cols, r))
        row["config"] = json.loads(row.pop("config_json"))
        row["metrics"] = json.loads(row.pop("metrics_json")) if row.get("metrics_json") else None
        row["status"] = row["status"] or "queued"  # recorded, its job not made yet (create, then execute)
        folder = jobs.home(db) / (row.pop("job_folder") or f"evals/{row['id']}")
        report = folders.read_status(folder)
        row["progress"] = 1.0 if row["status"] == "completed" else float(report.get("progress") or 0.0)
        row["message"] = report.get("phase") or row["status"]
        row["log"] = str(folder / "job.log")
        out.append(row)
    return out


def get(db, eval_id: int) -> dict:
    """One eval run: its columns, `config`, `metrics` (None until it completes), and its job's status,
    error, pid, times, progress and message. Changes nothing."""
    found = _rows(db, "WHERE e.id = ?", [int(eval_id)])
    if not found:
        raise UserError(f"no eval run {eval_id}")
    return found[0]


def list_evals(db, dataset: str | None = None, status: str | None = None) -> list[dict]:
    """Eval runs, newest first; `dataset` matches NAME (any version) or NAME@VERSION. Changes nothing."""
    sql, args = "WHERE 1=1", []
    if dataset:
        sql += " AND (e.dataset = ? OR e.dataset LIKE ?)" if "@" not in dataset else " AND e.dataset = ?"
        args += [dataset, f"{dataset}@%"] if "@" not in dataset else [dataset]
    if status:
        sql += " AND COALESCE(j.status, 'queued') = ?"
        args.append(status)
    return _rows(db, sql + " ORDER BY e.id DESC", args)


def create(db, ws: Workspace, config: EvalConfig) -> int:
    """Check the config (so mistakes show now, not in the background) and record the eval run."""
    from tunelab import datasets
    version = datasets.resolve(db, ws, config.dataset)
    config.spec.check(db, ws)
    if config.reward and not (ws.runs_dir / config.reward / "final").exists():
        raise UserError(f"reward run {config.reward}: no model at {ws.runs_dir / config.reward / 'final'}")
    if config.split and config.split not in version.files:
        raise UserError(f"split {config.split!r}: dataset {version.ref} has {', '.join(version.files)}")
    checks_file = None
    if config.checks:  # checked now; the job, in another process and folder, reads it by its full path
        from tunelab import checks
        checks_file = str(Path(config.checks).expanduser().resolve())
        checks.load(checks_file)
    address = config.ray_address
    if config.backend == "ray":
        from tunelab import ray_backend
        address = ray_backend.check_address(address)[0]
    config = EvalConfig.from_dict({**config.to_dict(), "dataset": version.ref, "ray_address": address,
                                   "checks": checks_file})
    cur = db.execute(
        "INSERT INTO eval_runs(label, model, adapter, baseline, dataset, reward, config_json, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [config.label, config.model, config.adapter, config.baseline, version.ref, config.reward,
         json.dumps(config.to_dict()), time.time()])
    (evals_dir(ws) / str(cur.lastrowid)).mkdir(parents=True, exist_ok=True)
    return cur.lastrowid


def launch(db, ws: Workspace, config: EvalConfig) -> int:
    """Record the eval run and queue it as an `eval` job (core/jobs.py); returns its id at once."""
    from tunelab import jobs
    eval_id = create(db, ws, config)
    stored = get(db, eval_id)["config"]  # with the Ray address checked and pinned
    jobs.submit(db, "eval", str(eval_id), evals_dir(ws) / str(eval_id), stored["backend"], stored["ray_address"],
                {"num_cpus": 1} if stored["backend"] == "ray" else None)
    return eval_id


def _job_id(db, eval_id: int) -> int:
    from tunelab import jobs
    job = jobs.find(db, "eval", str(int(eval_id)))
    if job is None:
        raise UserError(f"eval run {eval_id} was never started")
    return job.id


def wait(db, eval_id: int, progress: Progress | None = None, poll_s: float = 0.5,
         timeout_s: float | None = None) -> dict:
    """Block until the eval run ends, feeding `progress`; returns the final row (TimeoutError after `timeout_s`)."""
    from tunelab import jobs
    jobs.wait(db, _job_id(db, eval_id), progress, timeout_s, poll_s)
    return get(db, eval_id)


def stop(db, eval_id: int) -> dict:
    """Stop a queued or running eval run (its whole process group)."""
    from tunelab import jobs
    row = get(db, eval_id)
    if row["status"] not in jobs.ACTIVE:
        raise UserError(f"eval run {eval_id} is already {row['status']}")
    jobs.stop(db, _job_id(db, eval_id))
    return get(db, eval_id)


def _perform(db, ws: Workspace, eval_id: int, progress: Progress) -> None:
    """Evaluate a recorded eval run; the answers go to its folder, the metrics to its row."""
    config = EvalConfig.from_dict(get(db, eval_id)["config"])
    record_metrics(db, eval_id, run_eval(db, ws, config, progress,
                                         outputs=evals_dir(ws) / str(eval_id) / "outputs.jsonl"))


def record_metrics(db, eval_id: int, metrics: dict) -> None:
    """An eval's result in its row: written by its job process, or by the studio for a job that ran on a
    cluster without the workspace (core/remote.py)."""
    db.execute("UPDATE eval_runs SET metrics_json = ? WHERE id = ?", [json.dumps(metrics), eval_id])


def run_job(db, ws: Workspace, target: str, folder: Path) -> tuple[str, str | None]:
    """The `eval` job's entry point: progress goes to the folder's status.json and the job's log."""
    _perform(db, ws, int(target), folders.progress_writer(folder))
    return "completed", None


def execute(db, ws: Workspace, eval_id: int, progress: Progress | None = None) -> dict:
    """Run a recorded eval run in this process, as an eval job; returns the row. The demo does this,
    which saves a process start per eval."""
    from tunelab import jobs
    folder = evals_dir(ws) / str(eval_id)
    write = folders.progress_writer(folder, echo=False)

    def both(fraction: float, message: str) -> None:
        write(fraction, message)
        if progress:
            progress(fraction, message)
    jobs.run_here(db, "eval", str(eval_id), folder, lambda: _perform(db, ws, eval_id, both))
    return get(db, eval_id)
