"""Assignment and votes: annotators claim pairs one at a time and vote on them.

Annotators claim one pair at a time inside BEGIN IMMEDIATE, so concurrent claims never hand out
more than K slots. A claim not voted within `claim_timeout_s` stops counting, and the pair goes
back to the pool. An annotator never gets a pair they already voted on, skipped or abandoned.
UNIQUE(pair_id, annotator_id) on votes makes a repeated submit an update: no vote is ever
duplicated, and none is lost. `write_vote` is the one place a vote is written (by an annotator here,
or by an imported judge).

Vote labels are in pair terms: 'a' means the pair's response A won, whatever side it was shown on.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

from tunelab import db as dbmod, workspace
from tunelab.errors import UserError
from tunelab.feedback.campaigns import rows

CHOICES = ("a", "b", "tie", "both_bad")
SHOWN_CHOICES = ("left", "right", "tie", "both_bad")
STRENGTHS = {1: "slightly", 2: "much"}
# Chatbot Arena's `winner` for each label, and back.
WINNER_OF = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
CHOICE_OF = {v: k for k, v in WINNER_OF.items()}


@dataclass
class Assignment:
    """One pair as one annotator sees it: sides already randomized, model names withheld."""
    id: int
    pair_id: int
    campaign_id: int
    annotator_id: int
    prompt: list[dict]
    left: str
    right: str
    shown_at: float


def claim_timeout(db) -> float:
    return float(workspace.get_setting(db, "claim_timeout_s"))


def next_pair(db, campaign_id: int, annotator_id: int, annotator: str, timeout_s: float | None = None,
              now: float | None = None) -> Assignment | None:
    """The annotator's current pair: the one they hold, else a newly claimed one; None when none is left."""
    timeout_s = claim_timeout(db) if timeout_s is None else timeout_s
    now = time.time() if now is None else now
    # A claim younger than half the timeout still reserves its slot: show it again without a write.
    held = db.execute("SELECT id FROM assignments WHERE campaign_id = ? AND annotator_id = ? AND status = 'open' "
                      "AND claimed_at > ? ORDER BY id LIMIT 1", [campaign_id, annotator_id, now - timeout_s / 2]
                      ).fetchone()
    if held:
        return _assignment(db, held[0])
    with dbmod.transaction(db):
        aid = _claim(db, campaign_id, annotator_id, annotator, now - timeout_s, now)
    return None if aid is None else _assignment(db, aid)


def _claim(db, campaign_id: int, annotator_id: int, annotator: str, cutoff: float, now: float) -> int | None:
    """Inside a write transaction: renew the annotator's open claim if its slot is still free, else
    claim the first pair (in shuffled order) with a free slot. An 'active' campaign first draws the
    model pair (sampling.py) and takes the first free pair of those two models, or a gold pair met
    before it in the same order, so gold pairs stay mixed in. Returns the assignment id."""
    held = db.execute("SELECT a.id, a.pair_id, p.votes_needed, p.n_votes FROM assignments a "
                      "JOIN pairs p ON p.id = a.pair_id WHERE a.campaign_id = ? AND a.annotator_id = ? "
                      "AND a.status = 'open' ORDER BY a.id LIMIT 1", [campaign_id, annotator_id]).fetchone()
    if held:
        aid, pair_id, needed, n_votes = held
        others = db.execute("SELECT count(*) FROM assignments WHERE pair_id = ? AND annotator_id != ? AND "
                            "status = 'open' AND claimed_at > ?", [pair_id, annotator_id, cutoff]).fetchone()[0]
        if needed is None or n_votes + others < needed:
            db.execute("UPDATE assignments SET claimed_at = ? WHERE id = ?", [now, aid])
            return aid
        # Came back after the timeout and others filled the pair meanwhile.
        db.execute("UPDATE assignments SET status = 'expired' WHERE id = ?", [aid])
    params = {"c": campaign_id, "u": annotator_id, "cutoff": cutoff}
    row = None
    if db.execute("SELECT sampling FROM campaigns WHERE id = ?", [campaign_id]).fetchone()[0] == "active":
        from tunelab.feedback import sampling  # here: sampling counts verdicts with model_pair_counts below
        available = db.execute(_MODEL_PAIRS, params).fetchall()
        if available:
            params["ma"], params["mb"] = sampling.draw_model_pair(db, campaign_id, available)
            row = db.execute(_CANDIDATE_OF_MODELS, params).fetchone()
    if row is None:
        row = db.execute(_CANDIDATE + " ORDER BY p.position LIMIT 1", params).fetchone()
    if row is None:
        return None
    return db.execute("INSERT INTO assignments(pair_id, campaign_id, annotator_id, annotator, left_is_a, "
                      "claimed_at, shown_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'open')",
                      [row[0], campaign_id, annotator_id, annotator, random.random() < 0.5, now, now]).lastrowid


