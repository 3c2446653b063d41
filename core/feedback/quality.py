"""Quality of a campaign's labels: agreement (Cohen's κ, Krippendorff's α), per-annotator figures,
gold accuracy, position bias, flags, and how far generation and voting have come; and, under
"judges", each judge measured against the people (panel.py), apart from the human figures.

An annotator is flagged when, over at least FLAG_MIN_ITEMS pairs that others also rated, they agree
with the others' majority less than FLAG_AGREEMENT of the time, or when they got less than
FLAG_GOLD_ACCURACY of at least FLAG_MIN_GOLD gold pairs right. With four labels, chance is 25-50%.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict

from tunelab import agreement
from tunelab.feedback.campaigns import get_campaign
from tunelab.feedback.panel import judge_panel
from tunelab.feedback.votes import CHOICES, vote_rows

FLAG_AGREEMENT = 0.5
FLAG_MIN_ITEMS = 5
FLAG_GOLD_ACCURACY = 0.7
FLAG_MIN_GOLD = 3


def quality(db, name: str) -> dict:
    """Agreement, per-annotator figures, position bias, flags, and generation progress for one campaign;
    judges against people under "judges"."""
    c = get_campaign(db, name)
    votes = vote_rows(db, c.id)
    gold_votes = vote_rows(db, c.id, gold=True)
    units: dict[int, dict[int, str]] = defaultdict(dict)
    for v in votes:
        units[v["pair_id"]][v["annotator_id"]] = v["choice"]
    annotators = sorted({v["annotator_id"] for v in votes + gold_votes})
    names = {v["annotator_id"]: v["annotator"] for v in votes + gold_votes}

    cohen = None
    if len(annotators) == 2:
        both = [u for u in units.values() if len(u) == 2]
        cohen = agreement.cohen_kappa([u[annotators[0]] for u in both], [u[annotators[1]] for u in both])

    per = []
    for uid in annotators:
        mine = [v for v in votes if v["annotator_id"] == uid]
        compared = agreed = 0
        for v in mine:
            others = [lab for a, lab in units[v["pair_id"]].items() if a != uid]
            top = agreement.majority(others)
            if top is not None:
                compared += 1
                agreed += v["choice"] == top
        golds = [v for v in gold_votes if v["annotator_id"] == uid]
        correct = sum(v["choice"] == v["gold"] for v in golds)
        decided = [v for v in mine if v["choice"] in ("a", "b") and v["left_is_a"] is not None]
        seconds = [v["seconds"] for v in mine + golds if v["seconds"] is not None]
        row = {"annotator": names[uid], "annotator_id": uid, "votes": len(mine), "gold_votes": len(golds),
               "median_seconds": round(statistics.median(seconds), 2) if seconds else None,
               "agreement_with_majority": round(agreed / compared, 4) if compared else None, "compared": compared,
               "gold_accuracy": round(correct / len(golds), 4) if golds else None,
               "left_wins": round(sum(_left_won(v) for v in decided) / len(decided), 4) if decided else None}
        row["flagged"] = bool(
            (compared >= FLAG_MIN_ITEMS and agreed / compared < FLAG_AGREEMENT)
            or (len(golds) >= FLAG_MIN_GOLD and correct / len(golds) < FLAG_GOLD_ACCURACY))
        per.append(row)

    decided = [v for v in votes if v["choice"] in ("a", "b") and v["left_is_a"] is not None]
    counts = {label: sum(v["choice"] == label for v in votes) for label in CHOICES}
    pairs_total, pairs_done, triaged = db.execute(
        "SELECT count(*), coalesce(sum(votes_needed IS NOT NULL AND n_votes >= votes_needed), 0), count(triaged_by) "
        "FROM pairs WHERE campaign_id = ? AND gold IS NULL", [c.id]).fetchone()
    return {
        "campaign": c.name, "status": c.status, "progress": round(c.progress, 4), "progress_message": c.progress_message,
        "error": c.error, "models": c.models, "source": c.source, "judge": c.judge, "overlap": c.overlap,
        "sampling": c.sampling,  # how the next pair is chosen (sampling.py)
        "pairs": pairs_total, "pairs_complete": pairs_done, "pairs_triaged": triaged,
        "gold_pairs": db.execute("SELECT count(*) FROM pairs WHERE campaign_id = ? AND gold IS NOT NULL",
                                 [c.id]).fetchone()[0],
        "votes": len(votes), "gold_votes": len(gold_votes), "choices": counts, "annotators": len(annotators),
        "cohen_kappa": _round(cohen),
        "krippendorff_alpha": _round(agreement.krippendorff_alpha(units)),
        "percent_agreement": _round(agreement.percent_agreement(units)),
        "left_win_rate": _round(sum(_left_won(v) for v in decided) / len(decided)) if decided else None,
        "per_annotator": per,
        "flagged": [r["annotator"] for r in per if r["flagged"]],
        "judges": judge_panel(db, c.id),
    }


def _left_won(v: dict) -> bool:
    return (v["choice"] == "a") == bool(v["left_is_a"])


def _round(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)
