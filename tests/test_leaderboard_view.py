"""The leaderboard as a stakeholder reads it: no cell reads None, empty columns are hidden, figures are
rounded as people read them, and rows say what they are."""
from tunelab import feedback, leaderboard
from tests.conftest import arena_file


def _row(**values) -> dict:
    row = dict.fromkeys(leaderboard.COLUMNS)
    row.update({"votes": 0, **values})
    row["about"] = leaderboard._about(row)
    return row


def test_without_votes_no_rating_columns_and_no_none():
    rows = [_row(model="m", method="base", rouge_l=90.50281, exact_match=40.0, format=95.0, perplexity=12.3456),
            _row(model="m [rag]", baseline="rag", method="rag", rouge_l=38.8, perplexity=None)]
    shown = leaderboard.display(rows)
    assert list(shown[0]) == ["Model", "What it is", "ROUGE-L", "Exact match %", "Format %", "Perplexity", "Method"]
    assert shown[0]["ROUGE-L"] == "90.5" and shown[0]["Perplexity"] == "12.3" and shown[0]["Exact match %"] == "40"
    assert shown[1]["Format %"] == "" and shown[1]["Perplexity"] == ""
    assert shown[1]["What it is"] == "base model with retrieved examples (RAG)"
    assert not any(v is None or v == "None" for r in shown for v in r.values())


def test_a_run_row_is_named_by_its_run_and_figures_read_as_people_read_them():
    named = _row(model="m+r1", run_id="r1", run_name="support tone v2", method="sft", tuning="lora",
                 data="acme@2", rating=1043.6, ci_low=1010.2, ci_high=1077.9, votes=120, win_rate=0.6149,
                 forgetting=3.04, train_seconds=4000.0, cost_usd=0.00042)
    plain = _row(model="m+r2", run_id="r2", method="dpo", tuning="lora", data="prefs@1", baseline="rag",
                 train_seconds=42.0, cost_usd=2.5)
    a, b = leaderboard.display([named, plain])
    assert a["What it is"] == "support tone v2" and b["What it is"] == "DPO LoRA on prefs@1 with retrieved examples (RAG)"
    assert (a["Rating"], a["95% interval"], a["Win rate vs anchor"]) == ("1044", "1010 – 1078", "61%")
    assert (a["Forgetting"], a["Training time"], a["Cost"]) == ("+3.0%", "67 min", "< $0.001")
    assert (b["Rating"], b["Votes"], b["Training time"], b["Cost"]) == ("", "", "42 s", "$2.50")


def test_board_from_votes_only_hides_eval_columns(workspace, tmp_path):
    db, _ = workspace
    arena_file(tmp_path / "b.jsonl", {"a-model": 1000.0, "b-model": 1200.0}, n=60)
    feedback.import_judgments(db, tmp_path / "b.jsonl", "arena", "votes")
    shown = leaderboard.display(leaderboard.build(db, rounds=20)["rows"])
    assert {"Rank", "Model", "Rating", "95% interval", "Votes", "Elo"} <= set(shown[0])
    assert not {"ROUGE-L", "Format %", "Perplexity", "Cost"} & set(shown[0])
    assert leaderboard.tradeoff(leaderboard.build(db, rounds=20)["rows"]) is None


def test_tradeoff_plots_content_against_format_else_cost():
    rows = [_row(model="x", rouge_l=50.0, format=80.0), _row(model="y", rouge_l=60.0, format=None),
            _row(model="z", rouge_l=70.0, format=100.0)]
    plot = leaderboard.tradeoff(rows)
    assert plot["y"].startswith("format") and [p["model"] for p in plot["points"]] == ["x", "z"]
    plot = leaderboard.tradeoff([_row(model="x", rouge_l=50.0, cost_usd=0.2), _row(model="y", rouge_l=60.0)])
    assert plot["y"] == "training cost ($)" and [p["other"] for p in plot["points"]] == [0.2, 0.0]


def test_a_sample_campaign_asked_for_by_name_says_its_votes_are_sample_votes(workspace, tmp_path):
    db, _ = workspace
    arena_file(tmp_path / "b.jsonl", {"a-model": 1000.0, "b-model": 1200.0}, n=40)
    feedback.import_judgments(db, tmp_path / "b.jsonl", "arena", "samples", sample=True)
    board = leaderboard.build(db, campaign="samples", rounds=10)
    assert (board["votes"], board["sample_votes"], board["people_votes"]) == (40, 40, 0)
    assert leaderboard.basis(board) == ("intervals rest on 40 sample votes (written as sample data, not cast by "
                                        "people)")
    assert leaderboard.build(db, rounds=10)["votes"] == 0  # boards of all campaigns leave sample votes out
