"""Reading files and turning their records into canonical rows, naming every bad record.

A file is read into `Record`s (its line or record number, and the decoded object). The format is
detected from the records' fields (or given), then each record is normalized to the canonical row of
its kind (TRL's conversational formats, see core/datasets/__init__.py) or rejected with a `Problem`.
Import must stay fast (100k rows in seconds), so the work per record is plain dict handling.
"""
from __future__ import annotations

import codecs
import csv
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import UserError

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


def read_records(path: Path, name: str | None = None, on_bad: Callable[[Problem], None] | None = None,
                 progress: Callable[[float], None] | None = None) -> Iterator[Record]:
    """The file's records, one at a time in file order, each a dict. Every reader of rows from a file
    should come through here, so that a broken or hostile file always ends in a UserError naming it.

    JSONL, CSV and Parquet are streamed, so memory does not grow with the file; a .json file is decoded
    whole (JSON has no record boundaries), but its list is parsed record by record. A record that cannot
    be read (not JSON, not UTF-8, not an object, NaN, a lone surrogate, nested too deep) raises
    UserError naming `name` (default: the file name) and the line or record; with `on_bad`, it is handed
    there as a Problem and skipped instead, so that an import can list every bad record. Faults of the
    whole file (empty, not Parquet, a JSON document or CSV that breaks off) always raise.
    `progress(fraction)` hears how far through the file reading is."""
    name = name or path.name
    readers = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    seen = 0
    for where, data in readers[file_type(path)](path, name, progress or (lambda fraction: None)):
        seen += 1
        try:
            if isinstance(data, Invalid):
                raise data
            check_object(data)
        except Invalid as exc:
            if on_bad is None:
                raise UserError(f"{name}: {where}: {exc}") from None
            on_bad(Problem(where, str(exc)))
            continue
        yield Record(where, data)
    if not seen:
        raise UserError(f"{name}: the file is empty (no records)")


def check_object(data) -> None:
    if not isinstance(data, dict):
        raise Invalid(f"wrong type: a record must be an object, not {type_name(data)}")


