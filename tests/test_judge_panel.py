"""Judges against people (the panel in `feedback status`), triage, and votes by source (people, judge,
both) in battles, exports and the leaderboard, on small hand-built campaigns whose figures are worked
out by hand below. Judge verdicts are written as a judge writes them (`judgments.insert_judge` +
`write_judgment`); people's votes as an annotator's or an import's are (`votes.write_vote`), or
through the real claim loop."""
import json
from collections import Counter

import pytest

from tunelab import db as dbmod, feedback, leaderboard
from tunelab.errors import UserError
from tunelab.feedback.judgments import insert_judge, write_judgment
from tunelab.feedback.votes import write_vote
from tests.conftest import arena_file, ready_campaign, run_cli

# Six pairs, one per prompt; A is model `tiny`, B is `tiny-b`. Lengths in characters.
PROMPTS = ["Capital of France?", "Two plus two?", "Sky colour?", "Spider legs?", "Frozen water?", "Bees make?"]
ANSWERS_A = ["Paris is the capital.", "Four.", "Blue.", "Eight legs, always.", "Ice.", "Honey, mostly."]
ANSWERS_B = ["Paris.", "Two plus two is four.", "Azure", "Six.", "Frozen water is ice.", "Wax."]
#            longer:  A        B                equal    A        B                A

# Three people's votes (pair terms) on pairs 1-5; nobody voted on pair 6.
PEOPLE = [["a", "a", "b"],        # P1 majority a
          ["b", "b", "b"],        # P2 majority b
          ["a", "b", "tie"],      # P3 level: no majority, not compared
          ["a", "a", "tie"],      # P4 majority a
          ["tie", "tie", "b"],    # P5 majority tie
          []]                     # P6 no people
# A chat judge: (choice, margin = P(a) - P(b), verdict with A first, with B first); none on P6.
CHAT = [("a", 0.9, "a", "a"), ("a", 0.2, "a", "b"), ("b", -0.3, "b", "b"), ("a", 0.7, "a", "a"),
        ("tie", 0.0, "tie", "tie"), None]
# A reward judge: no order, margin = reward(a) - reward(b).
REWARD = [("b", -1.5, None, None), ("b", -3.0, None, None), ("a", 0.1, None, None), None, None,
          ("a", 2.0, None, None)]

# The chat judge by hand:
#   compared (pairs both judged with a people majority): P1 a=a, P2 a≠b, P4 a=a, P5 tie=tie -> 4,
#   agreement 3/4 = 0.75.
#   κ: judge [a, a, a, tie] against majority [a, b, a, tie]: p_o = 3/4; judge a 3/4, tie 1/4; majority
#   a 2/4, b 1/4, tie 1/4; p_e = 3/4·2/4 + 1/4·1/4 = 7/16; κ = (12/16 − 7/16) / (9/16) = 5/9.
#   position consistency: both orders on P1-P5, P2 flips -> 4/5 = 0.8.
#   length: pairs both judged whose answers differ: P1 (A), P2 (B), P4 (A), P5 (B) -> 4 (P3 equal).
#   judge's decisive verdicts there: P1 a longer ✓, P2 a shorter ✗, P4 a ✓ (P5 tie) -> 2/3.
#   people's decisive votes there: P1 a a b -> 2 of 3, P2 b b b -> 3 of 3, P4 a a -> 2 of 2,
#   P5 b -> 1 of 1: 8/9.
CHAT_ROW = {"judge": "chat", "kind": "chat", "judged": 5, "compared": 4, "agreement_with_people": 0.75,
            "cohen_kappa": round(5 / 9, 4), "position_consistency": 0.8, "judge_prefers_longer": round(2 / 3, 4),
            "people_prefer_longer": round(8 / 9, 4), "length_pairs": 4}
# The reward judge by hand: compared P1 b≠a, P2 b=b -> 1/2 (P3 level, P6 no people).
#   κ: judge [b, b] against [a, b]: p_o = 1/2, p_e = 1·1/2 = 1/2 -> 0. No order: no consistency.
#   length: P1 (A) and P2 (B) differ (P3 equal): judge P1 b ✗, P2 b ✓ -> 1/2;
#   people P1 2 of 3, P2 3 of 3 -> 5/6.
REWARD_ROW = {"judge": "rm", "kind": "reward", "judged": 4, "compared": 2, "agreement_with_people": 0.5,
              "cohen_kappa": 0.0, "position_consistency": None, "judge_prefers_longer": 0.5,
              "people_prefer_longer": round(5 / 6, 4), "length_pairs": 2}


