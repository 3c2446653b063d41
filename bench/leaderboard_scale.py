"""How fast is the leaderboard at Arena scale? A real workspace with 2M people's votes on 200 models.

Run: python bench/leaderboard_scale.py [--votes 2000000] [--models 200] [--home DIR]
Goal (issue 17): the leaderboard with 2M votes drawn in at most 3 s. Prints the seconds to build the
board (`leaderboard.build`, as the page calls it), and for its parts: reading the votes' counts
from SQLite and rating them. The workspace is made once per --home and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def fill(db, votes: int, models: int, seed: int = 0) -> None:
    """One imported campaign: 100 judges vote on votes/100 pairs between random models with known ratings."""
    rng = np.random.default_rng(seed)
    names = [f"m{i:0{len(str(models - 1))}d}" for i in range(models)]
    true = np.linspace(1000, 1400, models)
    judges = 100
    n_pairs = votes // judges
    with db.conn:
        db.execute("INSERT INTO campaigns(name, source, models_json, samples, overlap, settings_json, guidelines, "
                   "status, progress, created_at) VALUES ('arena', 'import:arena', ?, 1, 1, '{}', '', 'ready', 1, ?)",
                   [json.dumps(names), time.time()])
        cid = db.execute("SELECT id FROM campaigns WHERE name = 'arena'").fetchone()[0]
        db.execute("INSERT INTO campaign_prompts(campaign_id, idx, messages_json, gold) VALUES (?, 0, '[]', 0)", [cid])
        pid = db.execute("SELECT max(id) FROM campaign_prompts").fetchone()[0]
        db.conn.executemany("INSERT INTO responses(id, prompt_id, model, sample, text, settings_json, created_at) "
                            "VALUES (?, ?, ?, 0, '', '{}', 0)", [(i + 1, pid, m) for i, m in enumerate(names)])
        a = rng.integers(0, models, n_pairs)
        b = (a + rng.integers(1, models, n_pairs)) % models
        db.conn.executemany("INSERT INTO pairs(id, campaign_id, prompt_id, response_a, response_b, votes_needed, "
                            "n_votes, position) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                            [(k + 1, cid, pid, int(i) + 1, int(j) + 1, judges, k) for k, (i, j) in enumerate(zip(a, b))])
        p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
        for u in range(judges):
            win = rng.random(n_pairs) < p
            db.conn.executemany(
                "INSERT INTO votes(pair_id, campaign_id, annotator_id, annotator, choice, cast_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(k + 1, cid, -1 - u, f"judge{u}", "a" if w else "b", u * n_pairs + k) for k, w in enumerate(win)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=2_000_000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--home", default=None, help="workspace to make or reuse (default: a temp folder)")
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="tunelab-lb-"))
    os.environ["TUNELAB_HOME"] = str(home)
    from tunelab import db as dbmod, feedback, leaderboard, workspace
    ws = workspace.current()
    db = dbmod.connect(ws.db_path)
    have = db.execute("SELECT count(*) FROM votes").fetchone()[0]
    if have != args.votes:
        if have:
            raise SystemExit(f"{home} holds {have} votes, not {args.votes}: give another --home")
        t = time.perf_counter()
        fill(db, args.votes, args.models)
        print(f"made {args.votes} votes in {home} in {time.perf_counter() - t:.1f} s")
    for _ in range(2):  # the second is what a page reload sees (SQLite pages cached)
        t0 = time.perf_counter()
        counts = feedback.battle_counts(db)
        t1 = time.perf_counter()
        board = leaderboard.build(db)
        t2 = time.perf_counter()
    print(f"{args.votes} votes, {args.models} models")
    print(f"  counts from SQLite          {t1 - t0:6.2f} s")
    print(f"  leaderboard.build           {t2 - t1:6.2f} s   (goal: the page in <= 3 s)")
    print(f"  rows {len(board['rows'])}, votes {board['votes']}, groups {len(counts['groups'])}")


if __name__ == "__main__":
    main()
