"""How quickly the app answers, in real Chromium: the first page, a vote, and the Runs page with 100 runs.

    python bench/ui.py [--rounds 3] [--votes 20]

Prints each figure with its goal, then one summary table:
  1. cold start: `streamlit run streamlit_app.py` to the home page drawn, on a new workspace (goal <= 3 s);
     measured by bench/startup.py's `one_round`, median of --rounds. For scale, each round also starts
     an empty Streamlit app the same way: the floor that no change in tunelab can go under.
  2. labeling: the click on a vote button to the next pair's prompt and both answers on screen
     (goal <= 300 ms); timed inside the page, from the click event to the animation frame that shows
     them. An annotator signs in to a campaign whose answers are stored directly (no model runs),
     as in tests/e2e/test_labeling.py; p50, p95 and max of --votes votes.
  3. the Runs page with 100 runs (goal <= 1 s to the runs table drawn): (a) from a click on "Runs" in
     the sidebar, on the home page, and (b) a browser reload of /runs; median and max of --rounds.
     For scale it also times a reload of the home page, which is mostly the browser setting up
     Streamlit's frontend again. The runs are completed-run rows written straight into the `runs`
     table, each with a run folder (config.yaml, status.json, train.log, and a metrics.jsonl of 50
     train and 5 eval lines), because no core function records a finished run without training one.

Each part starts its own server (tests/conftest.py's App) on its own temporary workspace. The figures
are noisy on a busy 2-core machine; run it twice and compare medians.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import startup  # noqa: E402
from tunelab import auth, feedback, workspace  # noqa: E402
from tunelab import db as dbmod  # noqa: E402
from tunelab.train import config as configmod  # noqa: E402
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, App, sign_in, wait_for_app  # noqa: E402

GOAL_START_S, GOAL_VOTE_MS, GOAL_RUNS_S = 3.0, 300, 1.0
FILLER = ("The answer walks through the question step by step, names the assumptions it makes, and ends with "
          "a short summary that a reader can check against the source. ") * 3


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94] if len(values) > 1 else values[0]


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    return context, page


# ---------------------------------------------------------------- 1. cold start

# The floor under the same load: Streamlit itself, with an app that draws one line and imports nothing.
EMPTY_APP = 'import streamlit as st\n\nst.subheader("Getting started")\n'


def bench_start(browser, rounds: int) -> tuple[list[float], list[float]]:
    """Cold starts of the app and of an empty Streamlit app, one after the other in each round."""
    empty = Path(tempfile.mkdtemp(prefix="tunelab-bench-ui-")) / "streamlit_app.py"
    empty.write_text(EMPTY_APP)
    app, floor = [], []
    for _ in range(rounds):
        app.append(startup.one_round(browser)[0])
        floor.append(startup.one_round(browser, empty)[0])
    shutil.rmtree(empty.parent)
    return app, floor


# ---------------------------------------------------------------- 2. labeling

PASSWORD = "annotator pw"
# True, in an animation frame, once the pair after `old` shows: progress `done of total`, one prompt
# (not number `old`) and both of its answers. It notes the frame's time for the caller.
NEXT_PAIR_SHOWN = """({old, done, total}) => {
    const text = document.body.innerText;
    if (!new RegExp(`(^|\\\\D)${done} of ${total}(\\\\D|$)`).test(text)) return false;
    const shown = [...text.matchAll(/Question number (\\d+)\\?/g)].map(m => Number(m[1]));
    if (shown.length !== 1 || shown[0] === old) return false;
    if (!text.includes(`Alpha answer ${shown[0]}:`) || !text.includes(`Beta answer ${shown[0]}:`)) return false;
    window.__shownAt = performance.now();
    return true;
}"""


def seed_campaign(home: Path, pairs: int) -> None:
    """An admin, an annotator and a ready campaign of `pairs` pairs, answers stored as if generated."""
    ws = workspace.Workspace(home).ensure()
    conn = dbmod.connect(ws.db_path)
    auth.add_user(conn, "root", "admin", "admin password")
    auth.add_user(conn, "ann", "annotator", PASSWORD)
    for name in ("alpha", "beta"):  # two model rows are all a campaign needs (as in bench/votes.py)
        conn.execute("INSERT INTO models(name, kind, source, path, created_at) VALUES (?, 'base', 'local', ?, 0)",
                     [name, str(home)])
    c = feedback.create_campaign(conn, ws, "bench", ["alpha", "beta"],
                                 prompts=[f"Question number {i}?" for i in range(pairs)],
                                 config=feedback.CampaignConfig(overlap=1, guidelines="Pick the **better** one."))
    ids = [pid for pid, _ in feedback.prompts(conn, c)]
    feedback.store_responses(conn, c, "alpha", 0, ids, [f"Alpha answer {i}: {FILLER}" for i in range(pairs)])
    feedback.store_responses(conn, c, "beta", 0, ids, [f"Beta answer {i}: {FILLER}" for i in range(pairs)])
    feedback.build_pairs(conn, c)
    conn.close()


def bench_labeling(browser, votes: int) -> list[float]:
    """Milliseconds from each vote click to the next pair shown."""
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-ui-")) / "home"
    total = votes + 1  # one pair is left on screen after the last vote
    seed_campaign(home, total)
    app = App(home)
    context, page = new_page(browser)
    try:
        sign_in(page, app, "ann", PASSWORD)
        page.get_by_text(f"0 of {total}").wait_for()
        wait_for_app(page)
        page.evaluate("() => document.addEventListener('click', () => { window.__clickAt = performance.now(); }, true)")
        buttons = ["A > B", "B > A", "Tie", "A ≫ B", "Both bad", "B ≫ A"]
        times = []
        for n in range(1, votes + 1):
            old = int(page.get_by_text("Question number").inner_text().split()[-1].rstrip("?"))
            page.get_by_role("button", name=buttons[n % len(buttons)]).click()  # the name also holds the shortcut
            page.wait_for_function(NEXT_PAIR_SHOWN, arg={"old": old, "done": n, "total": total}, polling="raf")
            times.append(page.evaluate("() => window.__shownAt - window.__clickAt"))
            wait_for_app(page)  # an annotator reads before the next vote; the run ends meanwhile
        return times
    finally:
        context.close()
        app.stop()
        shutil.rmtree(home.parent)


# ---------------------------------------------------------------- 3. the Runs page

METRIC_LINES, EVAL_EVERY = 50, 10
TABLE_DRAWN = """() => {
    const h1 = [...document.querySelectorAll('h1')].some(h => h.innerText.trim() === 'Runs');
    const canvas = document.querySelector('[data-testid="stDataFrame"] canvas');
    if (!h1 || !canvas || canvas.getBoundingClientRect().height < 100) return false;
    window.__shownAt = performance.now();
    return true;
}"""


def seed_runs(home: Path, n: int) -> None:
    """`n` completed LoRA SFT runs on one model and dataset, learning rates varied, each with its folder."""
    ws = workspace.Workspace(home).ensure()
    conn = dbmod.connect(ws.db_path)
    now = time.time()
    for i in range(1, n + 1):
        run_id, lr = f"r{i}", 1e-4 * (1 + i % 5)
        cfg = configmod.from_dict({"method": "sft", "base_model": "tiny", "dataset": "acme@1", "max_steps": METRIC_LINES,
                                   "learning_rate": lr, "eval_steps": EVAL_EVERY, "seed": i})
        folder = Path(ws.runs_dir) / run_id
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(configmod.to_yaml(cfg))
        lines, loss = [], 3.0
        for step in range(1, METRIC_LINES + 1):
            loss *= 0.97 + 0.01 * math.sin(step + i)
            lines.append({"kind": "train", "step": step, "loss": round(loss, 4), "learning_rate": lr * (1 - step / 60),
                          "grad_norm": 1.5 + math.cos(step), "tokens": 512 * step, "elapsed": 2.0 * step, "epoch": 0.1 * step})
            if step % EVAL_EVERY == 0:
                lines.append({"kind": "eval", "step": step, "eval_loss": round(loss * 1.1, 4), "elapsed": 2.0 * step})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (folder / "status.json").write_text(json.dumps({
            "run_id": run_id, "state": "completed", "phase": "done", "step": METRIC_LINES, "max_steps": METRIC_LINES,
            "progress": 1.0, "loss": round(loss, 4), "eval_loss": round(loss * 1.1, 4), "tokens": 512 * METRIC_LINES,
            "tokens_per_s": 256.0, "elapsed_s": 100.0, "finished_at": now}))
        (folder / "train.log").write_text("".join(f"step {x['step']}/{METRIC_LINES} loss {x['loss']:.4f}\n"
                                                  for x in lines if x["kind"] == "train"))
        created = now - 3600 * (n - i)
        conn.execute(
            "INSERT INTO runs(id, method, base_model, dataset, tuning, status, created_at, started_at, finished_at, "
            "attempt_started_at, run_seconds, config_json, folder, device, est_seconds, est_usd, hour_usd) "
            "VALUES (?, 'sft', 'tiny', 'acme@1', 'lora', 'completed', ?, ?, ?, ?, 100, ?, ?, 'cpu', 110, 0.001, 0.03)",
            [run_id, created, created + 1, created + 101, created + 1, json.dumps(configmod.to_dict(cfg)), str(folder)])
    conn.close()


def bench_runs(browser, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds to the runs table drawn, after a click on "Runs" in the sidebar and after a reload of /runs;
    and, for scale, seconds from a reload of the home page to its text drawn (the browser loading
    Streamlit's frontend is most of any reload)."""
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-ui-")) / "home"
    seed_runs(home, 100)
    app = App(home)  # no users: the local admin, no sign-in
    context, page = new_page(browser)
    nav, reload, home_reload = [], [], []
    try:
        # The home page first: until some session has run streamlit_app.py (st.navigation), Streamlit
        # runs a page URL opened directly as a bare pages/ script, without the app's navigation.
        page.goto(app.url)
        page.get_by_text("Getting started").wait_for()
        page.goto(f"{app.url}/runs")  # a first visit, so the page's imports are done before timing
        page.wait_for_function(TABLE_DRAWN)
        wait_for_app(page)
        for _ in range(rounds):
            page.goto(app.url)
            page.get_by_text("Getting started").wait_for()
            wait_for_app(page)
            t0 = time.perf_counter()
            page.reload(wait_until="commit")
            page.get_by_text("Getting started").wait_for()
            home_reload.append(time.perf_counter() - t0)
            wait_for_app(page)
            page.evaluate("() => document.addEventListener('click', () => { window.__clickAt = performance.now(); }, true)")
            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Runs").click()
            page.wait_for_function(TABLE_DRAWN, polling="raf")
            nav.append(page.evaluate("() => (window.__shownAt - window.__clickAt) / 1000"))
            wait_for_app(page)

            t0 = time.perf_counter()
            page.reload(wait_until="commit")
            page.wait_for_function(TABLE_DRAWN, polling="raf")
            reload.append(time.perf_counter() - t0)
            wait_for_app(page)
        return nav, reload, home_reload
    finally:
        context.close()
        app.stop()
        shutil.rmtree(home.parent)


