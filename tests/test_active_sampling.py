"""Active pair selection (feedback/sampling.py): the floor every model pair keeps, and claims through the
real SQLite file that focus on the model pairs whose order is uncertain while keeping overlap, gold
pairs and 'never twice' as uniform campaigns do."""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from tunelab import feedback, models, ratings
from tunelab.feedback import sampling
from tunelab.feedback.judgments import insert_judge, write_judgment
from tunelab.feedback.votes import WINNER_OF, vote_rows

NAMES = ["ma", "mb", "mc", "md"]   # ma and mb are equally good, mc is worse, md worst
ALL_PAIRS = [(NAMES[i], NAMES[j]) for i in range(4) for j in range(i + 1, 4)]


def counts(wins: dict[tuple[str, str], int], tied: dict[tuple[str, str], int] | None = None):
    decisive, ties = np.zeros((4, 4)), np.zeros((4, 4))
    for (a, b), k in wins.items():
        decisive[NAMES.index(a), NAMES.index(b)] += k
    for (a, b), k in (tied or {}).items():
        ties[NAMES.index(a), NAMES.index(b)] += k
        ties[NAMES.index(b), NAMES.index(a)] += k
    return decisive, ties


def states():
    """Vote states: none, a runaway leader, two close leaders above clear losers, random."""
    rng = np.random.default_rng(0)
    runaway = {("ma", m): 200 for m in NAMES[1:]} | {("mb", "mc"): 3, ("mc", "mb"): 2}
    close = {("ma", "mb"): 60, ("mb", "ma"): 60, ("ma", "mc"): 40, ("mb", "mc"): 40, ("ma", "md"): 40,
             ("mb", "md"): 40, ("mc", "md"): 40}
    yield "none", counts({})
    yield "runaway leader", counts(runaway)
    yield "close leaders", counts(close, {("ma", "mb"): 10})
    for s in range(5):
        d = rng.integers(0, 80, (4, 4)).astype(float)
        np.fill_diagonal(d, 0)
        yield f"random {s}", (d, np.zeros((4, 4)))


@pytest.mark.parametrize("available", [ALL_PAIRS, ALL_PAIRS[:3], [("mc", "md")], [("mb", "ma"), ("md", "mc")]])
def test_every_available_pair_keeps_its_floor(available):
    for name, (decisive, ties) in states():
        probs = sampling.model_pair_probabilities(NAMES, decisive, ties, available)
        assert list(probs) == available, name
        assert sum(probs.values()) == pytest.approx(1.0), name
        for pair, p in probs.items():
            assert p >= sampling.FLOOR / len(available) - 1e-12, (name, pair, probs)


def test_uncertain_pairs_are_favoured():
    # Nothing known: only the anchor (ma, the first by name) tells pairs apart; the three with it are equally
    # likely, and so are the other three.
    probs = sampling.model_pair_probabilities(NAMES, *counts({}), ALL_PAIRS)
    assert len({round(p, 9) for pair, p in probs.items() if "ma" in pair}) == 1
    assert len({round(p, 9) for pair, p in probs.items() if "ma" not in pair}) == 1
    close = {("ma", "mb"): 30, ("mb", "ma"): 30, ("ma", "mc"): 30, ("mb", "mc"): 30, ("ma", "md"): 30,
             ("mb", "md"): 30, ("mc", "md"): 30}
    probs = sampling.model_pair_probabilities(NAMES, *counts(close), ALL_PAIRS)
    # ma–mb is a coin flip; ma and mb against md are settled: uniform would give each 1/6.
    assert probs[("ma", "mb")] > 0.2
    assert probs[("ma", "md")] < 0.1 and probs[("mb", "md")] < 0.1
    # A runaway leader: the pairs it is in are settled, so the others get the votes (beyond their floor).
    runaway = {("ma", m): 200 for m in NAMES[1:]} | {("mb", "mc"): 3, ("mc", "mb"): 2}
    probs = sampling.model_pair_probabilities(NAMES, *counts(runaway), ALL_PAIRS)
    assert all(probs[("ma", m)] < 0.05 for m in NAMES[1:]) and sum(probs.values()) == pytest.approx(1)


@pytest.fixture
def four_models(workspace, tiny_model_dir):
    conn, ws = workspace
    for name in NAMES:
        models.add_local(conn, tiny_model_dir, name)
    return conn, ws


def make_campaign(conn, ws, name: str, sampling_mode: str, n_prompts: int = 30, overlap: int = 2):
    """Four models' answers stored as if generated (each answer names its model), pairs built."""
    c = feedback.create_campaign(conn, ws, name, NAMES, prompts=[f"question {i}" for i in range(n_prompts)],
                                 config=feedback.CampaignConfig(overlap=overlap, sampling=sampling_mode))
    ids = [pid for pid, _ in feedback.prompts(conn, c)]
    for m in NAMES:
        feedback.store_responses(conn, c, m, 0, ids, [f"{m}: answer {i}" for i in range(n_prompts)])
    feedback.build_pairs(conn, c)
    return feedback.get_campaign(conn, name)


