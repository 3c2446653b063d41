"""Campaigns, claims, votes, agreement, export and import, on the real SQLite file."""
from __future__ import annotations

import json

import pytest

from tunelab import feedback, models
from tunelab.errors import UserError
from tunelab.generate import SamplingSettings
from tests.conftest import TEST_DATA, run_cli

PROMPTS = ["What is the capital of France?", "Give three tips for staying healthy.", "Count to five.",
           "Say hello.", "Name a colour."]


@pytest.fixture
def two_models(tiny_model, tiny_model_dir):
    """The tiny model registered twice, as two 'models' to compare."""
    conn, ws, name = tiny_model
    models.add_local(conn, tiny_model_dir, "tiny-b")
    return conn, ws


def make_campaign(conn, ws, name="c1", overlap=2, n_prompts=5, answers=True):
    """A campaign over pasted prompts whose answers are given (as if generated), with its pairs built."""
    c = feedback.create_campaign(conn, ws, name, ["tiny", "tiny-b"], prompts=PROMPTS[:n_prompts],
                                 config=feedback.CampaignConfig(overlap=overlap, guidelines="Prefer the correct one."))
    if answers:
        ids = [pid for pid, _ in feedback.prompts(conn, c)]
        feedback.store_responses(conn, c, "tiny", 0, ids, [f"A-answer {i}" for i in range(len(ids))])
        feedback.store_responses(conn, c, "tiny-b", 0, ids, [f"B-answer {i}" for i in range(len(ids))])
        feedback.build_pairs(conn, c)
    return feedback.get_campaign(conn, name)


def vote_all(conn, c, uid, choose):
    """Claim and vote until nothing is left; `choose(assignment)` returns the shown-terms choice."""
    n = 0
    while (a := feedback.next_pair(conn, c.id, uid, f"user{uid}")) is not None:
        feedback.cast_vote(conn, a.id, choose(a))
        n += 1
    return n


def pick(label):
    """A chooser that votes for the answer whose text starts with `label` ('A' or 'B'), wherever it is shown."""
    return lambda a: "left" if a.left.startswith(f"{label}-") else "right"


def test_create_validates(two_models):
    conn, ws = two_models
    with pytest.raises(UserError, match="two or more"):
        feedback.create_campaign(conn, ws, "x", ["tiny"], prompts=PROMPTS)
    with pytest.raises(UserError, match="not registered"):
        feedback.create_campaign(conn, ws, "x", ["tiny", "nope"], prompts=PROMPTS)
    with pytest.raises(UserError, match="no adapter"):
        feedback.create_campaign(conn, ws, "x", ["tiny", "tiny+run-404"], prompts=PROMPTS)
    with pytest.raises(UserError, match="temperature"):
        feedback.create_campaign(conn, ws, "x", ["tiny", "tiny-b"], prompts=PROMPTS,
                                 config=feedback.CampaignConfig(samples=2), settings=SamplingSettings(temperature=0))
    make_campaign(conn, ws, "dup")
    with pytest.raises(UserError, match="already exists"):
        make_campaign(conn, ws, "dup")


def test_pairs_overlap_and_never_twice(two_models):
    conn, ws = two_models
    c = make_campaign(conn, ws, overlap=2)
    assert conn.execute("SELECT count(*) FROM pairs WHERE campaign_id = ?", [c.id]).fetchone()[0] == 5
    seen = {}
    for uid in (1, 2, 3):
        pairs = []
        while (a := feedback.next_pair(conn, c.id, uid, f"u{uid}")) is not None:
            assert a.left != a.right and {a.left[0], a.right[0]} == {"A", "B"}
            pairs.append(a.pair_id)
            feedback.cast_vote(conn, a.id, "tie")
        seen[uid] = pairs
        assert len(pairs) == len(set(pairs))  # never the same pair twice
    # Overlap 2 over 5 pairs: 10 slots; the first two annotators take them all.
    assert len(seen[1]) == 5 and len(seen[2]) == 5 and seen[3] == []
    assert [r[0] for r in conn.execute("SELECT n_votes FROM pairs WHERE campaign_id = ?", [c.id])] == [2] * 5
    assert feedback.annotator_progress(conn, c.id, 1) == (5, 5)


