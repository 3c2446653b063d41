"""How fast is the leaderboard at Arena scale? A real workspace with 2M people's votes on 200 models.

Run: python bench/leaderboard_scale.py [--votes 2000000] [--models 200] [--home DIR] [--page [--rounds 5]]
Goal (issue 17): the leaderboard with 2M votes drawn in at most 3 s. Prints the seconds to build the
board (`leaderboard.build`, as the page calls it), and for its parts: reading the votes' counts
from SQLite and rating them. The workspace is made once per --home and reused.

--page also times the Leaderboard page itself: the real app (tests/conftest.py's App, as bench/ui.py
starts it) on that workspace, opened in headless Chromium as the local admin. It opens the home page
first (until a session has run streamlit_app.py, a page URL runs as a bare script), then goes to
/leaderboard (the first visit, which also imports the page's altair and pandas) and reloads it --rounds
times (the page keeps the board while nothing is committed), then --rounds times more, each just after a
vote lands (one judge changes a vote, undone after the reload): the board is built again. Each figure
runs from navigation to the board drawn: the table with one row per model and the
ratings chart's SVG holding one interval line and one point per model (BOARD_DRAWN). For where the time
goes it also notes, in the page's own clock, when the title showed (the server began the script), when
the caption showed (`leaderboard.build` had returned) and when the table and the chart were complete.
Each figure is printed with /proc/loadavg before and after it: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 3.0


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


# Polled on every animation frame after a navigation: notes, in the page's clock (ms since the navigation
# began), when each part first showed, and is true once the whole board is drawn: the table's rows and
# the ratings chart's SVG marks (a rule and a point per rated model; the chart draws after the table).
BOARD_DRAWN = """(n) => {
    const m = window.__lb || (window.__lb = {});
    const now = performance.now();
    if (!m.title && [...document.querySelectorAll('h1')].some(h => h.innerText.trim() === 'Leaderboard')) m.title = now;
    const main = document.querySelector('[data-testid="stMain"]');
    if (!m.caption && main && main.innerText.includes('Last updated')) m.caption = now;
    if (!m.table && document.querySelectorAll('[data-testid="stTable"] tbody tr').length >= n) m.table = now;
    const svg = document.querySelector('[data-testid="stVegaLiteChart"] svg.marks');
    if (!m.chart && svg && svg.querySelectorAll('.mark-rule.role-mark line').length >= n
        && svg.querySelectorAll('.mark-symbol.role-mark path').length >= n) m.chart = now;
    return m.table && m.chart ? m : false;
}"""


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def open_board(page, go, n: int) -> tuple[float, dict]:
    """Seconds from `go()` (a navigation) to the board drawn, and the page's milestones in seconds."""
    t0 = time.perf_counter()
    go()
    marks = page.wait_for_function(BOARD_DRAWN, arg=n, polling="raf", timeout=120_000).json_value()
    return time.perf_counter() - t0, {k: v / 1000 for k, v in marks.items()}


def vote_lands(db, pair_id: int):
    """Judge 0 changes their vote on `pair_id` (UNIQUE(pair, annotator) makes it an update of the vote);
    returns the undo, which casts the vote as `fill` made it again."""
    from tunelab import db as dbmod
    from tunelab.feedback.votes import write_vote
    cid, choice, cast_at = db.execute("SELECT campaign_id, choice, cast_at FROM votes WHERE pair_id = ? AND "
                                      "annotator_id = -1", [pair_id]).fetchone()

    def cast(what: str, at: float) -> None:
        with dbmod.transaction(db):
            write_vote(db, pair_id, cid, -1, "judge0", what, None, None, None, None, at)
    cast("b" if choice == "a" else "a", time.time())
    return lambda: cast(choice, cast_at)


def time_page(db, home: Path, votes: int, n: int, rounds: int) -> None:
    """The Leaderboard page on the app over `home` (`votes` votes on `n` models): the first visit, then
    `rounds` reloads, then `rounds` reloads each after a vote lands."""
    from playwright.sync_api import sync_playwright
    sys.path.insert(0, str(REPO))
    from tests.conftest import CHROMIUM, CHROMIUM_ARGS, App, wait_for_app

    def show(what: str, seconds: float, marks: dict, before: str) -> None:
        print(f"  {what:<12}{seconds:6.2f} s  (title {marks['title']:.2f}, caption {marks['caption']:.2f}, "
              f"table {marks['table']:.2f}, chart {marks['chart']:.2f} s)  load {before} -> {load()}", flush=True)

    app = App(home)  # no users in the workspace: the local admin, no sign-in
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(120_000)
            page.goto(app.url)
            page.get_by_text("Getting started").wait_for()
            wait_for_app(page)
            before = load()
            first, marks = open_board(page, lambda: page.goto(f"{app.url}/leaderboard", wait_until="commit"), n)
            show("first visit", first, marks, before)
            wait_for_app(page)
            reloads, after_vote = [], []
            for k in range(2 * rounds):
                undo = vote_lands(db, k + 1) if k >= rounds else None
                before = load()
                seconds, marks = open_board(page, lambda: page.reload(wait_until="commit"), n)
                show("after vote" if undo else "reload", seconds, marks, before)
                (after_vote if undo else reloads).append(seconds)
                wait_for_app(page)
                if undo:
                    undo()
            browser.close()
    finally:
        app.stop()
        Path(app.log.name).unlink()
    print(f"  reloads: median {statistics.median(reloads):.2f} s, max {max(reloads):.2f} s over {rounds}; "
          f"after a vote lands: median {statistics.median(after_vote):.2f} s, max {max(after_vote):.2f} s; "
          f"first visit {first:.2f} s")
    print(f"leaderboard page with {votes} votes: {statistics.median(reloads):.2f} s (goal <= {GOAL_S:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=2_000_000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--home", default=None, help="workspace to make or reuse (default: a temp folder)")
    ap.add_argument("--page", action="store_true", help="also time the Leaderboard page in Chromium")
    ap.add_argument("--rounds", type=int, default=5, help="page reloads timed after the first visit")
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
    print(f"  rows {len(board['rows'])}, votes {board['votes']}, groups {len(counts['groups'])}", flush=True)
    if args.page:
        time_page(db, home, args.votes, args.models, args.rounds)


if __name__ == "__main__":
    main()