def model_pair(conn, pair_id: int) -> tuple[str, str]:
    return tuple(sorted(conn.execute("SELECT ra.model, rb.model FROM pairs p JOIN responses ra ON ra.id = "
                                     "p.response_a JOIN responses rb ON rb.id = p.response_b WHERE p.id = ?",
                                     [pair_id]).fetchone()))


def judge_vote(a, rng) -> str:
    """ma and mb are a coin flip; otherwise the better model (by NAMES order) wins 85% of the time;
    gold: the good one."""
    left, right = a.left.split(":")[0], a.right.split(":")[0]
    if left in ("good", "bad"):
        return "left" if left == "good" else "right"
    better = 0.5 if {left, right} == {"ma", "mb"} else 0.85
    return "left" if (NAMES.index(left) < NAMES.index(right)) == (rng.random() < better) else "right"


def vote_rounds(conn, c, annotators: range, votes: int, rng) -> list[int]:
    """Annotators take turns claiming and voting until `votes` votes or nothing is left; the pairs claimed."""
    claimed = []
    while len(claimed) < votes:
        progressed = False
        for uid in annotators:
            a = feedback.next_pair(conn, c.id, uid, f"user{uid}")
            if a is None:
                continue
            claimed.append(a.pair_id)
            feedback.cast_vote(conn, a.id, judge_vote(a, rng))
            progressed = True
        if not progressed:
            break
    return claimed


@pytest.mark.parametrize("mode", ["active", "uniform"])
def test_active_claims_focus_on_the_uncertain_model_pair(four_models, mode):
    """ma vs mb is a coin flip and every other order is plain: after a warm-up, an active campaign hands
    out ma–mb pairs far more often than the 1 in 6 of a uniform one (fixed seed)."""
    conn, ws = four_models
    c = make_campaign(conn, ws, f"focus-{mode}", mode, n_prompts=60, overlap=3)
    random.seed(1)
    rng = random.Random(2)
    claimed = vote_rounds(conn, c, range(1, 7), 240, rng)
    share = Counter(model_pair(conn, p) for p in claimed[80:])[("ma", "mb")] / len(claimed[80:])
    if mode == "active":
        assert share > 0.28
    else:
        assert share < 0.25


@pytest.mark.parametrize("mode", ["active", "uniform"])
def test_claims_keep_overlap_gold_and_never_twice(four_models, mode):
    conn, ws = four_models
    c = make_campaign(conn, ws, f"rules-{mode}", mode, n_prompts=5, overlap=2)
    feedback.add_gold(conn, c.name, [{"prompt": f"gold {i}", "chosen": "good: yes", "rejected": "bad: no"}
                                     for i in range(3)])
    random.seed(3)
    rng = random.Random(4)
    seen: dict[int, list[int]] = {}
    for uid in (1, 2, 3):
        while (a := feedback.next_pair(conn, c.id, uid, f"user{uid}")) is not None:
            seen.setdefault(uid, []).append(a.pair_id)
            feedback.cast_vote(conn, a.id, judge_vote(a, rng))
            done, total = feedback.annotator_progress(conn, c.id, uid)
            assert done == len(seen[uid]) and total >= done
        assert feedback.annotator_progress(conn, c.id, uid) == (len(seen[uid]), len(seen[uid]))
        assert len(seen[uid]) == len(set(seen[uid]))   # never twice to one annotator
    gold = {r[0] for r in conn.execute("SELECT id FROM pairs WHERE campaign_id = ? AND gold IS NOT NULL", [c.id])}
    for uid, pairs in seen.items():
        assert gold <= set(pairs)                      # every annotator met every gold pair
    needed = conn.execute("SELECT n_votes, votes_needed FROM pairs WHERE campaign_id = ? AND gold IS NULL",
                          [c.id]).fetchall()
    assert len(needed) == 30 and all(n == k == 2 for n, k in needed)   # exactly K votes per pair


def test_uniform_hands_pairs_out_in_position_order(four_models):
    conn, ws = four_models
    c = make_campaign(conn, ws, "order", "uniform", n_prompts=4, overlap=1)
    order = [r[0] for r in conn.execute("SELECT id FROM pairs WHERE campaign_id = ? ORDER BY position", [c.id])]
    claimed = vote_rounds(conn, c, range(1, 2), 100, random.Random(0))
    assert claimed == order


