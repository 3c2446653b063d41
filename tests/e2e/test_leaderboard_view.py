"""With evals and no votes yet, the Leaderboard page charts the task metrics and the content/format
trade-off, and its table has no rating columns and no cell reading None."""
import pytest

from tunelab import auth, evaluate, models
from tunelab.workspace import Workspace
from tests.conftest import make_dataset, sign_in, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]


@pytest.mark.timeout(300)
def test_board_without_votes_charts_task_metrics_and_reads_cleanly(app, page, tiny_model_dir, tmp_path):
    conn = app.db()
    ws = Workspace(app.home).ensure()
    for name in ("tiny", "tiny-copy"):
        models.add_local(conn, tiny_model_dir, name)
    make_dataset(conn, ws, tmp_path)
    for name in ("tiny", "tiny-copy"):
        eval_id = evaluate.launch(conn, ws, evaluate.EvalConfig(model=name, dataset="qa", limit=2, max_new_tokens=4))
        assert evaluate.wait(conn, eval_id, timeout_s=300)["status"] == "completed"
    auth.add_user(conn, "root", "admin", "admin password")
    auth.add_user(conn, "vic", "viewer", "viewer password")

    sign_in(page, app, "vic", "viewer password")
    page.get_by_role("heading", name="Leaderboard").wait_for()
    wait_for_app(page)
    page.get_by_text("No votes yet, so no ratings").wait_for()
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    charts.nth(1).wait_for()  # the task metrics, and content against cost
    assert charts.count() == 2
    table = page.locator('[data-testid="stTable"]')
    table.wait_for()
    text = table.inner_text()
    assert "tiny-copy" in text and "base model" in text
    assert "None" not in text and "Rating" not in text and "ROUGE-L" in text
