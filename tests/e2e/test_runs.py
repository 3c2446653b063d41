"""Launch, watch and stop a run in Chromium; a viewer sees the run read-only."""
import re
import time

import pytest
from playwright.sync_api import expect

from tests.conftest import REPO, App, sign_in, stop_leftover_runs, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]
PASSWORD = "correct horse"


def _pick(page, label: str, option: str) -> None:
    page.get_by_test_id("stSelectbox").filter(has_text=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def signed_in(page, app, name: str) -> None:
    """Sign in; the server-set session cookie keeps the session for another URL opened next."""
    sign_in(page, app, name, PASSWORD)


def _step(page) -> int:
    text = page.get_by_test_id("stMetric").filter(has_text="Step").inner_text()
    return int(re.search(r"(\d+)\s*/", text).group(1))


@pytest.fixture
def app_db(app, tiny_model_dir):
    """The app's workspace with an engineer, a viewer, the tiny model and the sample data."""
    from tunelab import auth, datasets, models
    from tunelab.workspace import Workspace
    db, ws = app.db(), Workspace(app.home).ensure()
    auth.add_user(db, "root", "admin", PASSWORD)  # the first user must be an admin
    auth.add_user(db, "eve", "engineer", PASSWORD)
    auth.add_user(db, "vic", "viewer", PASSWORD)
    models.add_local(db, tiny_model_dir, "tiny")
    datasets.import_file(db, ws, REPO / "data" / "samples" / "acme_router_sft.jsonl", "acme")
    yield db
    stop_leftover_runs(db)


@pytest.mark.timeout(400)
def test_engineer_launches_watches_and_stops_a_run(app, app_db, page, browser):
    db = app_db

    signed_in(page, app, "eve")
    page.goto(f"{app.url}/launch")
    page.get_by_role("heading", name="Launch a training run").wait_for()
    wait_for_app(page)
    _pick(page, "base_model", "tiny")
    for label, value in (("max_steps", "500"), ("per_device_train_batch_size", "2"), ("max_length", "96")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Tab")
    page.get_by_role("button", name="Preview config and estimate").click()
    expect(page.get_by_test_id("stCode").first).to_contain_text("max_steps: 500")
    expect(page.get_by_test_id("stMetric").filter(has_text="Estimated cost")).to_contain_text("$")
    page.get_by_role("button", name="Launch").click()
    page.get_by_text(re.compile(r"Launched run r1")).wait_for()
    assert db.execute("SELECT base_model, dataset FROM runs WHERE id = 'r1'").fetchone() == ("tiny", "acme@1")

    page.get_by_role("link", name="Watch r1 on the Runs page").click()
    page.get_by_role("heading", name="Runs").wait_for()
    deadline = time.time() + 180
    while _step(page) < 1 and time.time() < deadline:  # the live view refreshes itself every 2 s
        time.sleep(0.5)
    first = _step(page)
    assert first >= 1
    while _step(page) <= first and time.time() < deadline:
        time.sleep(0.5)
    assert _step(page) > first

    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("stopped").filter(visible=True).first).to_be_visible(timeout=60_000)  # not the hidden Jobs tab
    assert db.execute("SELECT status FROM jobs WHERE kind = 'train' AND target = 'r1'").fetchone()[0] == "stopped"
    expect(page.get_by_role("button", name="Resume")).to_be_visible()

    viewer = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        vp = viewer.new_page()
        signed_in(vp, app, "vic")
        vp.goto(f"{app.url}/runs")
        vp.get_by_role("heading", name="Runs").wait_for()
        expect(vp.get_by_test_id("stMetric").filter(has_text="Step")).to_be_visible()
        wait_for_app(vp)
        expect(vp.get_by_role("button", name="Resume")).to_have_count(0)
        expect(vp.get_by_role("button", name="Stop")).to_have_count(0)
        vp.goto(f"{app.url}/launch")
        expect(vp.get_by_text("Not allowed")).to_be_visible()
    finally:
        viewer.close()


@pytest.mark.timeout(300)
def test_run_named_in_the_url_opens_and_the_url_follows_the_pick(app, app_db, page):
    """The Leaderboard links to /runs?run=ID: that run opens, not the newest, and picking another run
    puts it in the URL (to share or reload)."""
    from tunelab import runs, workspace
    from tunelab.workspace import Workspace
    db, ws = app_db, Workspace(app.home)
    workspace.set_setting(db, "max_concurrent_jobs", 0)  # a paused queue: the runs stay queued, nothing trains
    config = {"method": "sft", "base_model": "tiny", "dataset": "acme", "max_steps": 1}
    assert [runs.launch(db, ws, config, estimate=False) for _ in range(3)] == ["r1", "r2", "r3"]
    shown = page.get_by_test_id("stMarkdown").locator("strong").filter(has_text=re.compile(r"^r\d+$"))

    signed_in(page, app, "eve")
    page.goto(f"{app.url}/runs?run=r2")
    expect(shown).to_have_text("r2")
    _pick(page, "run", "r1")
    expect(shown).to_have_text("r1")
    expect(page).to_have_url(re.compile(r"/runs\?run=r1$"))

    page.goto(f"{app.url}/runs")
    expect(shown).to_have_text("r3")  # no run named: the newest

    fresh = App(app.home)  # a restarted server: a page URL opened first goes through the entry script
    try:
        page.goto(f"{fresh.url}/runs?run=r2")  # cookies ignore the port: still signed in
        expect(shown).to_have_text("r2")
    finally:
        fresh.stop()