def pair_ids(conn, c) -> list[int]:
    return [r[0] for r in conn.execute("SELECT p.id FROM pairs p JOIN campaign_prompts cp ON cp.id = p.prompt_id "
                                       "WHERE p.campaign_id = ? AND p.gold IS NULL ORDER BY cp.idx", [c.id])]


def judge(conn, c, name, kind, verdicts) -> None:
    j = insert_judge(conn, c.id, name, kind, {"test": name})
    for pid, v in zip(pair_ids(conn, c), verdicts):
        if v:
            choice, margin, first_a, first_b = v
            write_judgment(conn, j, pid, choice, margin, first_a, first_b)


def people_vote(conn, c, votes) -> None:
    with dbmod.transaction(conn):
        for pid, labels in zip(pair_ids(conn, c), votes):
            for uid, label in enumerate(labels, start=1):
                write_vote(conn, pid, c.id, uid, f"u{uid}", label, None, True, "tiny", 0.0, float(uid))


@pytest.fixture
def panel_campaign(workspace, tiny_model_dir):
    conn, ws = workspace
    c = ready_campaign(conn, ws, tiny_model_dir, "panel", PROMPTS, (ANSWERS_A, ANSWERS_B))
    people_vote(conn, c, PEOPLE)
    return conn, ws, c


def test_panel_matches_hand_computed_figures(panel_campaign):
    conn, _, c = panel_campaign
    before = feedback.quality(conn, "panel")
    assert before["judges"] == []
    judge(conn, c, "chat", "chat", CHAT)
    judge(conn, c, "rm", "reward", REWARD)
    q = feedback.quality(conn, "panel")
    assert q["judges"] == [CHAT_ROW, REWARD_ROW]
    # Judgments never enter the people's figures: everything but the panel is as before.
    assert {k: v for k, v in q.items() if k != "judges"} == {k: v for k, v in before.items() if k != "judges"}
    assert q["votes"] == 15 and q["annotators"] == 3


def test_battles_by_source(panel_campaign):
    conn, _, c = panel_campaign
    judge(conn, c, "chat", "chat", CHAT)
    people = feedback.battles(conn, "panel")
    assert len(people) == 15 and {b["source"] for b in people} == {"people"}
    judged = feedback.battles(conn, "panel", source="judge")
    # A judge's verdict is a battle of A (tiny) against B (tiny-b), won as it said.
    assert [(b["model_a"], b["model_b"], b["winner"], b["judge"]) for b in judged] == [
        ("tiny", "tiny-b", w, "chat") for w in ("model_a", "model_a", "model_b", "model_a", "tie")]
    # Both: people's votes where a pair has any (P1-P5), else the judge's: the chat judge has no verdict
    # on P6, so both is the people's 15 votes.
    assert feedback.battles(conn, "panel", source="both") == people

    judge(conn, c, "rm", "reward", REWARD)
    with pytest.raises(UserError, match="several judges.*chat, rm"):
        feedback.battles(conn, "panel", source="judge")
    both = feedback.battles(conn, "panel", source="both", judge="rm")
    assert len(both) == 16 and [(b["winner"], b["judge"], b["source"]) for b in both if b["source"] == "judge"] == [
        ("model_a", "rm", "judge")]  # P6, which no person voted on
    with pytest.raises(UserError, match="judge 'nobody' does not exist.*judges: chat, rm"):
        feedback.battles(conn, "panel", source="judge", judge="nobody")
    with pytest.raises(UserError, match="source 'robots'"):
        feedback.battles(conn, "panel", source="robots")


def test_battles_of_a_campaign_without_judge(panel_campaign):
    conn, _, _ = panel_campaign
    with pytest.raises(UserError, match="campaign 'panel' has no judge verdicts"):
        feedback.battles(conn, "panel", source="judge")
    with pytest.raises(UserError, match="no campaign has verdicts of a judge"):
        feedback.battles(conn, source="judge")
    assert len(feedback.battles(conn, source="both")) == 15


