"""How quickly the app answers, in real Chromium: the first page, a vote, and the Runs page with 100 runs.

    python bench/ui.py [--rounds 5] [--votes 20] [--under-training]

Prints each figure with its goal, then one summary table:
  1. cold start: `streamlit run streamlit_app.py` to the home page drawn, on a new workspace (goal: within
     0.3 s of an empty Streamlit app); measured by bench/startup.py's `one_round`, median of --rounds.
     Each round also starts an empty Streamlit app the same way: the floor that no change in tunelab can
     go under. Idle mode only.
  2. labeling: the click on a vote button to the next pair's prompt and both answers on screen
     (goal: p95 <= 300 ms); timed inside the page, from the click event to the animation frame that shows
     them. An annotator signs in to a campaign whose answers are stored directly (no model runs),
     as in tests/e2e/test_labeling.py; p50, p95 and max of --votes votes.
  3. the Runs page with 100 runs (goal: reload p95 <= 1 s to the runs table drawn): (a) from a click on
     "Runs" in the sidebar, on the home page, and (b) a browser reload of /runs; median, p95 and max of
     --rounds. For scale it also times a reload of the home page, which is mostly the browser setting up
     Streamlit's frontend again. The runs are completed-run rows written straight into the `runs`
     table with their completed `train` jobs, each with a run folder (config.yaml, status.json, train.log,
     and a metrics.jsonl of 50 train and 5 eval lines), because no core function records a finished run
     without training one.

--under-training: an engineer watches the Runs page while a run trains on the same cores. Parts 2 and 3
are measured while a real LoRA SFT run of the prepared SmolLM2 (the tests' cached copy, as bench/demo.py
uses it) trains on the sample dataset, launched with `runs.launch` into the Runs page's workspace: it is
the 100th run, the newest, so the page opens on its live view, which refreshes itself every 2 s. The
bench waits for its first step, checks that it is still running after the measurement, stops it, and
prints the steps it did meanwhile and its trained tokens/s over them.

Each part starts its own server (tests/conftest.py's App) on its own temporary workspace. The figures
are noisy on a busy 2-core machine; run each mode twice and compare.
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

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import startup  # noqa: E402
from bench import demo  # noqa: E402
from tunelab import auth, datasets, feedback, jobs, leaderboard, models, runs, workspace  # noqa: E402
from tunelab import db as dbmod  # noqa: E402
from tunelab.train import config as configmod  # noqa: E402
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, App, sign_in, wait_for_app, wait_for_pair  # noqa: E402

GOAL_START_OVER_S, GOAL_VOTE_MS, GOAL_RUNS_S = 0.3, 300, 1.0  # cold start: seconds over an empty app
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
LOST_S = 10  # a vote click that brought no next pair in this long was lost
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


def bench_labeling(browser, votes: int) -> tuple[list[float], int]:
    """Milliseconds from each vote click to the next pair shown, and the clicks that were lost (the same pair
    stays after LOST_S; the bench then clicks again and times the click that counted). The next pair's
    text shows before its buttons: the bench clicks only once they are drawn, as an annotator reads first.
    A click on the buttons before them names the pair just voted, and is not counted (the page says so)."""
    home = Path(tempfile.mkdtemp(prefix="tunelab-bench-ui-")) / "home"
    total = votes + 1  # one pair is left on screen after the last vote
    seed_campaign(home, total)
    app = App(home)
    conn = app.db()
    [(ann,)] = conn.execute("SELECT id FROM users WHERE name = 'ann'").fetchall()
    context, page = new_page(browser)
    try:
        sign_in(page, app, "ann", PASSWORD)
        page.get_by_text(f"0 of {total}").wait_for()
        wait_for_app(page)
        page.evaluate("() => document.addEventListener('click', () => { window.__clickAt = performance.now(); }, true)")
        buttons = ["A > B", "B > A", "Tie", "A ≫ B", "Both bad", "B ≫ A"]
        times, lost = [], 0
        for n in range(1, votes + 1):
            old = int(page.get_by_text("Question number").inner_text().split()[-1].rstrip("?"))
            for attempt in range(3):
                page.get_by_role("button", name=buttons[n % len(buttons)]).click()  # the name also holds the shortcut
                try:
                    page.wait_for_function(NEXT_PAIR_SHOWN, arg={"old": old, "done": n, "total": total},
                                           polling="raf", timeout=LOST_S * 1000)
                    break
                except PlaywrightTimeout:
                    recorded = conn.execute("SELECT count(*) FROM votes").fetchone()[0]
                    lost += 1
                    print(f"  vote {n}: no next pair {LOST_S} s after the click; votes recorded: {recorded} of {n}",
                          flush=True)
            else:
                sys.exit(f"vote {n} (on question {old}) did not bring the next pair in 3 clicks; the page shows:\n"
                         f"{page.inner_text('body')[:2000]}")
            times.append(page.evaluate("() => window.__shownAt - window.__clickAt"))
            wait_for_pair(page, conn, ann)  # an annotator reads before the next vote; the run ends meanwhile
            wait_for_app(page)
        return times, lost
    finally:
        conn.close()
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
            "INSERT INTO runs(id, method, base_model, dataset, tuning, created_at, config_json, folder, device, "
            "est_seconds, est_usd, hour_usd) VALUES (?, 'sft', 'tiny', 'acme@1', 'lora', ?, ?, ?, 'cpu', 110, 0.001, 0.03)",
            [run_id, created, json.dumps(configmod.to_dict(cfg)), str(folder)])
        conn.execute(  # its job, which holds the run's lifecycle (core/jobs.py)
            "INSERT INTO jobs(kind, target, status, folder, created_at, started_at, finished_at, attempt_started_at, "
            "run_seconds) VALUES ('train', ?, 'completed', ?, ?, ?, ?, ?, 100)",
            [run_id, f"runs/{run_id}", created, created + 1, created + 101, created + 1])
    conn.close()


def bench_runs(browser, home: Path, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Seconds to the runs table drawn, after a click on "Runs" in the sidebar and after a reload of /runs;
    and, for scale, seconds from a reload of the home page to its text drawn (the browser loading
    Streamlit's frontend is most of any reload)."""
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