# ---------------------------------------------------------------- report

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="cold starts, and Runs page navigations and reloads")
    ap.add_argument("--votes", type=int, default=20)
    args = ap.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        start, floor = bench_start(browser, args.rounds)
        print(f"cold start (streamlit run -> home drawn): median {statistics.median(start):.2f} s, "
              f"rounds {', '.join(f'{x:.2f}' for x in start)} (goal <= {GOAL_START_S:.0f} s)")
        print(f"for scale, an empty Streamlit app's cold start: median {statistics.median(floor):.2f} s, "
              f"rounds {', '.join(f'{x:.2f}' for x in floor)}", flush=True)
        votes = bench_labeling(browser, args.votes)
        print(f"labeling (vote click -> next pair shown): p50 {statistics.median(votes):.0f} ms, "
              f"p95 {p95(votes):.0f} ms, max {max(votes):.0f} ms over {len(votes)} votes "
              f"(goal <= {GOAL_VOTE_MS} ms)", flush=True)
        nav, reload, home_reload = bench_runs(browser, args.rounds)
        for name, xs in (("sidebar click", nav), ("reload", reload)):
            print(f"runs page, 100 runs ({name} -> table drawn): median {statistics.median(xs):.2f} s, "
                  f"max {max(xs):.2f} s, rounds {', '.join(f'{x:.2f}' for x in xs)} (goal <= {GOAL_RUNS_S:.0f} s)")
        print(f"for scale, home page reload -> drawn: median {statistics.median(home_reload):.2f} s, "
              f"rounds {', '.join(f'{x:.2f}' for x in home_reload)}")
        browser.close()

    rows = [("cold start, median", f"{statistics.median(start):.2f} s", f"<= {GOAL_START_S:.0f} s",
             statistics.median(start) <= GOAL_START_S),
            ("vote -> next pair, p95", f"{p95(votes):.0f} ms", f"<= {GOAL_VOTE_MS} ms", p95(votes) <= GOAL_VOTE_MS),
            ("runs page via sidebar, median", f"{statistics.median(nav):.2f} s", f"<= {GOAL_RUNS_S:.0f} s",
             statistics.median(nav) <= GOAL_RUNS_S),
            ("runs page reload, median", f"{statistics.median(reload):.2f} s", f"<= {GOAL_RUNS_S:.0f} s",
             statistics.median(reload) <= GOAL_RUNS_S)]
    print(f"\n{'figure':<32}{'measured':>10}{'goal':>11}  result")
    for name, measured, goal, met in rows:
        print(f"{name:<32}{measured:>10}{goal:>11}  {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