# Pairs this annotator has never been given that still have a free slot: K minus votes minus live claims.
_FREE = """p.campaign_id = :c
  AND NOT EXISTS (SELECT 1 FROM assignments o WHERE o.pair_id = p.id AND o.annotator_id = :u)
  AND (p.votes_needed IS NULL OR p.n_votes + (SELECT count(*) FROM assignments o WHERE o.pair_id = p.id
       AND o.status = 'open' AND o.claimed_at > :cutoff) < p.votes_needed)
"""
_CANDIDATE = "SELECT p.id FROM pairs p WHERE " + _FREE
# The model pairs (as the pair stores them) with a non-gold pair this annotator may claim; the
# n_votes test first spares the claim counts of full pairs (half the time of this query).
_MODEL_PAIRS = """
SELECT DISTINCT ra.model, rb.model FROM pairs p JOIN responses ra ON ra.id = p.response_a
JOIN responses rb ON rb.id = p.response_b
WHERE p.gold IS NULL AND (p.votes_needed IS NULL OR p.n_votes < p.votes_needed) AND """ + _FREE
# The first pair by position, among the gold pairs and those of the drawn model pair (:ma, :mb).
_CANDIDATE_OF_MODELS = _CANDIDATE + """
  AND (p.gold IS NOT NULL OR ((SELECT model FROM responses WHERE id = p.response_a) = :ma
                              AND (SELECT model FROM responses WHERE id = p.response_b) = :mb))
ORDER BY p.position LIMIT 1
"""


def _assignment(db, aid: int) -> Assignment:
    row = db.execute(
        "SELECT a.id, a.pair_id, a.campaign_id, a.annotator_id, a.left_is_a, a.shown_at, cp.messages_json, "
        "ra.text, rb.text FROM assignments a JOIN pairs p ON p.id = a.pair_id "
        "JOIN campaign_prompts cp ON cp.id = p.prompt_id JOIN responses ra ON ra.id = p.response_a "
        "JOIN responses rb ON rb.id = p.response_b WHERE a.id = ?", [aid]).fetchone()
    left, right = (row[7], row[8]) if row[4] else (row[8], row[7])
    return Assignment(id=row[0], pair_id=row[1], campaign_id=row[2], annotator_id=row[3],
                      prompt=json.loads(row[6]), left=left, right=right, shown_at=row[5])


def cast_vote(db, assignment_id: int, choice: str, strength: int | None = None, now: float | None = None) -> None:
    """Record a vote in the terms the annotator saw (left, right, tie, both_bad).

    Strength is 1 (slightly better) or 2 (much better) for left/right. A second submit for the same
    pair by the same annotator updates the vote. A claim that timed out still counts: no vote is lost.
    """
    strength = _check_choice(choice, strength)
    now = time.time() if now is None else now
    with dbmod.transaction(db):
        _record_vote(db, assignment_id, choice, strength, now)


