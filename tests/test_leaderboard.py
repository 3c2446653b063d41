"""The leaderboard from imported Arena battles and AlpacaEval annotations, and the demo loop on the tiny
model: training run, eval of base, prompting, RAG and adapter, then human votes joined to the same rows."""
import csv
import io
import json

import pytest

from tunelab import datasets, leaderboard, runs
from tunelab.errors import UserError
from tests.conftest import STRENGTH, arena_file, run_cli


@pytest.mark.process
@pytest.mark.timeout(120)
def test_arena_and_alpaca_eval_imports_rank_as_expected(workspace, tmp_path):
    _, ws = workspace
    arena_file(tmp_path / "battles.jsonl", STRENGTH)
    done = run_cli("feedback", "import", str(tmp_path / "battles.jsonl"), "--format", "arena", "--campaign", "arena",
                   env_home=ws.home)
    assert done.returncode == 0, done.stderr
    # AlpacaEval: the reference (output_1) loses to "better" on 9 of 10 and beats "worse" on 8 of 10.
    notes = ([{"instruction": f"q{i}", "output_1": "ref", "output_2": f"b{i}", "generator_1": "reference",
               "generator_2": "better", "annotator": "judge", "preference": 1.0 if i == 0 else 2.0} for i in range(10)]
             + [{"instruction": f"q{i}", "output_1": "ref", "output_2": f"w{i}", "generator_1": "reference",
                 "generator_2": "worse", "annotator": "judge", "preference": 2.0 if i < 2 else 1.0} for i in range(10)])
    (tmp_path / "annotations.json").write_text(json.dumps(notes))
    done = run_cli("feedback", "import", str(tmp_path / "annotations.json"), "--format", "alpaca_eval",
                   "--campaign", "ae", env_home=ws.home)
    assert done.returncode == 0, done.stderr

    board = json.loads(run_cli("leaderboard", "--campaign", "arena", "--json", env_home=ws.home).stdout)
    rows = board["rows"]
    assert [r["model"] for r in rows] == ["strong", "mid", "weak"]
    assert [r["rank"] for r in rows] == [1, 2, 3]  # 200 points apart with ~200 votes each: no overlap
    assert board["anchor"] == "mid" and rows[1]["rating"] == 1000 and board["votes"] == 300
    for r in rows:
        assert r["ci_low"] <= r["rating"] <= r["ci_high"]
        assert {"model", "rating", "ci_low", "ci_high", "rank", "votes", "win_rate", "rouge_l", "forgetting"} <= set(r)
    # The fit recovers the simulated 200-point gaps within the intervals' width.
    assert abs(rows[0]["rating"] - 1200) < 60 and abs(rows[2]["rating"] - 800) < 60
    assert sum(r["votes"] for r in rows) == 2 * 300

    conn, _ = workspace
    ae = leaderboard.build(conn, campaign="ae", anchor="reference")
    by = {r["model"]: r for r in ae["rows"]}
    assert [r["model"] for r in ae["rows"]] == ["better", "reference", "worse"]
    assert by["better"]["win_rate"] == 0.9 and by["worse"]["win_rate"] == 0.2 and by["reference"]["rating"] == 1000
    # Both campaigns together: six models, one anchor.
    both = leaderboard.build(conn)
    assert both["votes"] == 320 and len(both["rows"]) == 6

    text = run_cli("leaderboard", "--campaign", "arena", "--csv", env_home=ws.home).stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["model"] for r in table] == ["strong", "mid", "weak"] and float(table[1]["rating"]) == 1000
    with pytest.raises(UserError, match="nope"):
        leaderboard.build(conn, campaign="nope")


