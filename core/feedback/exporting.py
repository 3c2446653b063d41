"""Votes out: battles for the ratings, Chatbot Arena's battle format, and TRL preference rows.

`aggregate` turns each pair's votes into at most one preference row under an `ExportPolicy`;
`export` writes either format as JSONL and can register the TRL rows as a preference dataset.
Battles come from a source: `people` (their votes, the default), `judge` (one judge's verdicts), or
`both` (per pair, people's votes when it has any, else the judge's verdict, so the pairs triage left
to the judge are carried by it).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab import agreement, workspace
from tunelab.errors import UserError
from tunelab.feedback.campaigns import Campaign, get_campaign, list_campaigns
from tunelab.feedback.importing import SAMPLE_SOURCE
from tunelab.feedback.judgments import get_judge, judgment_rows, list_judges
from tunelab.feedback.votes import PEOPLE_PER_PAIR, STRENGTHS, WINNER_OF, model_pair_counts, vote_rows

SOURCES = ("people", "judge", "both")


def verdicts(db, c: Campaign, source: str = "people", judge: str | None = None, strict: bool = True) -> list[dict]:
    """The campaign's non-gold verdicts from `source`, oldest first within each source: vote rows
    (people) and judgment rows (a judge) alike, with `judge` naming who gave it (annotator or judge)
    and `source` 'people' or 'judge'. `judge` picks the judge; by default the campaign's only one.
    `strict` (one campaign asked for by name): a missing judge is an error rather than no verdicts."""
    _check_source(source)
    people = [] if source == "judge" else [{**v, "judge": v["annotator"], "source": "people"}
                                           for v in vote_rows(db, c.id)]
    name = None if source == "people" else _judge_name(db, c, judge, strict and source == "judge")
    if name is None:
        return people
    voted = {v["pair_id"] for v in people}
    return people + [{**j, "source": "judge"} for j in judgment_rows(db, c.id, name) if j["pair_id"] not in voted]


def _judge_name(db, c: Campaign, judge: str | None, strict: bool) -> str | None:
    """The judge whose verdicts count in this campaign, or None when it has none (or not that one)."""
    names = [j.name for j in list_judges(db, c.id)]
    if judge:
        if judge not in names and strict:
            get_judge(db, c.id, judge)  # raises, listing the campaign's judges
        return judge if judge in names else None
    if len(names) > 1:
        raise UserError(f"campaign {c.name!r} has several judges ({', '.join(names)}); choose one with --judge")
    if not names and strict:
        raise UserError(f"campaign {c.name!r} has no judge verdicts; run `tunelab feedback judge {c.name} "
                        "--judge SPEC` first, or take source people")
    return names[0] if names else None


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise UserError(f"source {source!r}: expected one of {', '.join(SOURCES)}")


def _no_judge_anywhere(judge: str | None) -> UserError:
    """Source judge over all campaigns, and none has a verdict of that judge (or of any)."""
    return UserError(f"no campaign has verdicts of {'judge ' + repr(judge) if judge else 'a judge'}; "
                     "run `tunelab feedback judge CAMPAIGN --judge SPEC` first, or take source people")


def rated_campaigns(db, name: str | None) -> list[Campaign]:
    """The campaign asked for by name, else every campaign but those of sample votes (written as the demo's
    data, not cast by people: feedback.SAMPLE_SOURCE), which no board of all campaigns counts."""
    return [get_campaign(db, name)] if name else [c for c in list_campaigns(db) if c.source != SAMPLE_SOURCE]


def battles(db, name: str | None = None, source: str = "people", judge: str | None = None) -> list[dict]:
    """Every non-gold verdict from `source` (see `verdicts`) as a battle (model_a, model_b, winner,
    judge, tstamp, campaign, source), for the ratings; all campaigns when `name` is None."""
    campaigns = rated_campaigns(db, name)
    out = []
    for c in campaigns:
        out += [{"model_a": v["model_a"], "model_b": v["model_b"], "winner": WINNER_OF[v["choice"]],
                 "judge": v["judge"], "tstamp": v["cast_at"], "campaign": c.name, "source": v["source"]}
                for v in verdicts(db, c, source, judge, strict=name is not None)]
    if source == "judge" and not name and not out:
        raise _no_judge_anywhere(judge)
    return out


def battle_counts(db, name: str | None = None, source: str = "people", judge: str | None = None) -> dict:
    """The verdicts `battles` gives, counted in SQLite by (model_a, model_b, winner), for the ratings at
    any scale: 2M votes reach the fit as a few thousand groups. {'groups': [((model_a, model_b, winner),
    count)], 'people_votes', 'judge_votes', 'sample_votes', 'judges', 'updated_at'}; a sample campaign's votes
    (SAMPLE_SOURCE: written as sample data) count as sample votes, not people's."""
    _check_source(source)
    campaigns = rated_campaigns(db, name)
    groups, totals, judges, stamps = [], {"people": 0, "judge": 0, "sample": 0}, set(), []
    for c in campaigns:
        voters = "sample" if c.source == SAMPLE_SOURCE else "people"
        queries = [] if source == "judge" else [(voters, PEOPLE_PER_PAIR, [c.id])]
        judged = None if source == "people" else _judge_name(db, c, judge, name is not None and source == "judge")
        if judged is not None:
            unvoted = "" if source == "judge" else "AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.pair_id = j.pair_id)"
            queries.append(("judge", "SELECT j.pair_id, j.choice, count(*) AS n, max(j.cast_at) AS last FROM judgments "
                            f"j JOIN judges g ON g.id = j.judge_id AND g.name = ? WHERE j.campaign_id = ? {unvoted} "
                            "GROUP BY j.pair_id, j.choice", [judged, c.id]))
        for kind, per_pair, params in queries:
            for a, b, choice, count, last in model_pair_counts(db, per_pair, params):
                groups.append(((a, b, WINNER_OF[choice]), count))
                totals[kind] += count
                stamps.append(last)
                if kind == "judge":
                    judges.add(judged)
    if source == "judge" and not name and not totals["judge"]:
        raise _no_judge_anywhere(judge)
    return {"groups": groups, "people_votes": totals["people"], "judge_votes": totals["judge"],
            "sample_votes": totals["sample"],
            "judges": sorted(judges), "updated_at": max(stamps) if stamps else None}


