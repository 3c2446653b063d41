"""External judgments in: Chatbot Arena battles and AlpacaEval annotations become an imported campaign.

The file is read by the dataset importer's reader (`formats.read_records`: JSON, JSONL, CSV or
Parquet), so a broken line is named as it is on import; each parser then checks its own fields.
"""
from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

from tunelab import db as dbmod
from tunelab.datasets import formats
from tunelab.errors import UserError
from tunelab.feedback.campaigns import (CampaignConfig, as_messages, as_text, insert_campaign, insert_pair,
                                     insert_prompt, insert_response)
from tunelab.feedback.votes import CHOICE_OF, write_vote


SAMPLE_SOURCE = "import:sample"  # a campaign of sample votes (tunelab demo's), not people's


def _records(path: Path, name: str) -> Iterator[tuple[str, dict]]:
    """("<file> record N", record) for each record of the file, N counting from 1."""
    for number, rec in enumerate(formats.read_records(path, name), start=1):
        yield f"{name} record {number}", rec.data


def _conversation_split(conv, where: str, field: str) -> tuple[list[dict], str]:
    if not isinstance(conv, list) or not conv:
        raise UserError(f"{where}: expected a conversation ending with an assistant turn")
    try:
        msgs = formats._messages(conv, field)
    except formats.Invalid as exc:
        raise UserError(f"{where}: {exc}") from None
    if msgs[-1]["role"] != "assistant":
        raise UserError(f"{where}: expected a conversation ending with an assistant turn")
    return msgs[:-1], msgs[-1]["content"]


def _text_field(r: dict, key: str, where: str) -> str:
    if not isinstance(r[key], str):
        raise UserError(f"{where}: field {key!r} must be text, not {type(r[key]).__name__}")
    return r[key]


def _tstamp(value, where: str) -> float:
    if value is None or value == "":
        return time.time()
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: field 'tstamp' is {value!r}; expected a Unix time in seconds") from None
    if not math.isfinite(out):
        raise UserError(f"{where}: field 'tstamp' is {value!r}; expected a Unix time in seconds")
    return out or time.time()


def _parse_arena(path: Path, name: str) -> list[dict]:
    out = []
    for where, r in _records(path, name):
        for k in ("model_a", "model_b", "winner"):
            if k not in r:
                raise UserError(f"{where}: missing field {k!r}")
        model_a, model_b = _text_field(r, "model_a", where), _text_field(r, "model_b", where)
        if not isinstance(r["winner"], str) or r["winner"] not in CHOICE_OF:
            raise UserError(f"{where}: field 'winner' is {r['winner']!r}; expected one of {', '.join(CHOICE_OF)}")
        if "conversation_a" in r:
            prompt, text_a = _conversation_split(r["conversation_a"], f"{where} field 'conversation_a'", "conversation_a")
            prompt_b, text_b = _conversation_split(r.get("conversation_b"), f"{where} field 'conversation_b'",
                                                   "conversation_b")
            if prompt_b != prompt:
                raise UserError(f"{where}: conversation_a and conversation_b have different prompts")
        elif all(k in r for k in ("prompt", "response_a", "response_b")):
            prompt, text_a, text_b = as_messages(r["prompt"]), as_text(r["response_a"]), as_text(r["response_b"])
        else:
            raise UserError(f"{where}: needs conversation_a/conversation_b or prompt/response_a/response_b")
        out.append({"prompt": prompt, "model_a": model_a, "model_b": model_b, "text_a": text_a,
                    "text_b": text_b, "choice": CHOICE_OF[r["winner"]], "strength": None, "left_is_a": True,
                    "judge": str(r.get("judge") or Path(name).stem), "tstamp": _tstamp(r.get("tstamp"), where)})
    return out


def _parse_alpaca_eval(path: Path, name: str) -> tuple[list[dict], int]:
    """AlpacaEval annotations: preference 1 (output_1 wins), 2 (output_2 wins), fractional in between
    (1.5 is a tie; nearer 1 or 2 leans that way, strength 'much' beyond 0.25 from the middle), 0 a
    draw in older files, null no judgment (skipped and counted)."""
    out, skipped = [], 0
    for where, r in _records(path, name):
        for k in ("instruction", "output_1", "output_2", "preference"):
            if k not in r:
                raise UserError(f"{where}: missing field {k!r}")
        pref = r["preference"]
        if pref is None or (isinstance(pref, float) and math.isnan(pref)):
            skipped += 1
            continue
        try:
            pref = float(pref)
        except (TypeError, ValueError):
            raise UserError(f"{where}: field 'preference' is {pref!r}; expected 1, 2, a number between, or null") from None
        if pref == 0:
            choice, strength = "tie", None
        elif not 1 <= pref <= 2:
            raise UserError(f"{where}: field 'preference' is {pref}; expected 1, 2, a number between, or null")
        else:
            lean = pref - 1.5   # below 0 leans to output_1
            choice = "tie" if abs(lean) < 1e-9 else "a" if lean < 0 else "b"
            strength = None if choice == "tie" else 2 if abs(lean) >= 0.25 else 1
        prompt = _text_field(r, "instruction", where)
        if r.get("input"):
            prompt += f"\n\n{_text_field(r, 'input', where)}"
        text_a, text_b = _text_field(r, "output_1", where), _text_field(r, "output_2", where)
        out.append({"prompt": as_messages(prompt), "model_a": str(r.get("generator_1") or "output_1"),
                    "model_b": str(r.get("generator_2") or "output_2"), "text_a": text_a,
                    "text_b": text_b, "choice": choice, "strength": strength, "left_is_a": None,
                    "judge": str(r.get("annotator") or Path(name).stem), "tstamp": time.time()})
    return out, skipped