def test_claim_holds_then_times_out(two_models):
    conn, ws = two_models
    c = make_campaign(conn, ws, overlap=1, n_prompts=1)
    a = feedback.next_pair(conn, c.id, 1, "walker", timeout_s=60, now=1000.0)
    assert a is not None
    assert feedback.next_pair(conn, c.id, 1, "walker", timeout_s=60, now=1010.0).id == a.id  # holds it on reload
    assert feedback.next_pair(conn, c.id, 2, "other", timeout_s=60, now=1030.0) is None       # claimed: none free
    b = feedback.next_pair(conn, c.id, 2, "other", timeout_s=60, now=1071.0)                  # walked away: freed
    assert b is not None and b.pair_id == a.pair_id
    feedback.cast_vote(conn, b.id, "left")
    # The walker comes back after the pair is full: they get nothing, and the late vote still counts.
    assert feedback.next_pair(conn, c.id, 1, "walker", timeout_s=60, now=1100.0) is None
    feedback.cast_vote(conn, a.id, "right")
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 2


def test_double_submit_is_one_vote_and_strength(two_models):
    conn, ws = two_models
    c = make_campaign(conn, ws, overlap=1, n_prompts=1)
    a = feedback.next_pair(conn, c.id, 7, "u7")
    feedback.cast_vote(conn, a.id, "left", 2)
    feedback.cast_vote(conn, a.id, "left", 2)
    feedback.cast_vote(conn, a.id, "right")  # a change of mind updates the same row
    rows = conn.execute("SELECT choice, strength, left_model, seconds FROM votes").fetchall()
    assert len(rows) == 1
    choice, strength, left_model, seconds = rows[0]
    right_model = "tiny-b" if a.left.startswith("A-") else "tiny"
    assert (choice == "a") == a.right.startswith("A-") and strength == 1 and seconds >= 0
    assert left_model == ("tiny" if a.left.startswith("A-") else "tiny-b") and left_model != right_model
    assert conn.execute("SELECT n_votes FROM pairs").fetchone()[0] == 1
    with pytest.raises(UserError, match="choice"):
        feedback.cast_vote(conn, a.id, "A")


def test_skip_and_undo(two_models):
    conn, ws = two_models
    c = make_campaign(conn, ws, overlap=1, n_prompts=3)
    first = feedback.next_pair(conn, c.id, 1, "u1")
    feedback.skip(conn, first.id)
    second = feedback.next_pair(conn, c.id, 1, "u1")
    assert second.pair_id != first.pair_id
    feedback.cast_vote(conn, second.id, "left")
    third = feedback.next_pair(conn, c.id, 1, "u1")
    assert feedback.annotator_progress(conn, c.id, 1) == (1, 2)
    back = feedback.undo_last(conn, c.id, 1)
    assert back.pair_id == second.pair_id
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 0
    assert feedback.annotator_progress(conn, c.id, 1) == (0, 2)
    assert feedback.next_pair(conn, c.id, 1, "u1").pair_id == second.pair_id
    # The pair shown before the undo went back to the pool; the skipped one went to someone else.
    other = [feedback.next_pair(conn, c.id, 2, "u2")]
    assert other[0].pair_id in (first.pair_id, third.pair_id)
    assert feedback.undo_last(conn, c.id, 99) is None


def test_gold_accuracy_and_flags(two_models):
    conn, ws = two_models
    make_campaign(conn, ws, overlap=3)
    gold = [{"prompt": f"Gold question {i}?", "chosen": f"A-right {i}", "rejected": f"B-wrong {i}"} for i in range(4)]
    assert feedback.add_gold(conn, "c1", gold) == 4
    # Three annotators pick the A-answers; one picks B everywhere and so fails the gold pairs.
    c = feedback.get_campaign(conn, "c1")
    conn.execute("UPDATE pairs SET votes_needed = 4 WHERE gold IS NULL")
    for uid in (1, 2, 4):
        assert vote_all(conn, c, uid, pick("A")) == 9
    assert vote_all(conn, c, 3, pick("B")) == 9
    q = feedback.quality(conn, "c1")
    per = {r["annotator"]: r for r in q["per_annotator"]}
    assert per["user1"]["gold_accuracy"] == 1.0 and per["user3"]["gold_accuracy"] == 0.0
    assert per["user1"]["agreement_with_majority"] == 1.0 and per["user3"]["agreement_with_majority"] == 0.0
    assert q["flagged"] == ["user3"]
    assert q["votes"] == 20 and q["gold_votes"] == 16 and q["gold_pairs"] == 4
    # Gold pairs stay out of battles and exports.
    assert len(feedback.battles(conn, "c1")) == 20
    rows, counts = feedback.aggregate(conn, "c1")
    assert counts["kept"] == 5 and all(r["chosen"][0]["content"].startswith("A-") for r in rows)


