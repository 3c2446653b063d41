"""Triage: people get only the pairs a judge is unsure of; its confident verdicts stand.

A judge's verdict on a pair is confident when it is decisive ('a' or 'b'), its |margin| is at least
`min_margin` (a verdict without a margin counts as margin 0), and every order it was asked in gave
that same verdict (first_a, first_b; a reward judge reads no order). Anything else is unsure: a
small margin, a verdict that flips when A and B are swapped, a tie or 'both bad'. A confident pair
gets `triaged_by` = the judge and `votes_needed` = 0, so no annotator is handed it; unsure pairs and
pairs the judge has not judged keep the campaign's overlap K. Votes people already cast stay counted.

One judge triages a campaign at a time: `triage` first undoes any earlier triage, so running it
again (another margin, another judge, new verdicts) leaves exactly its own result. `untriage` gives
every triaged pair back to people.
"""
from __future__ import annotations

from tunelab import db as dbmod
from tunelab.errors import UserError
from tunelab.feedback.campaigns import get_campaign
from tunelab.feedback.judgments import get_judge, judgment_rows

# For a chat or endpoint judge the margin is P(a) - P(b) averaged over both orders, so 0.5 lets a
# verdict stand when the judge gave the winner at least 75%. A reward judge's margin is in reward
# units: choose its min_margin from the margins it gives (the Feedback page shows them).
MIN_MARGIN = 0.5


def confident(judgment: dict, min_margin: float = MIN_MARGIN) -> bool:
    """Whether the judge's verdict on a pair may stand without people (see the module doc)."""
    choice = judgment["choice"]
    orders = {judgment["first_a"], judgment["first_b"]} - {None}
    return (choice in ("a", "b") and abs(judgment["margin"] or 0.0) >= min_margin
            and orders <= {choice})


def triage(db, campaign: str, judge: str, min_margin: float = MIN_MARGIN) -> dict:
    """Let the judge's confident verdicts stand and send people the rest. Returns the counts:
    to_people (pairs people are sent), to_judge (confident verdicts that stand), unsure (judged but
    not confident) and not_judged."""
    c = get_campaign(db, campaign)
    if min_margin < 0:
        raise UserError(f"--min-margin {min_margin}: must be 0 or more")
    _check_handed_out(db, c)
    j = get_judge(db, c.id, judge)
    verdicts = judgment_rows(db, c.id, j.name)
    sure = [v["pair_id"] for v in verdicts if confident(v, min_margin)]
    with dbmod.transaction(db):
        _restore(db, c, None)
        for pid in sure:
            db.execute("UPDATE pairs SET triaged_by = ?, votes_needed = 0 WHERE id = ?", [j.name, pid])
    total, to_people = _pairs(db, c.id)
    return {"campaign": c.name, "judge": j.name, "min_margin": min_margin, "to_people": to_people,
            "to_judge": len(sure), "unsure": len(verdicts) - len(sure), "not_judged": total - len(verdicts)}


def untriage(db, campaign: str, judge: str | None = None) -> dict:
    """Give the pairs triaged (by `judge`, or by any judge) back to people: K votes wanted again."""
    c = get_campaign(db, campaign)
    if judge is not None:
        get_judge(db, c.id, judge)  # a misspelt name is an error, not "0 restored"
    with dbmod.transaction(db):
        restored = _restore(db, c, judge)
    return {"campaign": c.name, "judge": judge, "restored": restored, "to_people": _pairs(db, c.id)[1]}


def _restore(db, c, judge: str | None) -> int:
    """Inside a write transaction: triaged pairs want the campaign's overlap again."""
    where, params = ("AND triaged_by = ?", [judge]) if judge else ("AND triaged_by IS NOT NULL", [])
    return db.execute(f"UPDATE pairs SET triaged_by = NULL, votes_needed = ? WHERE campaign_id = ? {where}",
                      [c.overlap, c.id, *params]).rowcount


def _pairs(db, campaign_id: int) -> tuple[int, int]:
    """(non-gold pairs, those of them handed out to people)."""
    return tuple(db.execute("SELECT count(*), count(*) - count(triaged_by) FROM pairs WHERE campaign_id = ? "
                            "AND gold IS NULL", [campaign_id]).fetchone())


def _check_handed_out(db, c) -> None:
    """Only a campaign whose pairs are handed out to people (generated, K votes each) can be triaged;
    an imported one holds finished judgments."""
    if c.source.startswith("import:"):
        raise UserError(f"campaign {c.name!r} was imported ({c.source}); its pairs are not handed out to "
                        "people, so there is nothing to triage")