# ---------------------------------------------------------------- the training run (--under-training)

# LoRA SFT as the demo trains it (tunelab.leaderboard.DEMO_TRAIN), for longer than any measurement, with no
# checkpoint or eval in the way: the load is the training step itself. One row a step (about 5 s on 2 busy
# cores, against 20 s for the demo's 4) keeps both cores as busy and shows the steps advancing.
TRAIN = {**leaderboard.DEMO_TRAIN, "per_device_train_batch_size": 1, "max_steps": 10_000, "save_steps": 10_000,
         "eval_steps": 10_000}


def start_training(home: Path):
    """A real run in `home`, launched as the Launch page does, once it has done its first step; returns
    (db, run id). Its model is the prepared SmolLM2 of the tests' cache (bench/demo.py)."""
    demo.prepared_workspace(home)
    ws = workspace.Workspace(home)
    conn = dbmod.connect(ws.db_path)
    datasets.import_file(conn, ws, leaderboard.DEMO_DATA, "acme-router")
    run_id = runs.launch(conn, ws, {**TRAIN, "base_model": models.DEFAULT_MODEL, "dataset": "acme-router"})
    deadline = time.time() + 600
    while runs.get(conn, run_id).progress().get("step", 0) < 1:
        jobs.reconcile(conn)
        run = runs.get(conn, run_id)
        if run.status != "running" or time.time() > deadline:
            sys.exit(f"training run {run_id} is {run.status} before its first step: {run.error} "
                     f"(see {run.path / 'train.log'})")
        time.sleep(1)
    return conn, run_id


def training_figures(ws, run_id: str, first_step: int) -> tuple[int, float | None]:
    """Steps done since `first_step`, and the trained tokens/s over them (metrics.jsonl)."""
    lines = {m["step"]: m for m in runs.read_metrics(ws, run_id) if m.get("kind") == "train"}
    last = max(lines, default=first_step)
    if last <= first_step or first_step not in lines:
        return last - first_step, None
    a, b = lines[first_step], lines[last]
    return last - first_step, (b["tokens"] - a["tokens"]) / (b["elapsed"] - a["elapsed"])


# ---------------------------------------------------------------- report