def test_cohen_kappa_hand_computed(two_models):
    """Two annotators, ten pairs. Agreement po = 7/10; marginals X: a4 b3 tie2 bb1, Y: a4 b3 tie1 bb2, so
    pe = (16 + 9 + 2 + 2) / 100 = 0.29 and κ = (0.70 - 0.29) / (1 - 0.29) = 0.41 / 0.71 = 0.5775."""
    conn, ws = two_models
    prompts = [f"question {i}" for i in range(10)]
    c = feedback.create_campaign(conn, ws, "kappa", ["tiny", "tiny-b"], prompts=prompts,
                                 config=feedback.CampaignConfig(overlap=2))
    ids = [pid for pid, _ in feedback.prompts(conn, c)]
    feedback.store_responses(conn, c, "tiny", 0, ids, [f"A-{i}" for i in range(10)])
    feedback.store_responses(conn, c, "tiny-b", 0, ids, [f"B-{i}" for i in range(10)])
    feedback.build_pairs(conn, c)
    x = dict(zip(prompts, ["a", "a", "a", "a", "b", "b", "b", "tie", "tie", "both_bad"]))
    y = dict(zip(prompts, ["a", "a", "a", "b", "b", "b", "a", "tie", "both_bad", "both_bad"]))
    for uid, labels in ((1, x), (2, y)):
        def choose(a, labels=labels):
            want = labels[a.prompt[-1]["content"]]
            if want in ("tie", "both_bad"):
                return want
            return "left" if a.left.startswith(want.upper() + "-") else "right"
        assert vote_all(conn, c, uid, choose) == 10
    q = feedback.quality(conn, "kappa")
    assert q["cohen_kappa"] == pytest.approx(0.41 / 0.71, abs=1e-4)
    assert q["percent_agreement"] == pytest.approx(0.7)


def test_krippendorff_alpha_hand_computed():
    """Nominal α with a missing rating. Coincidences: o_aa = 3, o_bb = 1, o_ab = o_ba = 2, o_tt = 2; n = 10,
    n_a = 5, n_b = 3, n_t = 2. Do = 4/10, De = (100 - 25 - 9 - 4) / 90 = 62/90, α = 1 - 36/62 = 13/31."""
    from tunelab import agreement
    units = {1: {"x": "a", "y": "a", "z": "a"}, 2: {"x": "b", "y": "b", "z": "a"},
             3: {"x": "tie", "y": "tie"}, 4: {"x": "a", "y": "b"}, 5: {"x": "a"}}
    assert agreement.krippendorff_alpha(units) == pytest.approx(13 / 31)
    assert agreement.krippendorff_alpha({1: {"x": "a", "y": "a"}}) is None  # one label only: undefined


