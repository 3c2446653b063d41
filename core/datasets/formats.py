"""Reading files and turning their records into canonical rows, naming every bad record.

A file is read into `Record`s (its line or record number, and the decoded object). The format is
detected from the records' fields (or given), then each record is normalized to the canonical row of
its kind (TRL's conversational formats, see core/datasets/__init__.py) or rejected with a `Problem`.
Import must stay fast (100k rows in seconds), so the work per record is plain dict handling.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

FORMATS = ("alpaca", "sharegpt", "messages", "prompt-completion", "preference", "kto", "prompts")
KIND_OF_FORMAT = {"alpaca": "sft", "sharegpt": "sft", "messages": "sft", "prompt-completion": "sft",
                  "preference": "preference", "kto": "kto", "prompts": "prompts"}
FILE_TYPES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's `from` values (incl. LLaMA-Factory's tool roles). A function call is the assistant's
# turn; its JSON text stays as the content so that any chat template renders it.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
MEDIA_FIELDS = ("images", "image", "audios", "audio", "videos", "video")


@dataclass
class Record:
    where: str          # "line 3" or "record 3": what the user finds in their file
    data: object


@dataclass
class Problem:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class Invalid(Exception):
    """One record's problem; caught per record and turned into a Problem."""


# ---------------------------------------------------------------- reading

def file_type(path: Path) -> str:
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path.name}: unsupported file type {path.suffix!r}; use .json, .jsonl, .csv or .parquet")
    return kind


def read_records(path: Path) -> tuple[list[Record], list[Problem]]:
    """The file's records and the ones that could not even be decoded (encoding, not JSON)."""
    kind = file_type(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"{path.name}: the file is empty")
    if kind == "jsonl":
        records, problems = _read_jsonl(raw)
    elif kind == "parquet":
        records, problems = _read_parquet(path), []
    else:
        text = _decode_whole(path, raw)
        records, problems = (_read_json(path, text) if kind == "json" else _read_csv(text)), []
    if not records and not problems:
        raise UserError(f"{path.name}: the file is empty (no records)")
    return records, problems


def _decode_whole(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"{path.name}: line {line}: encoding error: byte 0x{raw[exc.start]:02x} is not UTF-8; "
                        "save the file as UTF-8") from None


def _read_jsonl(raw: bytes) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(where, f"encoding error: byte 0x{line[exc.start]:02x} at column {exc.start + 1} "
                                           "is not UTF-8"))
            continue
        try:
            records.append(Record(where, json.loads(text)))
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, f"not JSON: {exc.msg} (column {exc.colno})"))
    return records, problems


def _read_json(path: Path, text: str) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path.name}: line {exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(data, dict):
        # {"data": [...]} and the like: one key holding the list of records.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(data) == 1 and lists:
            data = lists[0]
        else:
            data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path.name}: wrong type: the top level must be a list of records, "
                        f"not {type(data).__name__}")
    return [Record(f"record {i}", r) for i, r in enumerate(data, start=1)]


def _read_csv(text: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text))
    records = []
    start = 2  # the header is line 1
    for row in reader:
        # Cells holding JSON (a messages list, a tools list) are decoded; everything else stays text.
        data = {k: _maybe_json(v) for k, v in row.items() if k is not None}
        records.append(Record(f"line {start}", data))
        start = reader.line_num + 1
    return records


def _maybe_json(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path.name}: not a readable Parquet file: {exc}") from None
    return [Record(f"record {i}", r) for i, r in enumerate(rows, start=1)]


# ---------------------------------------------------------------- mapping and detection

def parse_mapping(pairs: list[str] | dict | None) -> dict[str, str]:
    """`["target=source", ...]` (CLI, page) into {target: source}."""
    if not pairs:
        return {}
    if isinstance(pairs, dict):
        return dict(pairs)
    out = {}
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise UserError(f"--map {pair!r}: write it as target=source, e.g. instruction=question")
        out[target.strip()] = source.strip()
    return out


def apply_mapping(data: dict, mapping: dict[str, str]) -> dict:
    if not mapping:
        return data
    data = dict(data)
    for target, source in mapping.items():
        if source not in data:
            raise Invalid(f"missing field {source!r} (mapped to {target!r})")
        data[target] = data.pop(source)
    return data


