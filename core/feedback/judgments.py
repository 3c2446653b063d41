"""Judges and their verdicts: the rows a non-human annotator writes, kept apart from people's votes.

A judge belongs to one campaign and has a kind: `reward` (a tunelab reward-model run), `chat` (a chat
model registered here, prompted as a pairwise judge) or `endpoint` (an OpenAI-compatible server).
Its verdict on a pair is one `judgments` row in pair terms ('a' means response A won), with a
`margin` that says how sure it was and, for judges that read both answers in a prompt, the verdict
in each order (`first_a`, `first_b`), so position consistency can be measured. These rows never
enter human agreement; the leaderboard and exports take them only when asked for source `judge`
or `both`. `write_judgment` is the one INSERT of a verdict, as `votes.write_vote` is of a vote.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from tunelab.errors import UserError
from tunelab.feedback.campaigns import rows
from tunelab.feedback.votes import CHOICES

KINDS = ("reward", "chat", "endpoint")


@dataclass
class Judge:
    id: int
    campaign_id: int
    name: str
    kind: str
    spec: dict
    created_at: float


def insert_judge(db, campaign_id: int, name: str, kind: str, spec: dict) -> Judge:
    """Record a judge for the campaign, or return the one of that name if its kind and spec match (a
    judge run again continues); a different judge under a taken name is refused."""
    if kind not in KINDS:
        raise UserError(f"judge kind {kind!r}: expected one of {', '.join(KINDS)}")
    name = name.strip()
    if not name:
        raise UserError("judge name: must not be empty")
    found = get_judge(db, campaign_id, name, missing_ok=True)
    if found is not None:
        if (found.kind, found.spec) != (kind, spec):
            raise UserError(f"judge {name!r} already exists in this campaign as {found.kind} {found.spec}; "
                            "choose another name")
        return found
    db.execute("INSERT INTO judges(campaign_id, name, kind, spec_json, created_at) VALUES (?, ?, ?, ?, ?)",
               [campaign_id, name, kind, json.dumps(spec, sort_keys=True), time.time()])
    return get_judge(db, campaign_id, name)


def get_judge(db, campaign_id: int, name: str, missing_ok: bool = False) -> Judge | None:
    row = db.execute("SELECT id, campaign_id, name, kind, spec_json, created_at FROM judges "
                     "WHERE campaign_id = ? AND name = ?", [campaign_id, name]).fetchone()
    if row is None:
        if missing_ok:
            return None
        known = ", ".join(r[0] for r in db.execute("SELECT name FROM judges WHERE campaign_id = ? ORDER BY name",
                                                   [campaign_id]))
        raise UserError(f"judge {name!r} does not exist in this campaign; judges: {known or '(none)'}")
    return Judge(id=row[0], campaign_id=row[1], name=row[2], kind=row[3], spec=json.loads(row[4]),
                 created_at=row[5])


def list_judges(db, campaign_id: int) -> list[Judge]:
    return [get_judge(db, campaign_id, r[0]) for r in
            db.execute("SELECT name FROM judges WHERE campaign_id = ? ORDER BY id", [campaign_id]).fetchall()]


def write_judgment(db, judge: Judge, pair_id: int, choice: str, margin: float | None = None,
                   first_a: str | None = None, first_b: str | None = None, cast_at: float | None = None) -> None:
    """The judge's verdict on a pair, in pair terms; a second verdict on the same pair replaces the first."""
    for field, value in (("choice", choice), ("first_a", first_a), ("first_b", first_b)):
        if value is not None and value not in CHOICES:
            raise UserError(f"judgment {field} {value!r}: expected one of {', '.join(CHOICES)}")
    db.execute(
        "INSERT INTO judgments(pair_id, campaign_id, judge_id, choice, margin, first_a, first_b, cast_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id, judge_id) DO UPDATE SET choice = excluded.choice, "
        "margin = excluded.margin, first_a = excluded.first_a, first_b = excluded.first_b, cast_at = excluded.cast_at",
        [pair_id, judge.campaign_id, judge.id, choice, margin, first_a, first_b,
         time.time() if cast_at is None else cast_at])


def judgment_rows(db, campaign_id: int, judge: str | None = None) -> list[dict]:
    """The campaign's non-gold judgments (of one judge, by name, or all) with their pair's models and
    answers, oldest first; `judge` is the judge's name."""
    where, params = ("AND g.name = ?", [campaign_id, judge]) if judge else ("", [campaign_id])
    return rows(db, f"""
        SELECT j.*, g.name AS judge, g.kind AS judge_kind, p.triaged_by, p.prompt_id,
               ra.model AS model_a, rb.model AS model_b, ra.text AS text_a, rb.text AS text_b
        FROM judgments j JOIN judges g ON g.id = j.judge_id JOIN pairs p ON p.id = j.pair_id
        JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
        WHERE j.campaign_id = ? AND p.gold IS NULL {where} ORDER BY j.cast_at, j.id""", params)