# The triage campaign: nobody has voted yet. (choice, margin, first_a, first_b); None: not judged.
TRIAGE = [("a", 0.9, "a", "a"),     # T1 confident: the judge's verdict stands
          ("b", -0.8, "b", "a"),    # T2 flips with the order: people
          ("a", 0.1, "a", "a"),     # T3 small margin: people (stands at min_margin 0.05)
          ("tie", 0.0, "tie", "tie"),  # T4 a tie: people
          ("b", -0.7, "b", "b"),    # T5 confident
          None]                     # T6 not judged: people


@pytest.fixture
def triage_campaign(workspace, tiny_model_dir):
    conn, ws = workspace
    c = ready_campaign(conn, ws, tiny_model_dir, "tri", PROMPTS, (ANSWERS_A, ANSWERS_B))
    judge(conn, c, "chat", "chat", TRIAGE)
    return conn, ws, c, pair_ids(conn, c)


def claim_all(conn, c, uid) -> list[int]:
    """Every pair the claim loop hands this annotator, voting 'left' on each."""
    got, a = [], feedback.next_pair(conn, c.id, uid, f"u{uid}")
    while a is not None:
        got.append(a.pair_id)
        a = feedback.vote_and_next(conn, a.id, "left")
    return got


def needed(conn, pids) -> list:
    return [conn.execute("SELECT votes_needed, triaged_by FROM pairs WHERE id = ?", [p]).fetchone() for p in pids]


def test_triage_sends_people_only_the_uncertain_pairs_and_undo_restores_them(triage_campaign):
    conn, _, c, (t1, t2, t3, t4, t5, t6) = triage_campaign
    doc = feedback.triage(conn, "tri", "chat")
    assert (doc["to_people"], doc["to_judge"], doc["unsure"], doc["not_judged"]) == (4, 2, 3, 1)
    assert needed(conn, [t1, t5]) == [(0, "chat")] * 2
    assert needed(conn, [t2, t3, t4, t6]) == [(c.overlap, None)] * 4
    assert feedback.triage(conn, "tri", "chat") == doc  # idempotent

    # A lower bar lets T3 stand too; back at the default it returns to people.
    assert feedback.triage(conn, "tri", "chat", min_margin=0.05)["to_judge"] == 3
    assert needed(conn, [t3]) == [(0, "chat")]
    assert feedback.triage(conn, "tri", "chat") == doc

    # The real claim loop hands people exactly the uncertain and unjudged pairs.
    assert sorted(claim_all(conn, c, 1)) == sorted([t2, t3, t4, t6])
    assert claim_all(conn, c, 2) == []  # overlap 1: all filled
    q = feedback.quality(conn, "tri")
    assert q["pairs_triaged"] == 2 and q["pairs_complete"] == 6 and q["votes"] == 4

    # Votes people already cast stay counted through another triage; both takes the judge on T1, T5.
    feedback.triage(conn, "tri", "chat")
    assert feedback.quality(conn, "tri")["votes"] == 4
    both = feedback.battles(conn, "tri", source="both")
    assert sorted(b["source"] for b in both) == ["judge"] * 2 + ["people"] * 4
    assert {b["winner"] for b in both if b["source"] == "judge"} == {"model_a", "model_b"}  # T1 a, T5 b

    undone = feedback.untriage(conn, "tri")
    assert (undone["restored"], undone["to_people"]) == (2, 6)
    assert needed(conn, [t1, t5]) == [(c.overlap, None)] * 2
    assert sorted(claim_all(conn, c, 2)) == sorted([t1, t5])


def test_triage_refuses_what_it_cannot_do(triage_campaign, tmp_path):
    conn, _, _, _ = triage_campaign
    with pytest.raises(UserError, match="judge 'nobody' does not exist.*judges: chat"):
        feedback.triage(conn, "tri", "nobody")
    with pytest.raises(UserError, match="min-margin"):
        feedback.triage(conn, "tri", "chat", min_margin=-1)
    arena_file(tmp_path / "battles.jsonl", {"x": 1000.0, "y": 1100.0}, n=3)
    feedback.import_judgments(conn, tmp_path / "battles.jsonl", "arena", "imported")
    with pytest.raises(UserError, match="imported"):
        feedback.triage(conn, "imported", "chat")