def test_export_policy_and_battles(two_models, tmp_path):
    conn, ws = two_models
    c = make_campaign(conn, ws, overlap=3)
    pairs = [r[0] for r in conn.execute("SELECT id FROM pairs WHERE campaign_id = ? ORDER BY position", [c.id])]
    # Per pair, three annotators' labels in pair terms: a clear win, a split, a tie, a both-bad, a 2:1 for B.
    plan = {pairs[0]: ["a", "a", "a"], pairs[1]: ["a", "b", "tie"], pairs[2]: ["tie", "tie", "a"],
            pairs[3]: ["both_bad", "both_bad", "both_bad"], pairs[4]: ["b", "b", "a"]}
    for k, uid in enumerate((1, 2, 3)):
        while (a := feedback.next_pair(conn, c.id, uid, f"u{uid}")) is not None:
            want = plan[a.pair_id][k]
            a_left = a.left.startswith("A-")
            shown = {"a": "left" if a_left else "right", "b": "right" if a_left else "left"}.get(want, want)
            feedback.cast_vote(conn, a.id, shown, 2 if uid == 1 else 1)
    rows, counts = feedback.aggregate(conn, "c1")
    assert counts == {"kept": 2, "dropped_no_majority": 1, "dropped_tie": 1, "dropped_both_bad": 1,
                      "pairs_with_votes": 5}
    by_chosen = {r["chosen"][0]["content"][0]: r for r in rows}
    assert by_chosen["A"]["margin"] == pytest.approx((2 + 1 + 1) / 3, abs=1e-3)
    assert by_chosen["B"]["margin"] == pytest.approx((2 + 1 - 1) / 3, abs=1e-3)
    assert by_chosen["B"]["rejected"][0]["content"].startswith("A-")
    rows, counts = feedback.aggregate(conn, "c1", feedback.ExportPolicy(min_agreement=0.9, drop_ties=False,
                                                                         drop_both_bad=False))
    assert counts["kept"] == 2 and counts["dropped_low_agreement"] == 2  # 2:1 splits fail 0.9
    assert sorted(r["margin"] for r in rows) == pytest.approx([0.0, 4 / 3], abs=1e-3)

    doc = feedback.export(conn, ws, "c1", "trl", tmp_path / "prefs.jsonl", register="c1-prefs")
    assert doc["rows"] == 2 and doc["dataset"] == "c1-prefs@1"
    from tunelab import datasets
    v = datasets.resolve(conn, ws, "c1-prefs")
    assert v.kind == "preference" and v.rows == 2

    battles = feedback.battles(conn, "c1")
    assert len(battles) == 15
    assert {b["winner"] for b in battles} == {"model_a", "model_b", "tie", "tie (bothbad)"}
    out = feedback.export(conn, ws, "c1", "battles", tmp_path / "battles.jsonl")
    arena = [json.loads(line) for line in (tmp_path / "battles.jsonl").read_text().splitlines()]
    assert out["rows"] == 15 and arena[0]["conversation_a"][-1]["role"] == "assistant"
    assert {"model_a", "model_b", "winner", "judge", "tstamp"} <= set(arena[0])

    # The battles file goes back in as an imported campaign with the same outcomes.
    res = feedback.import_judgments(conn, tmp_path / "battles.jsonl", "arena", "c1-again")
    assert res["votes_added"] == 15
    again = sorted((b["model_a"], b["winner"], b["judge"]) for b in feedback.battles(conn, "c1-again"))
    assert again == sorted((b["model_a"], b["winner"], b["judge"]) for b in battles)
    assert feedback.quality(conn, "c1-again")["krippendorff_alpha"] == feedback.quality(conn, "c1")["krippendorff_alpha"]


def test_import_alpaca_eval(workspace, tmp_path):
    conn, _ = workspace
    rows = [
        {"instruction": "Say hi", "output_1": "hi", "output_2": "hello there", "generator_1": "m1",
         "generator_2": "m2", "annotator": "gpt4_judge", "preference": 2},
        {"instruction": "Add 2+2", "output_1": "4", "output_2": "5", "generator_1": "m1", "generator_2": "m2",
         "annotator": "gpt4_judge", "preference": 1.1},
        {"instruction": "Colour?", "output_1": "red", "output_2": "blue", "generator_1": "m1", "generator_2": "m2",
         "annotator": "gpt4_judge", "preference": 1.5},
        {"instruction": "Name", "output_1": "a", "output_2": "b", "generator_1": "m1", "generator_2": "m2",
         "annotator": "gpt4_judge", "preference": None},
    ]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    res = feedback.import_judgments(conn, path, "alpaca_eval", "ae")
    assert res == {"campaign": "ae", "format": "alpaca_eval", "votes_added": 3, "votes_updated": 0, "skipped": 1}
    assert [(b["model_a"], b["model_b"], b["winner"], b["judge"]) for b in feedback.battles(conn, "ae")] == [
        ("m1", "m2", "model_b", "gpt4_judge"), ("m1", "m2", "model_a", "gpt4_judge"), ("m1", "m2", "tie", "gpt4_judge")]
    strengths = [r[0] for r in conn.execute("SELECT strength FROM votes ORDER BY id")]
    assert strengths == [2, 2, None]
    assert feedback.get_campaign(conn, "ae").judge == "alpaca_eval:annotations.json"
    # Importing the same file again updates, never duplicates.
    assert feedback.import_judgments(conn, path, "alpaca_eval", "ae")["votes_updated"] == 3
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "preference": 3}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl record 1: field 'preference'"):
        feedback.import_judgments(conn, bad, "alpaca_eval", "ae2")