def type_name(value) -> str:
    """A value's type as JSON calls it, which is what the user wrote."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# NaN and Infinity parse (to floats) so that _check_json can name their field as it refuses them.
_DECODER = json.JSONDecoder(parse_constant=float)
# What may hide a value that _check_json refuses: NaN, Infinity, a float that overflows to inf (a long
# exponent or over 308 digits), a \uD800-\uDFFF escape. Only text that matches is walked, so that a
# clean record costs one regex scan.
_SUSPECT = re.compile(r"NaN|Infinity|[eE][+]?\d{3}|\d{309}|\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
PROGRESS_EVERY = 2000  # records between progress reports


def loads(text: str):
    """json.loads for text from a file: a JSON value, or Invalid saying why not (see _decode and
    _check_json); json.JSONDecodeError passes through, for the caller to place."""
    value = _decode(text, None)[0]
    if _SUSPECT.search(text):
        _check_json(value)
    return value


def _decode(text: str, start: int | None):
    """`(value, end)` of the JSON value at `start`, or of the whole text when `start` is None. Raises
    Invalid where Python's parser fails with a bare exception: nesting deeper than the recursion limit,
    integers longer than sys.get_int_max_str_digits()."""
    try:
        return (_DECODER.decode(text), len(text)) if start is None else _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise Invalid("not JSON that can be read: nested too deeply") from None
    except ValueError:  # int() refuses to convert very long digit strings (it would take quadratic time)
        raise Invalid(f"not JSON that can be read: a number longer than {sys.get_int_max_str_digits()} "
                      "digits") from None


def _checked(value, suspect: bool):
    """`value`, or the Invalid that _check_json raises for it when its text looked suspect."""
    if suspect:
        try:
            _check_json(value)
        except Invalid as exc:
            return exc
    return value


def _check_json(value) -> None:
    """Refuse NaN and Infinity (JSON has neither) and lone surrogates (not Unicode: they cannot be
    written as UTF-8), naming the field."""
    stack = [(value, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    raise Invalid(f"field name {key.encode('unicode_escape').decode()!r} holds a lone "
                                  "surrogate (not valid Unicode)")
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise Invalid(f"field {path or '(top level)'!r} is {json.dumps(value)}: JSON numbers cannot be "
                          "NaN or Infinity; write null or a number")
        elif isinstance(value, str) and (bad := _SURROGATE.search(value)):
            raise Invalid(f"field {path or '(top level)'!r} holds a lone surrogate "
                          f"{bad.group().encode('unicode_escape').decode()} (not valid Unicode)")


def _not_utf8(line: bytes, start: int) -> str:
    """Why `line` (its bytes up to past the bad one at `start`) is not UTF-8, and what to do."""
    utf16 = line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    return (f"encoding error: byte 0x{line[start]:02x} at column {start + 1} is not UTF-8; "
            f"{'the file is UTF-16: ' if utf16 else ''}save the file as UTF-8")


def _lines(path: Path, tick) -> Iterator[tuple[int, str | Invalid]]:
    """(line number, text) of a file read line by line, an Invalid for a line that is not UTF-8."""
    size = max(1, path.stat().st_size)
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            if number % PROGRESS_EVERY == 0:
                tick(fh.tell() / size)
            try:
                yield number, line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, Invalid(_not_utf8(line, exc.start))


def _read_jsonl(path: Path, name: str, tick) -> Iterator[tuple[str, object]]:
    for number, text in _lines(path, tick):
        if isinstance(text, Invalid):
            yield f"line {number}", text
        elif text.strip():
            try:
                yield f"line {number}", _checked(_decode(text, None)[0], _SUSPECT.search(text) is not None)
            except json.JSONDecodeError as exc:
                yield f"line {number}", Invalid(f"not JSON: {exc.msg} (column {exc.colno})")
            except Invalid as exc:
                yield f"line {number}", exc


def _read_json(path: Path, name: str, tick) -> Iterator[tuple[str, object]]:
    """A list of records, {"data": [...]} (one key holding the list), or one record object. A list is
    parsed record by record, so that a bad record is named by its number (and line)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, start = raw.count(b"\n", 0, exc.start) + 1, raw.rfind(b"\n", 0, exc.start) + 1
        raise UserError(f"{name}: line {line}: {_not_utf8(raw[start:exc.end + 1], exc.start - start)}") from None
    del raw
    pos = _WHITESPACE.match(text).end()
    if pos == len(text):
        raise UserError(f"{name}: the file is empty")
    if text[pos] == "[":
        yield from _json_list(text, pos, name, tick)
        return
    try:
        data = _decode(text, None)[0]
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}: line {exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from None
    except Invalid as exc:
        raise UserError(f"{name}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{name}: wrong type: the top level must be a list of records, not {type_name(data)}")
    lists = [v for v in data.values() if isinstance(v, list)]
    suspect = _SUSPECT.search(text) is not None
    for number, record in enumerate(lists[0] if len(data) == 1 and lists else [data], start=1):
        yield f"record {number}", _checked(record, suspect)


def _json_list(text: str, pos: int, name: str, tick) -> Iterator[tuple[str, object]]:
    def place(at: int) -> str:
        return f"line {text.count(chr(10), 0, at) + 1}, column {at - text.rfind(chr(10), 0, at)}"

    pos = _WHITESPACE.match(text, pos + 1).end()
    number = 0
    while not text.startswith("]", pos):
        number += 1
        try:
            value, end = _decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"{name}: line {exc.lineno}: not JSON: {exc.msg} (column {exc.colno})") from None
        except Invalid as exc:  # where the record ends is unknown, so reading stops here
            raise UserError(f"{name}: record {number} ({place(pos)}): {exc}") from None
        yield f"record {number}", _checked(value, _SUSPECT.search(text, pos, end) is not None)
        if number % PROGRESS_EVERY == 0:
            tick(end / len(text))
        pos = _WHITESPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise UserError(f"{name}: {place(pos)}: not JSON: expected ',' or ']' after record {number}")
    pos = _WHITESPACE.match(text, pos + 1).end()
    if pos != len(text):
        raise UserError(f"{name}: {place(pos)}: not JSON: extra data after the list of records")