def test_leaderboard_by_source(triage_campaign):
    conn, _, c, _ = triage_campaign
    feedback.triage(conn, "tri", "chat")
    claim_all(conn, c, 1)  # people vote on T2, T3, T4, T6
    boards = {s: leaderboard.build(conn, campaign="tri", source=s, rounds=20) for s in feedback.SOURCES}
    counts = {s: (b["votes"], b["people_votes"], b["judge_votes"], b["judges"]) for s, b in boards.items()}
    assert counts == {"people": (4, 4, 0, []), "judge": (5, 0, 5, ["chat"]), "both": (6, 4, 2, ["chat"])}
    assert [sum(r["votes"] for r in b["rows"]) for b in boards.values()] == [8, 10, 12]  # each battle counts twice
    assert leaderboard.basis(boards["both"]) == "intervals rest on 4 people's votes and 2 judge verdicts (judge chat)"
    assert leaderboard.basis(boards["people"]) == "intervals rest on 4 people's votes"
    assert leaderboard.basis(boards["judge"]) == "intervals rest on 5 judge verdicts (judge chat)"


@pytest.mark.process
@pytest.mark.timeout(180)
def test_cli_triage_status_leaderboard_and_export_by_source(triage_campaign, tmp_path):
    conn, ws, c, (t1, t2, t3, t4, t5, t6) = triage_campaign
    done = run_cli("feedback", "triage", "tri", "--judge", "chat", "--json", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    assert {k: json.loads(done.stdout)[k] for k in ("to_people", "to_judge")} == {"to_people": 4, "to_judge": 2}
    assert needed(conn, [t1, t5]) == [(0, "chat")] * 2
    claim_all(conn, c, 1)

    status = run_cli("feedback", "status", "tri", env_home=ws.home)
    assert status.returncode == 0, status.stderr
    assert "judges against people" in status.stdout and "chat" in status.stdout.split("judges against people")[1]
    board = run_cli("leaderboard", "--campaign", "tri", "--source", "both", "--json", env_home=ws.home)
    assert board.returncode == 0, board.stderr
    doc = json.loads(board.stdout)
    assert (doc["source"], doc["people_votes"], doc["judge_votes"]) == ("both", 4, 2)
    shown = run_cli("leaderboard", "--campaign", "tri", "--source", "judge", env_home=ws.home)
    assert "intervals rest on 5 judge verdicts (judge chat)" in shown.stdout, shown.stderr
    out = tmp_path / "judge.jsonl"
    exp = run_cli("feedback", "export", "tri", "--format", "battles", "--source", "judge", "--out", str(out),
                  env_home=ws.home)
    assert exp.returncode == 0, exp.stderr
    assert [json.loads(line)["judge"] for line in out.read_text().splitlines()] == ["chat"] * 5

    undo = run_cli("feedback", "triage", "tri", "--undo", env_home=ws.home)
    assert undo.returncode == 0 and "2 pairs back to people" in undo.stdout, undo.stderr
    assert needed(conn, [t1, t5]) == [(c.overlap, None)] * 2
    for args, says in [(("feedback", "triage", "tri"), "--judge NAME"),
                       (("feedback", "triage", "tri", "--judge", "nobody"), "judge 'nobody' does not exist"),
                       (("leaderboard", "--campaign", "tri", "--source", "judge", "--judge", "nobody"), "nobody"),
                       (("feedback", "export", "tri", "--format", "trl", "--source", "judge", "--out",
                         str(tmp_path / "x.jsonl")), "trl format aggregates people's votes only")]:
        bad = run_cli(*args, env_home=ws.home)
        assert bad.returncode == 2 and says in bad.stderr, (args, bad.stderr)


@pytest.mark.parametrize("source,judge_name", [("people", None), ("judge", "chat"), ("both", "chat"),
                                               ("both", "rm")])
def test_counts_in_sqlite_match_the_battles(panel_campaign, source, judge_name):
    """The leaderboard counts votes in SQLite (`battle_counts`): the same groups as the battles, per source."""
    conn, _, c = panel_campaign
    judge(conn, c, "chat", "chat", CHAT)
    judge(conn, c, "rm", "reward", REWARD)
    expected = Counter((b["model_a"], b["model_b"], b["winner"])
                       for b in feedback.battles(conn, c.name, source=source, judge=judge_name))
    counts = feedback.battle_counts(conn, c.name, source=source, judge=judge_name)
    got = Counter()
    for key, n in counts["groups"]:
        got[key] += n
    assert got == expected and sum(expected.values()) == counts["people_votes"] + counts["judge_votes"]
