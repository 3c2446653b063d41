"""Twenty annotator processes vote at once through core: every vote lands exactly once."""
from __future__ import annotations

import multiprocessing as mp
import traceback

import pytest

from tunelab import db as dbmod, feedback, models

ANNOTATORS, VOTES = 20, 50


def annotate(db_path: str, campaign_id: int, uid: int, start, results) -> None:
    """One annotator: claim, vote, and submit every fifth vote twice (a double click). Odd annotators
    vote and claim in two steps, even ones in one (`vote_and_next`, as the labeling page does)."""
    try:
        conn = dbmod.connect(db_path)
        start.wait()
        n = 0
        a = feedback.next_pair(conn, campaign_id, uid, f"annotator{uid}")
        while a is not None:
            choice = ("left", "right", "tie", "both_bad")[(uid + n) % 4]
            if n % 5 == 0:
                feedback.cast_vote(conn, a.id, choice)
            n += 1
            if uid % 2:
                feedback.cast_vote(conn, a.id, choice)
                a = feedback.next_pair(conn, campaign_id, uid, f"annotator{uid}")
            else:
                a = feedback.vote_and_next(conn, a.id, choice)
        results.put((uid, n, None))
    except Exception:
        results.put((uid, -1, traceback.format_exc()))


@pytest.mark.process
@pytest.mark.timeout(300)
def test_twenty_processes_thousand_votes(tiny_model, tiny_model_dir):
    conn, ws, _ = tiny_model
    models.add_local(conn, tiny_model_dir, "tiny-b")
    c = feedback.create_campaign(conn, ws, "load", ["tiny", "tiny-b"], prompts=[f"prompt {i}" for i in range(VOTES)],
                                 config=feedback.CampaignConfig(overlap=ANNOTATORS))
    ids = [pid for pid, _ in feedback.prompts(conn, c)]
    feedback.store_responses(conn, c, "tiny", 0, ids, [f"a{i}" for i in ids])
    feedback.store_responses(conn, c, "tiny-b", 0, ids, [f"b{i}" for i in ids])
    assert feedback.build_pairs(conn, c) == VOTES

    ctx = mp.get_context("spawn")  # real, separate interpreters, each with its own connection
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=annotate, args=(str(ws.db_path), c.id, uid, start, results))
             for uid in range(1, ANNOTATORS + 1)]
    for p in procs:
        p.start()
    start.set()
    outcomes = sorted(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    assert [err for _, _, err in outcomes if err] == []
    assert [n for _, n, _ in outcomes] == [VOTES] * ANNOTATORS
    assert all(p.exitcode == 0 for p in procs)

    total, distinct = conn.execute("SELECT count(*), count(DISTINCT pair_id || ':' || annotator_id) FROM votes").fetchone()
    assert total == distinct == ANNOTATORS * VOTES
    assert conn.execute("SELECT min(n_votes), max(n_votes) FROM pairs").fetchone() == (ANNOTATORS, ANNOTATORS)
    assert conn.execute("SELECT count(*) FROM assignments WHERE status != 'voted'").fetchone()[0] == 0
    q = feedback.quality(conn, "load")
    assert q["votes"] == 1000 and q["pairs_complete"] == VOTES and q["annotators"] == ANNOTATORS