def _read_csv(path: Path, name: str, tick) -> Iterator[tuple[str, dict]]:
    # A cell may be as long as the file, which import bounds by upload_limit_mb; csv's default is 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), path.stat().st_size + 1))
    reader = csv.DictReader(text for _, text in text_lines(path, name, tick))
    start = 2  # the header is line 1
    try:
        for row in reader:
            # Cells holding JSON (a messages list, a tools list) are decoded; everything else stays text.
            yield f"line {start}", {k: _maybe_json(v) for k, v in row.items() if k is not None}
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{name}: line {reader.line_num}: not CSV: {exc}") from None


def text_lines(path: Path, name: str, tick=None) -> Iterator[tuple[int, str]]:
    """(line number, text with its line end) of a CSV or text file (a prompts .txt); a line that is not
    UTF-8 or holds a NUL byte raises UserError naming it. A CSV record may span lines, so a bad line
    stops the whole file rather than one record."""
    for number, text in _lines(path, tick or (lambda fraction: None)):
        if isinstance(text, Invalid):
            raise UserError(f"{name}: line {number}: {text}")
        if "\0" in text:
            raise UserError(f"{name}: line {number}: a NUL byte at column {text.index(chr(0)) + 1}: not a "
                            "text file (UTF-16?); save it as UTF-8")
        yield number, text


def _maybe_json(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return loads(value)
        except (json.JSONDecodeError, Invalid):
            return value
    return value


def _read_parquet(path: Path, name: str, tick) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq
    try:
        parquet = pq.ParquetFile(path)
        total = max(1, parquet.metadata.num_rows)
        batches = parquet.iter_batches(batch_size=PROGRESS_EVERY)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"{name}: not a readable Parquet file: {exc}") from None
    number = 0
    with parquet:
        while True:
            try:  # row group by row group, so memory does not grow with the file
                batch = next(batches, None)
                rows = [] if batch is None else batch.to_pylist()
            except Exception as exc:
                raise UserError(f"{name}: record {number + 1}: not a readable Parquet file: {exc}") from None
            if batch is None:
                return
            for row in rows:
                number += 1
                yield f"record {number}", row
            tick(number / total)


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
            role = SHAREGPT_ROLES.get(msg["from"]) if isinstance(msg["from"], str) else None
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
            kinds = {p.get("type") for p in content if isinstance(p, dict) and isinstance(p.get("type"), str)}
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
            tools = loads(tools)
        except (json.JSONDecodeError, Invalid):
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
    if margin not in (None, ""):  # an empty CSV cell is no margin
        row["margin"] = _number(margin, "margin")
    return row


def _number(value, field: str) -> float:
    """A finite float. Text that reads as a number counts, since CSV cells are text; NaN and
    Infinity do not (Parquet and pandas write them), nor do ints too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid(f"wrong type: {field!r} must be a number, not {type_name(value)}")
    try:
        number = float(value)
    except ValueError:
        raise Invalid(f"wrong type: {field!r} must be a number, not {value!r}") from None
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        shown = value if isinstance(value, str) else json.dumps(value)
        raise Invalid(f"field {field!r} is {shown[:20]}: it must be a finite number")
    return number


LABELS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _label(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):  # a Parquet/pandas 0/1 column may be float
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


def normalize(records: Iterable[Record], fmt: str, mapping: dict[str, str],
              on_bad: Callable[[Problem], None]) -> Iterator[dict]:
    """Canonical rows for the good records, one at a time; a Problem for every bad one goes to `on_bad`."""
    norm = NORMALIZE[fmt]
    for rec in records:
        try:
            check_object(rec.data)
            data = apply_mapping(rec.data, mapping)
            _check_media(data)
            row = norm(data)
        except Invalid as exc:
            on_bad(Problem(rec.where, str(exc)))
            continue
        yield row


def check_canonical(rows: list[dict], kind: str) -> None:
    """Rows handed in by code (feedback export) must already be canonical; raise naming the first bad one."""
    fmt = {"sft": "messages", "preference": "preference", "kto": "kto", "prompts": "prompts"}.get(kind)
    if fmt is None:
        raise UserError(f"unknown dataset kind {kind!r}; known: sft, preference, kto, prompts")
    problems: list[Problem] = []
    for _ in normalize((Record(f"row {i}", r) for i, r in enumerate(rows, start=1)), fmt, {}, problems.append):
        pass
    if problems:
        raise UserError(f"{len(problems)} bad rows; first: {problems[0]}")
