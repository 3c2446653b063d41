"""The home page's figures: counts per stage and the leaderboard's top rows."""
from tunelab import feedback, overview
from tests.conftest import STRENGTH, arena_file


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


def test_top_models_from_an_eval_without_votes(tiny_model, tmp_path):
    """The home page skips the leaderboard only when there is nothing to rank: one completed eval is enough."""
    from tunelab import evaluate
    from tests.conftest import make_dataset
    db, ws, name = tiny_model
    make_dataset(db, ws, tmp_path)
    assert overview.pipeline_summary(db)["leaderboard_top"] == []
    eval_id = evaluate.create(db, ws, evaluate.EvalConfig(model=name, dataset="qa", limit=2, max_new_tokens=4))
    evaluate.execute(db, ws, eval_id)
    top = overview.pipeline_summary(db)["leaderboard_top"]
    assert [r["model"] for r in top] == [name] and top[0]["votes"] == 0 and top[0]["rouge_l"] is not None