def arena_battles(db, name: str, source: str = "people", judge: str | None = None) -> list[dict]:
    """Verdicts from `source` in Chatbot Arena's battle format, conversations included."""
    c = get_campaign(db, name)
    messages = {pid: json.loads(m) for pid, m in
                db.execute("SELECT id, messages_json FROM campaign_prompts WHERE campaign_id = ?", [c.id])}
    out = []
    for v in verdicts(db, c, source, judge):
        msgs = messages[v["prompt_id"]]
        out.append({
            "question_id": f"{c.name}:{v['prompt_id']}", "model_a": v["model_a"], "model_b": v["model_b"],
            "winner": WINNER_OF[v["choice"]], "judge": v["judge"], "tstamp": v["cast_at"],
            "conversation_a": msgs + [{"role": "assistant", "content": v["text_a"]}],
            "conversation_b": msgs + [{"role": "assistant", "content": v["text_b"]}],
            "turn": sum(m["role"] == "user" for m in msgs), "anony": True,
            "strength": STRENGTHS.get(v.get("strength")), "seconds": v.get("seconds"),
            "left_model": v.get("left_model"),
        })
    return out


@dataclass
class ExportPolicy:
    """How votes on one pair become one preference row (or none)."""
    min_votes: int = field(default=1, metadata={"help": "Pairs with fewer votes are left out."})
    min_agreement: float = field(default=0.5, metadata={"help": "Least share of a pair's votes that must agree with its majority."})
    drop_ties: bool = field(default=True, metadata={"help": "Leave out pairs whose majority is a tie."})
    drop_both_bad: bool = field(default=True, metadata={"help": "Leave out pairs whose majority is 'both bad'."})


def aggregate(db, name: str, policy: ExportPolicy | None = None) -> tuple[list[dict], dict]:
    """Preference rows in TRL's conversational format, and counts of what the policy kept and left out.

    The winner is the strict majority label; `margin` is the mean vote strength toward the chosen side
    (much = 2, slightly = 1, tie = 0, the other side negative), which TRL's reward trainer can use.
    A kept tie or both-bad pair has margin 0 and its A answer as 'chosen'.
    """
    policy = policy or ExportPolicy()
    c = get_campaign(db, name)
    by_pair: dict[int, list[dict]] = defaultdict(list)
    for v in vote_rows(db, c.id):
        by_pair[v["pair_id"]].append(v)
    rows, counts = [], defaultdict(int)
    for votes in by_pair.values():
        labels = [v["choice"] for v in votes]
        top = agreement.majority(labels)
        share = labels.count(top) / len(labels) if top else 0.0
        reason = ("too_few_votes" if len(votes) < policy.min_votes else "no_majority" if top is None
                  else "low_agreement" if share < policy.min_agreement
                  else "tie" if top == "tie" and policy.drop_ties
                  else "both_bad" if top == "both_bad" and policy.drop_both_bad else None)
        if reason:
            counts[f"dropped_{reason}"] += 1
            continue
        v0 = votes[0]
        signed = [(v["strength"] or 0) * (1 if v["choice"] == "a" else -1 if v["choice"] == "b" else 0) for v in votes]
        toward_a = sum(signed) / len(signed)
        a_wins = top != "b"
        chosen, rejected = (v0["text_a"], v0["text_b"]) if a_wins else (v0["text_b"], v0["text_a"])
        rows.append({"prompt": json.loads(v0["messages_json"]),
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "margin": round(toward_a if top == "a" else -toward_a if top == "b" else 0.0, 4)})
        counts["kept"] += 1
    counts["pairs_with_votes"] = len(by_pair)
    return rows, dict(counts)


def export(db, ws, name: str, fmt: str, out: str | Path, policy: ExportPolicy | None = None,
           register: str | None = None, source: str = "people", judge: str | None = None) -> dict:
    """Write `trl` (aggregated preferences) or `battles` (raw verdicts from `source`) as JSONL;
    optionally register the TRL rows as a preference dataset version. Returns what was written."""
    out = workspace.export_target(ws, out)
    if fmt == "trl":
        if source != "people":
            raise UserError(f"--source {source}: the trl format aggregates people's votes only; "
                            "take --format battles for a judge's verdicts")
        rows, counts = aggregate(db, name, policy)
    elif fmt == "battles":
        if register:
            raise UserError("--register: only the trl format becomes a dataset")
        rows, counts = arena_battles(db, name, source, judge), {}
    else:
        raise UserError(f"format {fmt!r}: expected trl or battles")
    workspace.write_export(ws, out, lambda tmp: tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"))
    doc = {"campaign": name, "format": fmt, "source": source, "out": str(out), "rows": len(rows), **counts}
    if register:
        if not rows:
            raise UserError(f"campaign {name!r}: no pair passed the export policy, so there is nothing to register")
        from tunelab import datasets
        version = datasets.register_rows(db, ws, register, rows, kind="preference", transform="feedback_export",
                                         params=asdict(policy or ExportPolicy()), source=f"campaign:{name}")
        doc["dataset"] = version.ref
    return doc