def detect_one(data: dict) -> str | None:
    """The format a record's fields say it is, or None."""
    keys = data.keys()
    if "chosen" in keys and "rejected" in keys:
        return "preference"
    if "label" in keys and ("messages" in keys or "completion" in keys):
        return "kto"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        msgs = data["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) and "from" in msgs[0]:
            return "sharegpt"
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "user":
            return "prompts"
        return "messages"
    if "prompt" in keys and "completion" in keys:
        return "prompt-completion"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "prompt" in keys or "instruction" in keys:
        return "prompts"
    return None


def detect(records: list[Record], mapping: dict[str, str], name: str) -> str:
    """The most common format among the first records; names the columns when none fits."""
    votes: Counter = Counter()
    columns: Counter = Counter()
    for rec in records[:200]:
        if not isinstance(rec.data, dict):
            continue
        try:
            data = apply_mapping(rec.data, mapping)
        except Invalid:
            continue
        columns.update(data.keys())
        fmt = detect_one(data)
        if fmt:
            votes[fmt] += 1
    if not votes:
        cols = ", ".join(c for c, _ in columns.most_common(20)) or "(none)"
        raise UserError(f"{name}: cannot tell the format from the columns {cols}; pass --format "
                        f"({'|'.join(FORMATS)}) and map columns with --map target=source")
    return votes.most_common(1)[0][0]


# ---------------------------------------------------------------- normalization

def _text(data: dict, field: str, required: bool = True) -> str | None:
    value = data.get(field)
    if value is None:
        if required:
            raise Invalid(f"missing field {field!r}")
        return None
    if not isinstance(value, str):
        raise Invalid(f"wrong type: {field!r} must be a string, not {type(value).__name__}")
    return value


def _nonempty(value: str, what: str) -> str:
    if not value.strip():
        raise Invalid(f"empty message: {what} is empty")
    return value


def _check_media(data: dict) -> None:
    for field in MEDIA_FIELDS:
        if data.get(field):
            what = "audio is" if field.startswith("audio") else f"{field.rstrip('s')}s are"
            raise Invalid(f"{what} not supported: field {field!r} (tunelab trains text-only models)")


def _messages(value, field: str) -> list[dict]:
    """A list of {role, content} (or ShareGPT {from, value}) messages, checked one by one."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise Invalid(f"wrong type: {field!r} must be a list of messages, not {type(value).__name__}")
    if not value:
        raise Invalid(f"empty message: {field!r} has no messages")
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise Invalid(f"wrong type: {where} must be an object, not {type(msg).__name__}")
        if "from" in msg:
            role = SHAREGPT_ROLES.get(msg["from"])
            if role is None:
                raise Invalid(f"unknown role {msg['from']!r} in {where}; known: {', '.join(SHAREGPT_ROLES)}")
            content = msg.get("value")
            key = "value"
        else:
            if "role" not in msg:
                raise Invalid(f"missing field 'role' in {where}")
            role = msg["role"]
            if role not in ROLES:
                raise Invalid(f"unknown role {role!r} in {where}; known: {', '.join(ROLES)}")
            content = msg.get("content")
            key = "content"
        if content is None:
            raise Invalid(f"missing field {key!r} in {where}")
        if isinstance(content, list):
            kinds = {p.get("type") for p in content if isinstance(p, dict)}
            media = kinds & {"image", "image_url", "audio", "input_audio", "video"}
            if media:
                raise Invalid(f"{sorted(media)[0]} content is not supported in {where} (text only)")
            raise Invalid(f"wrong type: {where}.{key} must be a string, not a list")
        if not isinstance(content, str):
            raise Invalid(f"wrong type: {where}.{key} must be a string, not {type(content).__name__}")
        _nonempty(content, f"{where} ({role})")
        out.append({"role": role, "content": content})
    return out


# Which roles may follow which: system first (optional), then user; tool results follow a call.
NEXT_ROLES = {None: {"system", "user"}, "system": {"user"}, "user": {"assistant"},
              "assistant": {"user", "tool"}, "tool": {"assistant", "tool"}}


def _check_order(msgs: list[dict], field: str, last: str | None) -> None:
    prev = None
    for i, m in enumerate(msgs):
        role = m["role"]
        allowed = NEXT_ROLES[prev]
        if role not in allowed:
            after = f"after {prev!r}" if prev else "first"
            raise Invalid(f"roles out of order: {field}[{i}] is {role!r} {after}; expected "
                          f"{' or '.join(sorted(allowed))}")
        prev = role
    if last and prev != last:
        raise Invalid(f"roles out of order: the last message of {field!r} must be the {last}'s, not {prev!r}")


def _tools(data: dict) -> list | None:
    tools = data.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise Invalid("wrong type: 'tools' must be a list of tool schemas (JSON)") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise Invalid(f"wrong type: 'tools' must be a list, not {type(tools).__name__}")
    return tools


def _sft(msgs: list[dict], data: dict) -> dict:
    _check_order(msgs, "messages", last="assistant")
    row = {"messages": msgs}
    tools = _tools(data)
    if tools:
        row["tools"] = tools
    return row


def _with_system(data: dict, msgs: list[dict]) -> list[dict]:
    system = _text(data, "system", required=False)
    if system and system.strip() and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + msgs
    return msgs


def norm_alpaca(data: dict) -> dict:
    instruction = _text(data, "instruction")
    extra = _text(data, "input", required=False)
    output = _nonempty(_text(data, "output"), "'output'")
    msgs = []
    history = data.get("history") or []
    if not isinstance(history, list):
        raise Invalid(f"wrong type: 'history' must be a list of [instruction, output] pairs, "
                      f"not {type(history).__name__}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise Invalid(f"wrong type: history[{i}] must be a pair of strings [instruction, output]")
        msgs += [{"role": "user", "content": _nonempty(pair[0], f"history[{i}][0]")},
                 {"role": "assistant", "content": _nonempty(pair[1], f"history[{i}][1]")}]
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    msgs += [{"role": "user", "content": _nonempty(prompt, "'instruction'")},
             {"role": "assistant", "content": output}]
    return _sft(_with_system(data, msgs), data)


def norm_sharegpt(data: dict) -> dict:
    field = "conversations" if "conversations" in data else "messages"
    if field not in data:
        raise Invalid("missing field 'conversations'")
    return _sft(_with_system(data, _messages(data[field], field)), data)


def norm_messages(data: dict) -> dict:
    if "messages" not in data:
        raise Invalid("missing field 'messages'")
    return _sft(_messages(data["messages"], "messages"), data)


def _turns(value, field: str, role: str) -> list[dict]:
    """A string (one `role` message) or a message list."""
    if value is None:
        raise Invalid(f"missing field {field!r}")
    if isinstance(value, str):
        return [{"role": role, "content": _nonempty(value, repr(field))}]
    return _messages(value, field)


def norm_prompt_completion(data: dict) -> dict:
    prompt = _turns(data.get("prompt"), "prompt", "user")
    completion = _turns(data.get("completion"), "completion", "assistant")
    return _sft(_with_system(data, prompt + completion), data)


def _prompt_of(data: dict) -> list[dict]:
    """The prompt turns: `prompt`, ShareGPT `conversations`, or alpaca `instruction` (+ `input`)."""
    if "prompt" in data:
        msgs = _turns(data["prompt"], "prompt", "user")
    elif "conversations" in data:
        msgs = _messages(data["conversations"], "conversations")
    elif "instruction" in data:
        instruction = _text(data, "instruction")
        extra = _text(data, "input", required=False)
        msgs = [{"role": "user", "content": _nonempty(f"{instruction}\n\n{extra}" if extra and extra.strip()
                                                      else instruction, "'instruction'")}]
    else:
        raise Invalid("missing field 'prompt'")
    msgs = _with_system(data, msgs)
    _check_order(msgs, "prompt", last="user")
    return msgs


def _answer(value, field: str) -> list[dict]:
    msgs = _turns(value, field, "assistant")
    if msgs[0]["role"] != "assistant":
        raise Invalid(f"roles out of order: {field!r} must start with the assistant's turn, not {msgs[0]['role']!r}")
    return msgs


def norm_preference(data: dict) -> dict:
    for field in ("chosen", "rejected"):
        if field not in data:
            raise Invalid(f"missing field {field!r}")
    has_prompt = any(k in data for k in ("prompt", "conversations", "instruction"))
    if not has_prompt:
        # Implicit prompt (Anthropic HH style): chosen and rejected are whole conversations.
        chosen, rejected = _messages(data["chosen"], "chosen"), _messages(data["rejected"], "rejected")
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        if not prompt:
            raise Invalid("missing field 'prompt' (and chosen/rejected share no prompt turns)")
        _check_order(prompt, "prompt", last="user")
        for name, msgs in (("chosen", chosen), ("rejected", rejected)):
            if msgs[0]["role"] != "assistant":
                raise Invalid(f"roles out of order: {name!r} must continue with the assistant's turn")
    else:
        prompt = _prompt_of(data)
        chosen, rejected = _answer(data["chosen"], "chosen"), _answer(data["rejected"], "rejected")
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    margin = data.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise Invalid(f"wrong type: 'margin' must be a number, not {type(margin).__name__}")
        row["margin"] = float(margin)
    return row


LABELS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _label(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABELS:  # CSV cells are text
        return LABELS[value.strip().lower()]
    raise Invalid(f"wrong type: 'label' must be true or false, not {value!r}")


def norm_kto(data: dict) -> dict:
    if "label" not in data:
        raise Invalid("missing field 'label'")
    label = _label(data["label"])
    if "messages" in data and "completion" not in data:
        msgs = _messages(data["messages"], "messages")
        _check_order(msgs, "messages", last="assistant")
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        prompt, completion = msgs[:last_user + 1], msgs[last_user + 1:]
    else:
        prompt = _prompt_of(data)
        completion = _answer(data.get("completion"), "completion")
    return {"prompt": prompt, "completion": completion, "label": label}


def norm_prompts(data: dict) -> dict:
    if "messages" in data and not any(k in data for k in ("prompt", "instruction")):
        msgs = _messages(data["messages"], "messages")
        # A conversation that ends with answers gives its prompt: everything before the last assistant turn.
        while msgs and msgs[-1]["role"] in ("assistant", "tool"):
            msgs = msgs[:-1]
        _check_order(msgs, "messages", last="user")
        return {"prompt": msgs}
    return {"prompt": _prompt_of(data)}


NORMALIZE = {"alpaca": norm_alpaca, "sharegpt": norm_sharegpt, "messages": norm_messages,
             "prompt-completion": norm_prompt_completion, "preference": norm_preference, "kto": norm_kto,
             "prompts": norm_prompts}


def normalize(records: list[Record], fmt: str, mapping: dict[str, str],
              progress=None) -> tuple[list[dict], list[Problem]]:
    """Canonical rows for the good records and a Problem for every bad one."""
    norm = NORMALIZE[fmt]
    rows, problems = [], []
    total = len(records)
    step = max(1, total // 50)
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec.data, dict):
                raise Invalid(f"wrong type: a record must be an object, not {type(rec.data).__name__}")
            data = apply_mapping(rec.data, mapping)
            _check_media(data)
            rows.append(norm(data))
        except Invalid as exc:
            problems.append(Problem(rec.where, str(exc)))
        if progress and i % step == 0:
            progress(i / total, f"validating {i:,}/{total:,}")
    return rows, problems


def check_canonical(rows: list[dict], kind: str) -> None:
    """Rows handed in by code (feedback export) must already be canonical; raise naming the first bad one."""
    fmt = {"sft": "messages", "preference": "preference", "kto": "kto", "prompts": "prompts"}.get(kind)
    if fmt is None:
        raise UserError(f"unknown dataset kind {kind!r}; known: sft, preference, kto, prompts")
    _, problems = normalize([Record(f"row {i}", r) for i, r in enumerate(rows, start=1)], fmt, {})
    if problems:
        raise UserError(f"{len(problems)} bad rows; first: {problems[0]}")