def import_judgments(db, path: str | Path, fmt: str, name: str, source_name: str | None = None,
                     sample: bool = False) -> dict:
    """Bring in Arena battles or AlpacaEval annotations as (or into) an imported campaign.

    `sample`: the file holds votes written as sample data (the demo's), not cast by people; the campaign's
    source says so (SAMPLE_SOURCE) and the ratings of all campaigns leave it out (feedback.battles).

    Identical (prompt, answers, models) share one pair, so several judges of the same comparison
    count toward agreement. Each judge name becomes one annotator with a negative id; a record without
    one is judged by the file (`source_name`, the name of an upload saved under another, or its name).
    """
    path = Path(path)
    label = source_name or path.name
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if fmt == "arena":
        records, skipped = _parse_arena(path, label), 0
    elif fmt == "alpaca_eval":
        records, skipped = _parse_alpaca_eval(path, label)
    else:
        raise UserError(f"format {fmt!r}: expected arena or alpaca_eval")
    if not records:
        raise UserError(f"{label}: no judgments to import")
    with dbmod.transaction(db):
        row = db.execute("SELECT id, source FROM campaigns WHERE name = ?", [name]).fetchone()
        if row and not row[1].startswith("import:"):
            raise UserError(f"campaign {name!r} was generated here; import into a new campaign name")
        models = sorted({r["model_a"] for r in records} | {r["model_b"] for r in records})
        if row:
            cid = row[0]
            known = json.loads(db.execute("SELECT models_json FROM campaigns WHERE id = ?", [cid]).fetchone()[0])
            db.execute("UPDATE campaigns SET models_json = ? WHERE id = ?", [json.dumps(sorted(set(known) | set(models))), cid])
        else:
            cid = insert_campaign(db, name, SAMPLE_SOURCE if sample else f"import:{fmt}", models,
                                  CampaignConfig(samples=1, overlap=1), {}, f"{fmt}:{label}", "ready", None)
            db.execute("UPDATE campaigns SET progress = 1, progress_message = 'imported' WHERE id = ?", [cid])
        judge_ids = {r[1]: r[0] for r in db.execute(
            "SELECT DISTINCT annotator_id, annotator FROM votes WHERE campaign_id = ?", [cid])}
        next_id = min([0, *judge_ids.values()]) - 1
        prompt_ids = {r[1]: r[0] for r in db.execute(
            "SELECT id, messages_json FROM campaign_prompts WHERE campaign_id = ?", [cid])}
        idx = len(prompt_ids)
        added = updated = 0
        for r in records:
            key = json.dumps(r["prompt"])
            if key not in prompt_ids:
                prompt_ids[key] = insert_prompt(db, cid, idx, r["prompt"])
                idx += 1
            pid = prompt_ids[key]
            ra, rb = _response_id(db, pid, r["model_a"], r["text_a"]), _response_id(db, pid, r["model_b"], r["text_b"])
            pair = db.execute("SELECT id FROM pairs WHERE response_a = ? AND response_b = ?", [ra, rb]).fetchone()
            pair_id = pair[0] if pair else insert_pair(db, cid, pid, ra, rb, None, None, random.random())
            if r["judge"] not in judge_ids:
                judge_ids[r["judge"]], next_id = next_id, next_id - 1
            uid = judge_ids[r["judge"]]
            if write_vote(db, pair_id, cid, uid, r["judge"], r["choice"], r["strength"], r["left_is_a"],
                          r["model_a"] if r["left_is_a"] else None, None, r["tstamp"]):
                added += 1
            else:
                updated += 1
    return {"campaign": name, "format": fmt, "votes_added": added, "votes_updated": updated, "skipped": skipped}


def _response_id(db, prompt_id: int, model: str, text: str) -> int:
    row = db.execute("SELECT id FROM responses WHERE prompt_id = ? AND model = ? AND text = ?",
                     [prompt_id, model, text]).fetchone()
    if row:
        return row[0]
    sample = db.execute("SELECT coalesce(max(sample), -1) + 1 FROM responses WHERE prompt_id = ? AND model = ?",
                        [prompt_id, model]).fetchone()[0]
    return insert_response(db, prompt_id, model, sample, text)

