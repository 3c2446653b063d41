"""The leaderboard in Chromium: a viewer lands on it, sees ratings joined with eval metrics, downloads the CSV."""
import csv
import io
import json

import pytest

from tunelab import auth, evaluate, feedback, models
from tunelab.workspace import Workspace
from tests.conftest import arena_file, make_dataset, sign_in, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]


@pytest.mark.timeout(300)
def test_viewer_sees_leaderboard_and_downloads_csv(app, page, tiny_model_dir, tmp_path):
    conn = app.db()
    ws = Workspace(app.home).ensure()
    models.add_local(conn, tiny_model_dir, "tiny")
    make_dataset(conn, ws, tmp_path)
    eval_id = evaluate.launch(conn, ws, evaluate.EvalConfig(model="tiny", dataset="qa", limit=2, max_new_tokens=4))
    assert evaluate.wait(conn, eval_id, timeout_s=300)["status"] == "completed"
    arena_file(tmp_path / "battles.jsonl", {"tiny": 1000.0, "big-model": 1250.0, "small-model": 800.0}, n=240)
    feedback.import_judgments(conn, tmp_path / "battles.jsonl", "arena", "team-votes")
    auth.add_user(conn, "root", "admin", "admin password")
    auth.add_user(conn, "vic", "viewer", "viewer password")

    sign_in(page, app, "vic", "viewer password")
    page.get_by_role("heading", name="Leaderboard").wait_for()  # the viewer's home
    wait_for_app(page)
    page.get_by_text("240 votes").wait_for()
    page.locator('[data-testid="stVegaLiteChart"]').wait_for()
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(open(info.value.path()).read())))
    assert [r["model"] for r in rows] == ["big-model", "tiny", "small-model"]
    tiny = rows[1]
    assert float(tiny["rating"]) == 1000 and tiny["rank"] == "2" and tiny["method"] == "base"
    assert float(tiny["perplexity"]) > 1 and tiny["eval_dataset"] == "qa@2"
    assert rows[0]["perplexity"] == ""  # voted on, never evaluated here
    with page.expect_download() as info:
        page.get_by_role("button", name="Download JSON").click()
    board = json.loads(open(info.value.path()).read())
    assert board["votes"] == 240 and board["anchor"] == "tiny"

    page.goto(f"{app.url}/evaluate")
    page.get_by_text("Not allowed").wait_for()