def test_campaign_from_dataset_prompts(two_models):
    """Prompts come from a whole file imported as a dataset (the alpaca fixture, LLaMA-Factory's format)."""
    from tunelab import datasets
    conn, ws = two_models
    version = datasets.import_file(conn, ws, TEST_DATA / "alpaca_demo.json", "alpaca").version
    c = feedback.create_campaign(conn, ws, "from-ds", ["tiny", "tiny-b"], dataset="alpaca")
    assert c.source == f"dataset:{version.ref}"
    assert len(feedback.prompts(conn, c)) == version.rows
    with pytest.raises(UserError):
        feedback.create_campaign(conn, ws, "nope", ["tiny", "tiny-b"], dataset="no-such-dataset")


@pytest.mark.process
@pytest.mark.timeout(300)
def test_generation_end_to_end_cli(two_models, tmp_path):
    """`feedback create --wait` generates with the tiny model in a separate process, then status and export."""
    conn, ws = two_models
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS[:3]) + "\n")
    done = run_cli("feedback", "create", "gen", "--prompts-file", str(prompts_file), "--models", "tiny,tiny-b",
                   "--samples", "2", "--overlap", "1", "--max-new-tokens", "8", "--temperature", "0.8", "--wait",
                   env_home=ws.home)
    assert done.returncode == 0, done.stderr
    c = feedback.get_campaign(conn, "gen")
    assert c.status == "ready" and c.progress == 1
    rows = conn.execute("SELECT r.model, r.sample, r.seed, r.settings_json FROM responses r JOIN campaign_prompts p "
                        "ON p.id = r.prompt_id WHERE p.campaign_id = ?", [c.id]).fetchall()
    assert len(rows) == 3 * 2 * 2
    assert {(m, s, seed) for m, s, seed, _ in rows} == {(m, s, s) for m in ("tiny", "tiny-b") for s in (0, 1)}
    assert json.loads(rows[0][3])["max_new_tokens"] == 8
    assert conn.execute("SELECT count(*) FROM pairs WHERE campaign_id = ?", [c.id]).fetchone()[0] == 3 * 2

    status = run_cli("feedback", "status", "gen", "--json", env_home=ws.home)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["status"] == "ready" and doc["pairs"] == 6 and doc["votes"] == 0
    listed = json.loads(run_cli("feedback", "list", "--json", env_home=ws.home).stdout)
    assert [r["name"] for r in listed] == ["gen"]

    a = feedback.next_pair(conn, c.id, 1, "u1")
    feedback.cast_vote(conn, a.id, "left")
    out = tmp_path / "b.jsonl"
    exp = run_cli("feedback", "export", "gen", "--format", "battles", "--out", str(out), "--json", env_home=ws.home)
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["rows"] == 1
    imp = run_cli("feedback", "import", str(out), "--format", "arena", "--campaign", "gen-copy", env_home=ws.home)
    assert imp.returncode == 0, imp.stderr
    bad = run_cli("feedback", "status", "no-such", env_home=ws.home)
    assert bad.returncode == 2 and "no-such" in bad.stderr


@pytest.mark.process
@pytest.mark.timeout(120)
def test_cli_gold(two_models, tmp_path):
    conn, ws = two_models
    make_campaign(conn, ws)
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    done = run_cli("feedback", "gold", "c1", str(gold), env_home=ws.home)
    assert done.returncode == 0, done.stderr
    assert conn.execute("SELECT count(*) FROM pairs WHERE gold IS NOT NULL").fetchone()[0] == 1


def test_export_loads_into_dpo_trainer(two_models, tiny_model_dir, tmp_path):
    """The TRL export is what DPOTrainer reads: load the JSONL with datasets and let DPOTrainer tokenize it."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    conn, ws = two_models
    c = make_campaign(conn, ws, overlap=1)
    vote_all(conn, c, 1, pick("A"))
    out = tmp_path / "prefs.jsonl"
    assert feedback.export(conn, ws, "c1", "trl", out)["rows"] == 5
    data = load_dataset("json", data_files=str(out), split="train")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to="none", max_length=64, bf16=False,
                     per_device_train_batch_size=2, max_steps=1)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    row = trainer.train_dataset[0]
    assert len(trainer.train_dataset) == 5 and row["chosen_ids"] != row["rejected_ids"]
    assert "<|im_start|>user" in tok.decode(row["prompt_ids"]) and "A-answer" in tok.decode(row["chosen_ids"])