@pytest.mark.process
@pytest.mark.timeout(600)
def test_demo_then_votes_fill_one_leaderboard(tiny_model, tmp_path):
    """`tunelab demo` on the tiny model: a real LoRA SFT run, DPO from it on the sample votes, six eval runs
    (base, prompting, RAG, fine-tuned, fine-tuned + RAG, fine-tuned + DPO) and the leaderboard that joins them;
    then Arena votes between the base and the fine-tuned model land on the same rows."""
    db, ws, name = tiny_model
    done = run_cli("demo", "--model", name, "--max-steps", "2", "--limit", "3", "--max-new-tokens", "8", "--json",
                   env_home=ws.home)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    run_id, dpo_id = out["run"], out["dpo_run"]
    tuned, dpo = f"{name}+{run_id}", f"{name}+{dpo_id}"
    assert set(out["evals"]) == {name, f"{name} [prompting]", f"{name} [rag]", tuned, f"{tuned} [rag]", dpo}
    rows = {r["model"]: r for r in out["leaderboard"]["rows"]}
    assert set(rows) == set(out["evals"])
    assert rows[tuned]["method"] == "sft" and rows[tuned]["tuning"] == "lora" and rows[tuned]["data"] == out["dataset"]
    assert rows[tuned]["train_seconds"] > 0 and rows[tuned]["forgetting"] != 0 and rows[tuned]["run_id"] == run_id
    assert rows[name]["method"] == "base" and rows[name]["forgetting"] == 0
    assert rows[f"{name} [rag]"]["method"] == "rag" and rows[f"{name} [rag]"]["data"].startswith(out["dataset"])
    # The combination: the SFT adapter's run and training facts, with retrieved examples in the prompt.
    combo = rows[f"{tuned} [rag]"]
    assert combo["baseline"] == "rag" and combo["run_id"] == run_id and combo["method"] == "sft"
    assert combo["about"].endswith("with retrieved examples (RAG)")
    # DPO from the SFT adapter, on the sample votes' preference rows.
    assert rows[dpo]["method"] == "dpo" and rows[dpo]["tuning"] == "lora" and rows[dpo]["data"] == out["preferences"]
    assert rows[dpo]["train_seconds"] > 0 and rows[dpo]["cost_usd"] is not None
    assert runs.get(db, dpo_id).init_from == run_id and runs.get(db, dpo_id).status == "completed"
    for r in rows.values():
        assert r["perplexity"] > 1 and r["rating"] is None and r["votes"] == 0 and r["eval_dataset"] == out["dataset"]
        assert r["format"] is not None  # the sample declares its Answer/Steps format: every eval checks it
        assert r["forgetting"] is not None and r["rouge_l"] is not None
    shown = leaderboard.display(out["leaderboard"]["rows"])
    assert {"Format %", "ROUGE-L", "Forgetting", "Training time", "Cost"} <= set(shown[0])

    # The sample votes: a campaign labelled as sample, never counted as people's votes on any board.
    votes = [json.loads(line) for line in leaderboard.DEMO_VOTES.read_text().splitlines()]
    assert out["sample_votes"] == {"campaign": leaderboard.DEMO_VOTES_CAMPAIGN, "source": "import:sample",
                                   "file": "acme_router_votes.jsonl"}
    listed = {c["name"]: c for c in json.loads(run_cli("feedback", "list", "--json", env_home=ws.home).stdout)}
    assert listed[leaderboard.DEMO_VOTES_CAMPAIGN]["source"] == "import:sample"
    assert listed[leaderboard.DEMO_VOTES_CAMPAIGN]["votes"] == len(votes) and 40 <= len(votes) <= 80
    assert out["leaderboard"]["votes"] == 0 and out["leaderboard"]["people_votes"] == 0
    assert "acme-reference" not in rows and "acme-flawed" not in rows
    assert datasets.resolve(db, ws, out["preferences"]).kind == "preference"
    # The votes' prompts are train-split questions: none is held out for the evals.
    held_out = {json.dumps(r["messages"][:-1]) for r in datasets.resolve(db, ws, out["dataset"]).load("validation")}
    assert not held_out & {json.dumps(v["prompt"]) for v in votes}

    # The import and its split; a second demo reuses them rather than importing again.
    assert db.execute("SELECT count(*) FROM dataset_versions WHERE name = 'acme-router'").fetchone()[0] == 2
    again = leaderboard.demo_dataset(db, ws, leaderboard.DEMO_DATA, leaderboard.DEMO_DATASET, lambda f, m: None)
    assert again.ref == out["dataset"]

    # Votes: the fine-tuned model beats the base 14 times, loses 4, ties 2.
    battles = ([{"model_a": tuned, "model_b": name, "winner": "model_a"}] * 14
               + [{"model_a": name, "model_b": tuned, "winner": "model_a"}] * 4
               + [{"model_a": tuned, "model_b": name, "winner": "tie"}] * 2)
    q = [{"role": "user", "content": "q"}]
    with open(tmp_path / "votes.jsonl", "w") as fh:
        for i, b in enumerate(battles):
            fh.write(json.dumps({**b, "judge": f"rater{i}", "prompt": q, "response_a": f"a{i}",
                                 "response_b": f"b{i}"}) + "\n")
    assert run_cli("feedback", "import", str(tmp_path / "votes.jsonl"), "--format", "arena", "--campaign", "team",
                   env_home=ws.home).returncode == 0
    board = json.loads(run_cli("leaderboard", "--json", env_home=ws.home).stdout)
    rows = {r["model"]: r for r in board["rows"]}
    assert board["anchor"] == name and rows[name]["rating"] == 1000
    assert rows[tuned]["win_rate"] == (14 + 1) / 20 and rows[tuned]["votes"] == 20 and rows[tuned]["rank"] == 1
    # 15 : 5 wins is 3:1 odds, 400·log10(3) = 190.8 points above the anchor.
    assert abs(rows[tuned]["rating"] - 1190.8) < 0.5
    assert rows[tuned]["rouge_l"] is not None and rows[f"{name} [rag]"]["rating"] is None
    assert [r["model"] for r in board["rows"]][:2] == [tuned, name]
