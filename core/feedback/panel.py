"""Judges against people: how far each judge of a campaign can stand in for its annotators.

The figures AlpacaEval publishes for its judges, computed on the campaign's own pairs:

- agreement: share of the pairs both judged (the judge and at least one person) where the judge's
  verdict equals the people's majority label (`agreement.majority`); a pair whose people are level
  has no majority and is not compared;
- κ: Cohen's κ between the judge's verdicts and those majority labels, on the same pairs;
- position consistency: of the judge's verdicts given in both orders (A shown first, B shown first),
  the share where both orders gave the same verdict; a reward judge reads no order and has none;
- length bias: on the pairs both judged whose two answers differ in length (characters), the share of
  the judge's decisive verdicts (a or b) that chose the longer answer, beside the share of people's
  decisive votes on the same pairs that did. Each person's vote counts once, as AlpacaEval counts
  every human annotation in its "prefers longer" figure.

Judge verdicts are read from `judgments` only; they never enter the human figures in quality.py.
"""
from __future__ import annotations

from collections import defaultdict

from tunelab import agreement
from tunelab.feedback.judgments import judgment_rows, list_judges
from tunelab.feedback.votes import vote_rows

DECISIVE = ("a", "b")


def judge_panel(db, campaign_id: int) -> list[dict]:
    """One row per judge of the campaign, in the order they were added (see the module doc)."""
    people: dict[int, list[str]] = defaultdict(list)
    longer: dict[int, str | None] = {}   # pair -> the side with the longer answer; None when equal
    for v in vote_rows(db, campaign_id):
        people[v["pair_id"]].append(v["choice"])
        longer[v["pair_id"]] = _longer(v["text_a"], v["text_b"])
    out = []
    for judge in list_judges(db, campaign_id):
        verdicts = judgment_rows(db, campaign_id, judge.name)
        shared = [j for j in verdicts if j["pair_id"] in people]
        compared = [(j["choice"], top) for j in shared if (top := agreement.majority(people[j["pair_id"]]))]
        by_length = [j for j in shared if longer[j["pair_id"]] is not None]
        judge_longer = [j["choice"] == longer[j["pair_id"]] for j in by_length if j["choice"] in DECISIVE]
        people_longer = [c == longer[j["pair_id"]] for j in by_length for c in people[j["pair_id"]] if c in DECISIVE]
        kappa = agreement.cohen_kappa([c for c, _ in compared], [t for _, t in compared])
        out.append({
            "judge": judge.name, "kind": judge.kind, "judged": len(verdicts), "compared": len(compared),
            "agreement_with_people": _share([c == t for c, t in compared]),
            "cohen_kappa": None if kappa is None else round(kappa, 4),
            "position_consistency": position_consistency(verdicts),
            "judge_prefers_longer": _share(judge_longer), "people_prefer_longer": _share(people_longer),
            "length_pairs": len(by_length)})
    return out


def position_consistency(verdicts: list[dict]) -> float | None:
    """Of the verdicts given in both orders, the share where both orders gave the same one (None: no such
    verdict, as for a reward judge)."""
    return _share([j["first_a"] == j["first_b"] for j in verdicts
                   if j["first_a"] is not None and j["first_b"] is not None])


def _longer(text_a: str, text_b: str) -> str | None:
    return None if len(text_a) == len(text_b) else "a" if len(text_a) > len(text_b) else "b"


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None
