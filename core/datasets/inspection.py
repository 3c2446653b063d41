"""Looking at a dataset the way the model will: token lengths with a model's tokenizer, turn and
role counts, search, and a row rendered through the chat template with the trained tokens marked.

The assistant mask is computed by rendering prefixes of the conversation: the characters that the
template adds between "the conversation up to this assistant turn, with the generation prompt" and
"the conversation including it" are that turn's answer (and its end-of-turn marker), which is what
TRL's assistant-only loss trains on. This works with any chat template, tagged or not.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tunelab.errors import UserError

HIST_BINS = 30


def conversations(row: dict) -> list[list[dict]]:
    """The full conversations a canonical row holds: one for sft/kto/prompts, two for a preference pair."""
    if "messages" in row:
        return [row["messages"]]
    if "chosen" in row:
        return [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
    if "completion" in row:
        return [row["prompt"] + row["completion"]]
    return [row["prompt"]]


def row_text(row: dict) -> str:
    """All message contents of a row, for dedup and search."""
    seen, parts = set(), []
    for conv in conversations(row):
        for m in conv:
            key = (m["role"], m["content"])
            if key not in seen:  # a preference pair's shared prompt counts once
                seen.add(key)
                parts.append(m["content"])
    return "\n".join(parts)


def prompt_messages(row: dict) -> list[dict]:
    """The prompt turns of any canonical row: for sft, the messages before the last assistant turn."""
    if "prompt" in row:
        return row["prompt"]
    msgs = row["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last]


def load_tokenizer(db, ws, model: str):
    """The tokenizer of a registered model (transformers is imported only here)."""
    from transformers import AutoTokenizer

    from tunelab import models
    path = models.model_path(db, ws, model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer.chat_template:
        raise UserError(f"model {model!r} has no chat template, so token lengths of chats cannot be measured")
    return tokenizer


def _render(tokenizer, messages: list[dict], tools=None, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def token_lengths(rows: list[dict], tokenizer, progress=None, batch: int = 512) -> list[int]:
    """Chat-templated length of each row in tokens; a preference pair counts its longer side."""
    texts, owner = [], []
    for i, row in enumerate(rows):
        only_prompt = "messages" not in row and "chosen" not in row and "completion" not in row
        for conv in conversations(row):
            texts.append(_render(tokenizer, conv, row.get("tools"), generation_prompt=only_prompt))
            owner.append(i)
    lengths = [0] * len(rows)
    for start in range(0, len(texts), batch):
        ids = tokenizer(texts[start:start + batch], add_special_tokens=False)["input_ids"]
        for j, seq in enumerate(ids):
            row = owner[start + j]
            lengths[row] = max(lengths[row], len(seq))
        if progress:
            progress(min(1.0, (start + batch) / len(texts)), f"tokenizing {min(start + batch, len(texts)):,}")
    return lengths


def length_stats(lengths: list[int], max_length: int) -> dict:
    """Histogram bins (for a chart) and how many rows are longer than max_length (TRL truncates them)."""
    if not lengths:
        return {"rows": 0, "over_max_length": 0, "max_length": max_length, "bins": []}
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // HIST_BINS))
    counts = Counter((n - lo) // width for n in lengths)
    bins = [{"from": lo + b * width, "to": lo + (b + 1) * width - 1, "rows": counts.get(b, 0)}
            for b in range((hi - lo) // width + 1)]
    ordered = sorted(lengths)
    return {"rows": len(lengths), "min": lo, "max": hi, "mean": round(sum(lengths) / len(lengths), 1),
            "median": ordered[len(ordered) // 2], "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max_length": max_length, "over_max_length": sum(n > max_length for n in lengths), "bins": bins}


def turn_stats(rows: list[dict]) -> dict:
    """How many messages each role has, and how many turns (messages) rows have."""
    roles: Counter = Counter()
    turns: Counter = Counter()
    for row in rows:
        conv = conversations(row)[0]
        roles.update(m["role"] for m in conv)
        turns[len(conv)] += 1
    return {"roles": dict(roles), "turns": {k: turns[k] for k in sorted(turns)},
            "rows_with_system": sum(1 for r in rows if conversations(r)[0][0]["role"] == "system")}


def search(rows: list[dict], query: str, limit: int | None = None) -> list[int]:
    """Indices of rows whose text contains `query` (case-insensitive)."""
    q = query.lower().strip()
    hits = [i for i, r in enumerate(rows) if not q or q in row_text(r).lower()]
    return hits[:limit] if limit else hits


def trained_spans(tokenizer, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The templated text and the character spans of assistant turns (what assistant-only loss trains)."""
    full = _render(tokenizer, messages, tools)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], tools, generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[:i + 1], tools)
        if not full.startswith(upto) or not upto.startswith(before):
            raise UserError("the chat template renders a conversation's prefixes differently from the whole "
                            "(it rewrites earlier turns), so trained tokens cannot be marked for this row")
        spans.append((len(before), len(upto)))
    return full, spans


def render_tokens(tokenizer, row: dict, assistant_only: bool = True) -> list[tuple[str, bool]]:
    """The chat-templated text of a row's (first) conversation as (token text, trained) pieces.
    With assistant_only=False every token is trained (plain language-model loss)."""
    conv = conversations(row)[0]
    only_prompt = "messages" not in row and "chosen" not in row and "completion" not in row
    if only_prompt:
        text = _render(tokenizer, conv, row.get("tools"), generation_prompt=True)
        spans = []
    else:
        text, spans = trained_spans(tokenizer, conv, row.get("tools"))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = []
    for start, end in enc["offset_mapping"]:
        trained = (not assistant_only and not only_prompt) or any(s <= start < e for s, e in spans)
        pieces.append((text[start:end], trained))
    return pieces


def dataset_overview(version, split: str = "train") -> dict:
    """Rows, kind, splits and turn/role counts: the numbers `data show` and the page print first."""
    rows = version.load(split)
    return {**version.summary(), "turns": turn_stats(rows), "files": {s: str(p) for s, p in version.files.items()},
            "size_bytes": sum(Path(p).stat().st_size for p in version.files.values())}