def test_counts_take_triaged_verdicts_and_people_on_non_gold_pairs(four_models):
    conn, ws = four_models
    c = make_campaign(conn, ws, "counts", "active", n_prompts=2, overlap=1)
    feedback.add_gold(conn, c.name, [{"prompt": "gold", "chosen": "good: yes", "rejected": "bad: no"}])
    claimed = vote_rounds(conn, c, range(1, 2), 100, random.Random(0))   # 12 pairs + 1 gold
    assert len(claimed) == 13
    judge = insert_judge(conn, c.id, "j", "endpoint", {"model": "x"})
    pairs = conn.execute("SELECT p.id, ra.model, rb.model FROM pairs p JOIN responses ra ON ra.id = p.response_a "
                         "JOIN responses rb ON rb.id = p.response_b WHERE p.campaign_id = ? AND p.gold IS NULL "
                         "ORDER BY p.id LIMIT 2", [c.id]).fetchall()
    for pid, _, _ in pairs:
        write_judgment(conn, judge, pid, "a")
    conn.execute("UPDATE pairs SET triaged_by = 'j' WHERE id = ?", [pairs[0][0]])   # only this verdict stands
    names, decisive, ties = sampling.campaign_counts(conn, c.id, NAMES)
    assert names == NAMES
    assert decisive.sum() + ties.sum() / 2 == 12 + 1     # people's 12 non-gold votes and one standing verdict
    _, a, b = pairs[0]
    people = sum(1 for p in claimed if model_pair(conn, p) == tuple(sorted((a, b))))
    assert decisive[NAMES.index(a), NAMES.index(b)] + decisive[NAMES.index(b), NAMES.index(a)] == people + 1
    # Cell by cell, the counts are those of the battles these verdicts make (ratings.pair_counts, by name).
    standing = [{"model_a": ma, "model_b": mb, "winner": "model_a"} for _, ma, mb in pairs[:1]]
    voted = [{"model_a": v["model_a"], "model_b": v["model_b"], "winner": WINNER_OF[v["choice"]]}
             for v in vote_rows(conn, c.id)]
    by_name, d, t = ratings.pair_counts(voted + standing)
    order = [names.index(m) for m in by_name]
    assert (decisive[np.ix_(order, order)] == d).all() and (ties[np.ix_(order, order)] == t).all()
    assert decisive.sum() == d.sum() and ties.sum() == t.sum()


@pytest.mark.process
@pytest.mark.timeout(120)
def test_sampling_comes_from_the_flag_the_form_and_shows_in_status(four_models, monkeypatch):
    import sys

    from streamlit.testing.v1 import AppTest

    from tunelab import cli, configs
    from tests.conftest import run_cli
    conn, ws = four_models
    args = cli.build_parser().parse_args(["feedback", "create", "c", "--models", "ma,mb", "--prompts", "p",
                                          "--sampling", "uniform"])
    assert configs.from_flags(feedback.CampaignConfig, args).sampling == "uniform"
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])   # AppTest leaves its page there

    def page():
        import streamlit as st

        from pages import _ui
        from tunelab import configs, feedback
        values = _ui.config_form_fields(feedback.CampaignConfig, "cc", multiline={"guidelines"})
        st.session_state.cfg = configs.from_mapping(feedback.CampaignConfig, values, "form")

    at = AppTest.from_function(page, default_timeout=60).run()
    assert at.selectbox(key="cc_sampling").value == "active" and at.session_state.cfg.sampling == "active"
    at.selectbox(key="cc_sampling").set_value("uniform").run()
    assert at.session_state.cfg.sampling == "uniform"
    make_campaign(conn, ws, "shown", "uniform", n_prompts=1)
    done = run_cli("feedback", "status", "shown", env_home=ws.home, timeout=60)
    assert done.returncode == 0 and "uniform sampling" in done.stdout.splitlines()[0]
    done = run_cli("feedback", "status", "shown", "--json", env_home=ws.home, timeout=60)
    assert json.loads(done.stdout)["sampling"] == "uniform"


@pytest.mark.process
@pytest.mark.timeout(300)
def test_bench_prints_votes_to_a_settled_ranking_in_both_modes(four_models, tmp_path):
    """bench/active_sampling.py (issue 15, item 5) runs in simulation and replays what `feedback export
    --format battles` writes, printing its one line per mode."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    conn, ws = four_models
    c = make_campaign(conn, ws, "bench", "uniform", n_prompts=20, overlap=2)
    vote_rounds(conn, c, range(1, 3), 80, random.Random(5))
    battles = tmp_path / "battles.jsonl"
    assert feedback.export(conn, ws, c.name, "battles", battles)["rows"] == 80
    line = re.compile(r"^votes to a settled ranking: uniform [\d.]+, active [\d.]+, ratio \d+\.\d\d$", re.M)
    repo = Path(__file__).resolve().parents[1]
    for args in (["--models", "3", "--gap", "150", "--pool", "150"], ["--replay", str(battles)]):
        done = subprocess.run([sys.executable, "bench/active_sampling.py", *args, "--seeds", "2"], cwd=repo,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        assert line.search(done.stdout), done.stdout
