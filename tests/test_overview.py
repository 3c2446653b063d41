"""The home page's figures: counts per stage and the leaderboard's top rows."""
from core import feedback, overview
from tests.test_leaderboard import STRENGTH, arena_file


def test_summary_counts_and_top_models(workspace, tmp_path):
    conn, ws = workspace
    empty = overview.pipeline_summary(conn)
    assert empty["campaigns"] == 0 and empty["votes"] == 0 and empty["leaderboard_top"] == []
    assert empty["models"] == 1  # the bundled model is always listed

    arena_file(tmp_path / "battles.jsonl", STRENGTH, n=200)
    feedback.import_judgments(conn, tmp_path / "battles.jsonl", "arena", "arena")
    summary = overview.pipeline_summary(conn, top=2)
    assert summary["campaigns"] == 1 and summary["votes"] == 200
    assert [r["model"] for r in summary["leaderboard_top"]] == ["strong", "mid"]