def vote_and_next(db, assignment_id: int, choice: str, strength: int | None = None,
                  timeout_s: float | None = None, now: float | None = None,
                  annotator_id: int | None = None) -> Assignment | None:
    """`cast_vote`, then claim the annotator's next pair, in one transaction: one labeling step.

    Unlike `cast_vote`, only the pair on the annotator's screen counts: their open claim (and theirs,
    when `annotator_id` is given). A second key press sent before the page drew the next pair names the
    pair just voted on: it changes nothing, like a double click, and the next pair stays unvoted.
    A pair skipped, expired, taken back or someone else's is refused with a UserError.
    """
    strength = _check_choice(choice, strength)
    timeout_s = claim_timeout(db) if timeout_s is None else timeout_s
    now = time.time() if now is None else now
    with dbmod.transaction(db):
        row = db.execute("SELECT campaign_id, annotator_id, annotator, status FROM assignments WHERE id = ?",
                         [assignment_id]).fetchone()
        if row is None or row[3] not in ("open", "voted") or annotator_id not in (None, row[1]):
            raise UserError(f"assignment {assignment_id} is not the pair on your screen "
                            f"({'gone' if row is None else row[3]}); the vote was not counted")
        cid, uid, uname, status = row
        if status == "open":
            _record_vote(db, assignment_id, choice, strength, now)
        aid = _claim(db, cid, uid, uname, now - timeout_s, now)
    return None if aid is None else _assignment(db, aid)


def _check_choice(choice: str, strength: int | None) -> int | None:
    if choice not in SHOWN_CHOICES:
        raise UserError(f"choice {choice!r}: expected one of {', '.join(SHOWN_CHOICES)}")
    if choice not in ("left", "right"):
        return None
    strength = 1 if strength is None else strength
    if strength not in STRENGTHS:
        raise UserError(f"strength {strength!r}: expected 1 (slightly) or 2 (much)")
    return strength


def _record_vote(db, assignment_id: int, choice: str, strength: int | None, now: float) -> None:
    """Inside a write transaction: the annotator's vote on their assignment, translated from sides to
    pair terms; the assignment is then voted."""
    row = db.execute("SELECT a.pair_id, a.campaign_id, a.annotator_id, a.annotator, a.left_is_a, a.shown_at, "
                     "ra.model, rb.model FROM assignments a JOIN pairs p ON p.id = a.pair_id "
                     "JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b "
                     "WHERE a.id = ?", [assignment_id]).fetchone()
    if row is None:
        raise UserError(f"assignment {assignment_id} does not exist (undone or never claimed)")
    pair_id, cid, uid, uname, left_is_a, shown_at, model_a, model_b = row
    label = {"left": "a" if left_is_a else "b", "right": "b" if left_is_a else "a"}.get(choice, choice)
    write_vote(db, pair_id, cid, uid, uname, label, strength, left_is_a, model_a if left_is_a else model_b,
               shown_at, now)
    db.execute("UPDATE assignments SET status = 'voted' WHERE id = ?", [assignment_id])


def write_vote(db, pair_id: int, campaign_id: int, annotator_id: int, annotator: str, choice: str,
               strength: int | None, left_is_a: bool | None, left_model: str | None, shown_at: float | None,
               cast_at: float) -> bool:
    """Inside a write transaction: insert the vote, or update the one this annotator already cast on
    the pair (UNIQUE(pair_id, annotator_id)), keeping the pair's n_votes in step. `choice` is in pair
    terms; `shown_at` None (an imported judgment) leaves `seconds` unknown. True when it is new."""
    existed = db.execute("SELECT 1 FROM votes WHERE pair_id = ? AND annotator_id = ?",
                         [pair_id, annotator_id]).fetchone()
    db.execute(
        "INSERT INTO votes(pair_id, campaign_id, annotator_id, annotator, choice, strength, left_is_a, left_model, "
        "shown_at, cast_at, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id, annotator_id) "
        "DO UPDATE SET choice = excluded.choice, strength = excluded.strength, cast_at = excluded.cast_at, "
        "seconds = excluded.seconds",
        [pair_id, campaign_id, annotator_id, annotator, choice, strength, left_is_a, left_model, shown_at, cast_at,
         None if shown_at is None else max(0.0, cast_at - shown_at)])
    if not existed:
        db.execute("UPDATE pairs SET n_votes = n_votes + 1 WHERE id = ?", [pair_id])
    return not existed


def skip(db, assignment_id: int) -> None:
    """Pass on a pair: it goes back to the pool for others and never returns to this annotator."""
    db.execute("UPDATE assignments SET status = 'skipped' WHERE id = ? AND status = 'open'", [assignment_id])