def spread(xs: list[float], unit: str = "s", digits: int = 2) -> str:
    return (f"median {statistics.median(xs):.{digits}f} {unit}, p95 {p95(xs):.{digits}f} {unit}, "
            f"max {max(xs):.{digits}f} {unit}, rounds {', '.join(f'{x:.{digits}f}' for x in xs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="cold starts, and Runs page navigations and reloads")
    ap.add_argument("--votes", type=int, default=20)
    ap.add_argument("--under-training", action="store_true",
                    help="measure labeling and the Runs page while a LoRA SFT run of SmolLM2 trains (no cold start)")
    args = ap.parse_args()
    runs_home = Path(tempfile.mkdtemp(prefix="tunelab-bench-ui-")) / "home"
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        if not args.under_training:
            start, floor = bench_start(browser, args.rounds)
            over = statistics.median(start) - statistics.median(floor)
            print(f"cold start (streamlit run -> home drawn): {spread(start)}")
            print(f"an empty Streamlit app's cold start: {spread(floor)}")
            print(f"cold start over the empty app: {over:+.2f} s (goal <= +{GOAL_START_OVER_S} s)", flush=True)
            rows.append(("cold start over empty app", f"{over:+.2f} s", f"<= +{GOAL_START_OVER_S} s",
                         over <= GOAL_START_OVER_S))
        # The training run is the 100th run of the Runs page's workspace, so it is launched after the others.
        seed_runs(runs_home, 99 if args.under_training else 100)
        train_db = run_id = None
        try:
            if args.under_training:
                train_db, run_id = start_training(runs_home)
                first_step, t0 = runs.get(train_db, run_id).progress()["step"], time.time()
                print(f"training: run {run_id} (LoRA SFT of {models.DEFAULT_MODEL}) at step {first_step}", flush=True)
            votes, lost = bench_labeling(browser, args.votes)
            print(f"labeling (vote click -> next pair shown): {spread(votes, 'ms', 0)} (goal p95 <= {GOAL_VOTE_MS} ms); "
                  f"lost clicks (nothing after {LOST_S} s, clicked again): {lost}", flush=True)
            nav, reload, home_reload = bench_runs(browser, runs_home, args.rounds)
            for name, xs in (("sidebar click", nav), ("reload", reload)):
                print(f"runs page, 100 runs ({name} -> table drawn): {spread(xs)} (goal p95 <= {GOAL_RUNS_S:.0f} s)")
            print(f"for scale, home page reload -> drawn: {spread(home_reload)}")
            if args.under_training:
                jobs.reconcile(train_db)
                status = runs.get(train_db, run_id).status
                steps, tps = training_figures(workspace.Workspace(runs_home), run_id, first_step)
                print(f"training: run {run_id} {status} throughout, {steps} steps in the {time.time() - t0:.0f} s "
                      f"measured, " + (f"{tps:.1f} trained tokens/s" if tps else "tokens/s unknown"))
                if status != "running" or steps < 1:
                    sys.exit(f"run {run_id} did not train through the measurement (see {runs_home}/runs/{run_id})")
        finally:
            if run_id is not None:
                jobs.reconcile(train_db)
                if runs.get(train_db, run_id).status in jobs.ACTIVE:
                    runs.stop(train_db, run_id, grace_s=10)
                train_db.close()
            shutil.rmtree(runs_home.parent)
        browser.close()

    rows += [("vote -> next pair, p95", f"{p95(votes):.0f} ms", f"<= {GOAL_VOTE_MS} ms", p95(votes) <= GOAL_VOTE_MS),
             ("runs page via sidebar, p95", f"{p95(nav):.2f} s", f"<= {GOAL_RUNS_S:.0f} s", p95(nav) <= GOAL_RUNS_S),
             ("runs page reload, p95", f"{p95(reload):.2f} s", f"<= {GOAL_RUNS_S:.0f} s", p95(reload) <= GOAL_RUNS_S)]
    print(f"\n{'figure (' + ('under training' if args.under_training else 'idle') + ')':<32}{'measured':>10}"
          f"{'goal':>11}  result")
    for name, measured, goal, met in rows:
        print(f"{name:<32}{measured:>10}{goal:>11}  {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