def undo_last(db, campaign_id: int, annotator_id: int, now: float | None = None) -> Assignment | None:
    """Take back the annotator's latest vote in the campaign and show that pair again."""
    now = time.time() if now is None else now
    with dbmod.transaction(db):
        row = db.execute("SELECT id, pair_id FROM votes WHERE campaign_id = ? AND annotator_id = ? "
                         "ORDER BY cast_at DESC, id DESC LIMIT 1", [campaign_id, annotator_id]).fetchone()
        if row is None:
            return None
        vote_id, pair_id = row
        db.execute("DELETE FROM votes WHERE id = ?", [vote_id])
        db.execute("UPDATE pairs SET n_votes = n_votes - 1 WHERE id = ?", [pair_id])
        # The pair they were looking at was never voted on: back to the pool.
        db.execute("DELETE FROM assignments WHERE campaign_id = ? AND annotator_id = ? AND status = 'open'",
                   [campaign_id, annotator_id])
        aid = db.execute("SELECT id FROM assignments WHERE pair_id = ? AND annotator_id = ?",
                         [pair_id, annotator_id]).fetchone()[0]
        db.execute("UPDATE assignments SET status = 'open', claimed_at = ?, shown_at = ? WHERE id = ?", [now, now, aid])
    return _assignment(db, aid)


def annotator_progress(db, campaign_id: int, annotator_id: int, timeout_s: float | None = None) -> tuple[int, int]:
    """(votes cast, votes cast + pairs still open to this annotator), for "12 of 50"."""
    cutoff = time.time() - (claim_timeout(db) if timeout_s is None else timeout_s)
    done = db.execute("SELECT count(*) FROM votes WHERE campaign_id = ? AND annotator_id = ?",
                      [campaign_id, annotator_id]).fetchone()[0]
    held = db.execute("SELECT count(*) FROM assignments WHERE campaign_id = ? AND annotator_id = ? AND status = 'open'",
                      [campaign_id, annotator_id]).fetchone()[0]
    free = db.execute("SELECT count(*) FROM (" + _CANDIDATE + ")",
                      {"c": campaign_id, "u": annotator_id, "cutoff": cutoff}).fetchone()[0]
    return done, done + held + free


def vote_rows(db, campaign_id: int, gold: bool | None = False) -> list[dict]:
    """The campaign's votes with their pair, prompt and answers, oldest first: the non-gold ones (the
    default), the gold ones (`gold=True`) or all (`gold=None`)."""
    where = {False: "AND p.gold IS NULL", True: "AND p.gold IS NOT NULL", None: ""}[gold]
    return rows(db, f"""
        SELECT v.*, p.gold, p.prompt_id, cp.messages_json, ra.model AS model_a, rb.model AS model_b,
               ra.text AS text_a, rb.text AS text_b
        FROM votes v JOIN pairs p ON p.id = v.pair_id JOIN campaign_prompts cp ON cp.id = p.prompt_id
        JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
        WHERE v.campaign_id = ? {where} ORDER BY v.cast_at, v.id""", [campaign_id])


# Verdicts counted per pair first (one table, no joins over every verdict), then per model pair as the pair
# stores them; gold pairs are left out. {} is a query of (pair_id, choice, n, last) rows over votes or judgments.
_BY_MODELS = ("SELECT ra.model, rb.model, x.choice, sum(x.n), max(x.last) FROM ({}) x JOIN pairs p ON p.id = x.pair_id "
              "JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b "
              "WHERE p.gold IS NULL GROUP BY 1, 2, 3")
# People's votes of one campaign (the parameter), per pair: model_pair_counts' usual first argument.
PEOPLE_PER_PAIR = ("SELECT pair_id, choice, count(*) AS n, max(cast_at) AS last FROM votes WHERE campaign_id = ? "
                   "GROUP BY pair_id, choice")


def model_pair_counts(db, per_pair: str, params: list) -> list[tuple[str, str, str, int, float]]:
    """(model_a, model_b, choice, count, latest cast_at) for the verdicts that `per_pair` counts per pair
    (its columns: pair_id, choice, n, last), on non-gold pairs: the one count behind the leaderboard
    (exporting.battle_counts) and active sampling (sampling.campaign_counts)."""
    return db.execute(_BY_MODELS.format(per_pair), params).fetchall()
