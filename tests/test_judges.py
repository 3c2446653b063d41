"""Judges on the tiny model, each in its real `judge` job: a chat model read through its next-token
probabilities, an OpenAI-compatible endpoint served by `transformers serve`, and a reward model trained on
a campaign's own votes, which must then agree with them; bad specs are UserErrors naming the field."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tunelab import feedback, jobs, models
from tunelab.workspace import set_setting
from tunelab.errors import UserError
from tunelab.feedback import judges
from tunelab.feedback.judgments import insert_judge, judgment_rows, write_judgment
from tests.conftest import _free_port, ready_campaign, run_cli, sign_in, wait_for_app

PROMPTS = ["What is the capital of France?", "Give three tips for staying healthy.", "Count to five.",
           "Say hello.", "Name a colour."]


def pair_ids(conn, c) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM pairs WHERE campaign_id = ? AND gold IS NULL ORDER BY id",
                                       [c.id])]


def prompt_of(conn, judgment: dict) -> list[dict]:
    return json.loads(conn.execute("SELECT messages_json FROM campaign_prompts WHERE id = ?",
                                   [judgment["prompt_id"]]).fetchone()[0])


def check_both_orders(found: list[dict]) -> None:
    """Every verdict has both orders, and the choice is their agreement (a tie when they differ)."""
    for r in found:
        assert r["first_a"] in ("a", "b", "tie") and r["first_b"] in ("a", "b", "tie"), r
        assert r["choice"] == (r["first_a"] if r["first_a"] == r["first_b"] else "tie"), r
        assert -1.0 <= r["margin"] <= 1.0, r


# ---------------------------------------------------------------- chat model

def sharp_model(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model with its weights (all but the norms) ten times larger: still random, but what it makes of
    the judge's question visibly depends on the text, so swapping the answers moves its probabilities."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM
    shutil.copytree(tiny_model_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(10)
    model.save_pretrained(folder)
    return folder


def option_probabilities(folder: Path, question: str) -> list[float]:
    """P(A), P(B), P(tie) after the question, renormalised over the three: one unpadded forward pass, the
    check on the judge's batched, left-padded ones."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    ids = [tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in ("A", "B", "tie")]
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    with torch.no_grad():
        logits = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    p = torch.softmax(logits.float(), -1)[ids]
    return (p / p.sum()).tolist()


@pytest.mark.process
@pytest.mark.timeout(300)
def test_chat_judge_asks_both_orders_and_resumes(workspace, tiny_model_dir, tmp_path, monkeypatch):
    conn, ws = workspace
    monkeypatch.setenv("TUNELAB_INFERENCE_DTYPE", "float32")  # the check below is one float32 pass, to 1e-4
    sharp = sharp_model(tiny_model_dir, tmp_path / "sharp")
    models.add_local(conn, sharp, "sharp")
    # The last prompt gets the same answer from both models: the two orders then show the judge the very same
    # text, so whatever it says about "A" in one order it says about "B" in the other, and in pair terms the
    # margin must cancel to 0 (a wrong mapping back to pair terms would double it instead).
    c = ready_campaign(conn, ws, tiny_model_dir, "chat", PROMPTS, (
        ["Paris.", "Eat well.", "1 2 3 4 5", "Hello!", "Same answer."],
        ["Lyon.", "Sleep.", "one two", "Hi.", "Same answer."]))
    ids = pair_ids(conn, c)
    kind, spec = judges.parse_spec("chat:sharp")
    # One pair judged before the job (as by an earlier, stopped attempt): the job must leave it alone.
    judge = insert_judge(conn, c.id, "chat-sharp", kind, spec)
    write_judgment(conn, judge, ids[0], "b", 0.5, "b", "b", cast_at=1.0)

    done = run_cli("feedback", "judge", "chat", "--judge", "chat:sharp", "--no-wait", "--json", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["judge"] == "chat-sharp"
    doc = feedback.wait_judge(conn, "chat", "chat-sharp", timeout_s=240)
    assert (doc["judged"], doc["pairs"], doc["status"], doc["progress"]) == (5, 5, "completed", 1.0)
    assert doc["asked"] == 2 * 4 and doc["unparsed"] == 0  # four pairs asked twice; probabilities always read

    found = {r["pair_id"]: r for r in judgment_rows(conn, c.id, "chat-sharp")}
    assert (found[ids[0]]["cast_at"], found[ids[0]]["margin"]) == (1.0, 0.5)  # skipped, not judged again
    check_both_orders([found[i] for i in ids[1:]])
    for i in ids[1:]:  # each order's verdict and the margin, as the model reads each question on its own
        r, prompt = found[i], prompt_of(conn, found[i])
        a1, b1, t1 = option_probabilities(sharp, judges.judge_prompt(prompt, r["text_a"], r["text_b"]))
        a2, b2, t2 = option_probabilities(sharp, judges.judge_prompt(prompt, r["text_b"], r["text_a"]))
        assert r["first_a"] == max((a1, "a"), (b1, "b"), (t1, "tie"))[1], r
        assert r["first_b"] == max((b2, "a"), (a2, "b"), (t2, "tie"))[1], r
        assert abs(r["margin"] - ((a1 - b1) + (b2 - a2)) / 2) < 1e-4, r
    assert any(abs(found[i]["margin"]) > 0.01 for i in ids[1:-1]), [found[i]["margin"] for i in ids]
    same = found[ids[-1]]
    assert abs(same["margin"]) < 1e-5, same
    assert same["choice"] == "tie" and {same["first_a"], same["first_b"]} in ({"a", "b"}, {"tie"}), same
    assert doc["position_consistent"] == round(sum(r["first_a"] == r["first_b"] for r in found.values()) / 5, 4)

    job = judges.judge_job(conn, "chat", "chat-sharp")
    log = job.log_path.read_text()
    assert "loading the chat judge" in log and "5/5 pairs judged" in log, log[-2000:]
    # Started again once complete, it neither starts a job nor judges anything twice.
    again = feedback.start_judge(conn, ws, "chat", kind, spec, "chat-sharp")
    assert again.id == job.id and again.status == "completed"


@pytest.mark.process
@pytest.mark.timeout(120)
def test_bad_specs_name_the_field(workspace, tiny_model_dir, monkeypatch):
    conn, ws = workspace
    ready_campaign(conn, ws, tiny_model_dir, "c", PROMPTS[:2], (["x 1", "x 2"], ["y 1", "y 2"]))
    feedback.create_campaign(conn, ws, "empty", ["tiny", "tiny-b"], prompts=["Say hi."])
    # A run folder as an SFT run leaves it: a run, but not a reward model.
    (ws.runs_dir / "sft1" / "final").mkdir(parents=True)
    (ws.runs_dir / "sft1" / "config.yaml").write_text("method: sft\nbase_model: tiny\n")
    monkeypatch.delenv("TUNELAB_JUDGE_UNSET", raising=False)
    closed = f"http://127.0.0.1:{_free_port()}/v1"
    cases = [
        (("nokind",), {}, "judge spec 'nokind': expected reward:RUN_ID"),
        (("magic:x",), {}, "judge kind 'magic'"),
        (("reward:",), {}, "reward run: the run id is empty"),
        (("reward:r999",), {}, "reward run 'r999': no run 'r999'"),
        (("reward:sft1",), {}, "reward run 'sft1': run sft1 is a 'sft' run, not a reward model"),
        (("reward:r999",), {"tie_band": -1}, "tie band: must be a number of at least 0"),
        (("chat:tiny",), {"tie_band": 0.2}, "tie band: only a reward judge has one"),
        (("chat:nope",), {}, "model 'nope' is not registered"),
        (("chat:tiny+r404",), {}, "there is no run 'r404'"),
        (("endpoint:localhost:8000",), {"model": "m"}, "endpoint base_url 'localhost:8000'"),
        (("endpoint:http://localhost:8000/v1",), {}, "endpoint model: give the model name"),
        (("endpoint:http://localhost:8000/v1",), {"model": "m", "api_key_env": "HOME"}, "api key env 'HOME'"),
        (("endpoint:http://localhost:8000/v1",), {"model": "m", "api_key_env": "TUNELAB_JUDGE_UNSET"},
         "api key env TUNELAB_JUDGE_UNSET: the environment variable is not set"),
        ((f"endpoint:{closed}",), {"model": "m"}, f"endpoint base_url {closed}: the server does not answer"),
    ]
    set_setting(conn, "judge_endpoints", f"http://localhost:8000/v1 {closed}")
    with pytest.raises(UserError, match="not one of the endpoints an admin allowed"):
        feedback.start_judge(conn, ws, "c", *judges.parse_spec("endpoint:http://169.254.169.254/v1", model="m"))
    for (text,), extra, message in cases:
        with pytest.raises(UserError) as err:
            kind, spec = judges.parse_spec(text, **extra)
            feedback.start_judge(conn, ws, "c", kind, spec)
        assert message in str(err.value), (text, str(err.value))
    with pytest.raises(UserError, match="campaign 'empty' has no pairs to judge yet"):
        feedback.start_judge(conn, ws, "empty", *judges.parse_spec("chat:tiny"))
    with pytest.raises(UserError, match="campaign 'nope' does not exist"):
        feedback.start_judge(conn, ws, "nope", *judges.parse_spec("chat:tiny"))
    assert conn.execute("SELECT count(*) FROM judges").fetchone()[0] == 0  # nothing recorded for a bad spec
    assert not jobs.list_jobs(conn, "judge")

    bad = run_cli("feedback", "judge", "c", "--judge", "reward:r999", env_home=ws.home)
    assert bad.returncode == 2 and "reward run 'r999'" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("feedback", "judge", "c", "--judge", "endpoint:http://localhost:8000/v1", "--endpoint-model",
                  "m", "--api-key-env", "TUNELAB_JUDGE_UNSET", env_home=ws.home)
    assert bad.returncode == 2 and "TUNELAB_JUDGE_UNSET" in bad.stderr, bad.stderr


def test_replies_are_parsed_robustly():
    cases = {"A": "A", " B.": "B", "tie": "tie", "Tie!": "tie", "[[B]]": "B", "**A**": "A", "A is better.": "A",
             "Answer B is better than answer A.": "B", "Verdict: A": "A", "The better answer: B": "B",
             "Both are equally good.": "tie", "A good answer would name Paris.": None, "\n\n": None, "": None,
             "I cannot decide.": None}
    assert {text: judges.parse_reply(text) for text in cases} == cases


# ---------------------------------------------------------------- OpenAI-compatible endpoint

def always_a_model(tiny_model_dir: Path, folder: Path) -> Path:
    """A copy of the tiny model that always replies "A": the most position-biased judge there is. Its
    generation config biases the first token to "A" and the next to end of text."""
    import shutil

    from transformers import AutoTokenizer
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    [a] = tokenizer("A", add_special_tokens=False)["input_ids"]
    config = json.loads((folder / "generation_config.json").read_text())
    config["sequence_bias"] = [[[a], 100.0], [[a, tokenizer.eos_token_id], 200.0]]
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def server(tmp_path):
    """`transformers serve` on a free port, loading each model it is asked for from its folder: yields the
    base URL the OpenAI client takes."""
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"transformers serve did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.process
@pytest.mark.timeout(300)
def test_endpoint_judge_against_a_real_openai_compatible_server(workspace, tiny_model_dir, server, tmp_path,
                                                                monkeypatch):
    conn, ws = workspace
    monkeypatch.setenv("TUNELAB_JUDGE_TEST_KEY", "sk-test")  # the job process inherits it; the DB never sees it
    set_setting(conn, "judge_endpoints", server)  # an admin allows it
    c = ready_campaign(conn, ws, tiny_model_dir, "ep", PROMPTS[:4],
                       (["Paris.", "Eat well.", "1 2 3 4 5", "Hello!"], ["Lyon.", "Sleep.", "one", "Hi."]))

    # A judge that always says "A": each order's verdict, mapped back to pair terms, is the answer shown
    # first, so the orders never agree, every choice is a tie with margin 0, and position consistency is 0.
    biased = str(always_a_model(tiny_model_dir, tmp_path / "always-a"))
    done = run_cli("feedback", "judge", "ep", "--judge", f"endpoint:{server}", "--endpoint-model", biased,
                   "--api-key-env", "TUNELAB_JUDGE_TEST_KEY", "--name", "biased", "--json", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["judged"], doc["pairs"], doc["status"], doc["asked"], doc["unparsed"]) == (4, 4, "completed", 8, 0)
    assert doc["choices"] == {"tie": 4} and doc["position_consistent"] == 0.0
    assert doc["spec"] == {"base_url": server, "model": biased, "api_key_env": "TUNELAB_JUDGE_TEST_KEY"}
    assert "sk-test" not in json.dumps([list(r) for r in conn.execute("SELECT * FROM judges")])
    found = judgment_rows(conn, c.id, "biased")
    assert sorted(r["pair_id"] for r in found) == pair_ids(conn, c)
    assert all((r["first_a"], r["first_b"], r["choice"], r["margin"]) == ("a", "b", "tie", 0.0) for r in found)
    job = judges.judge_job(conn, "ep", "biased")
    assert job.progress()["progress"] == 1.0 and "4/4 pairs judged" in job.log_path.read_text()

    # The tiny model itself, whose replies are whatever it makes of the template: ask the server the same
    # questions (greedy, so the same replies) and map them as the judge must, counting replies that name no
    # option (the fallback: that order is a tie).
    model = str(tiny_model_dir)
    done = run_cli("feedback", "judge", "ep", "--judge", f"endpoint:{server}", "--endpoint-model", model,
                   "--name", "tiny", "--json", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["judged"], doc["asked"]) == (4, 8)
    from openai import OpenAI
    client = OpenAI(base_url=server, api_key="none")
    unparsed = 0
    for row in judgment_rows(conn, c.id, "tiny"):
        prompt, verdicts = prompt_of(conn, row), []
        for first, second, letters in ((row["text_a"], row["text_b"], "ab"), (row["text_b"], row["text_a"], "ba")):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": judges.judge_prompt(prompt, first, second)}],
                max_tokens=judges.ENDPOINT_MAX_TOKENS, temperature=0).choices[0].message.content
            said = judges.parse_reply(reply)
            unparsed += said is None
            verdicts.append({"A": letters[0], "B": letters[1]}.get(said, "tie"))
        assert [row["first_a"], row["first_b"]] == verdicts, row
        check_both_orders([row])
    assert doc["unparsed"] == unparsed


# ---------------------------------------------------------------- reward model

WORDS = ["the", "capital", "of", "France", "is", "Paris", "hello", "how", "are", "you", "today", "give", "three",
         "tips", "for", "staying", "healthy", "eat", "well", "sleep", "exercise"]
TOPICS = ["France", "health", "sleep", "numbers", "the weather", "cats", "music", "tea", "running", "books"]


def _answer(rng: random.Random, digits: bool) -> str:
    share = rng.uniform(0.7, 1.0) if digits else rng.uniform(0.0, 0.3)
    return " ".join(str(rng.randrange(10)) if rng.random() < share else rng.choice(WORDS) for _ in range(8))


@pytest.mark.process
@pytest.mark.timeout(600)
def test_reward_judge_agrees_with_the_votes_it_was_trained_on(workspace, tiny_model_dir, tmp_path):
    """People prefer the mostly-digit answer, whichever model wrote it; their votes, exported as TRL
    preferences, train a reward model, which as a judge must then side with those votes."""
    from tunelab import runs
    conn, ws = workspace
    rng = random.Random(0)
    n = 48
    digits_from_a = [i % 2 == 0 for i in range(n)]  # which model writes the digits alternates
    answers_a = [_answer(rng, d) for d in digits_from_a]
    answers_b = [_answer(rng, not d) for d in digits_from_a]
    c = ready_campaign(conn, ws, tiny_model_dir, "rm", [f"Tell me about {TOPICS[i % len(TOPICS)]} ({i})."
                                                        for i in range(n)], (answers_a, answers_b))
    digit_answers = {a if d else b for a, b, d in zip(answers_a, answers_b, digits_from_a)}
    while (shown := feedback.next_pair(conn, c.id, 1, "ann")) is not None:
        feedback.cast_vote(conn, shown.id, "left" if shown.left in digit_answers else "right", 2)
    votes = dict(conn.execute("SELECT pair_id, choice FROM votes WHERE campaign_id = ?", [c.id]).fetchall())
    assert len(votes) == n and set(votes.values()) == {"a", "b"}

    ref = feedback.export(conn, ws, "rm", "trl", tmp_path / "prefs.jsonl", register="rm-prefs")["dataset"]
    run_id = runs.launch(conn, ws, {"method": "reward", "base_model": "tiny", "dataset": ref, "tuning": "full",
                                    "learning_rate": 1e-3, "per_device_train_batch_size": 8, "max_steps": 30,
                                    "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, "seed": 0})
    run = runs.wait(conn, run_id, poll_s=0.5, timeout_s=300)
    assert run.status == "completed", (run.error, runs.log_tail(run))
    with pytest.raises(UserError, match="trained a reward model"):  # it scores answers; it cannot be a chat judge
        feedback.start_judge(conn, ws, "rm", *judges.parse_spec(f"chat:tiny+{run_id}"))

    done = run_cli("feedback", "judge", "rm", "--judge", f"reward:{run_id}", "--json", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["judge"], doc["judged"], doc["pairs"], doc["position_consistent"]) == (f"reward-{run_id}", n, n, None)
    assert doc["spec"] == {"run": run_id, "tie_band": judges.DEFAULT_TIE_BAND}
    found = judgment_rows(conn, c.id, f"reward-{run_id}")
    assert all(r["first_a"] is None and r["first_b"] is None for r in found)
    assert all(r["choice"] == ("tie" if abs(r["margin"]) < judges.DEFAULT_TIE_BAND else
                               "a" if r["margin"] > 0 else "b") for r in found)
    agree = sum(r["choice"] == votes[r["pair_id"]] for r in found) / n
    assert agree >= 0.85, (agree, [(r["choice"], round(r["margin"], 2)) for r in found])

    # The tie band is the judge's: one wider than every margin makes every verdict a tie.
    widest = max(abs(r["margin"]) for r in found)
    done = run_cli("feedback", "judge", "rm", "--judge", f"reward:{run_id}", "--tie-band", str(widest + 1),
                   "--name", "wide", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    assert f"wide (reward): {n}/{n} pairs judged; tie {n}" in done.stdout


# ---------------------------------------------------------------- the Feedback page

@pytest.mark.e2e
@pytest.mark.process
@pytest.mark.timeout(240)
def test_feedback_page_starts_a_judge_and_shows_its_progress(app, page, tiny_model_dir):
    from tunelab import auth
    from tunelab.workspace import Workspace
    conn = app.db()
    auth.add_user(conn, "root", "admin", "admin password")
    c = ready_campaign(conn, Workspace(app.home), tiny_model_dir, "c1", PROMPTS[:3],
                       (["Paris.", "Eat well.", "1 2 3"], ["Lyon.", "Sleep.", "one"]))
    sign_in(page, app, "root", "admin password")
    page.goto(f"{app.url}/feedback")
    page.get_by_role("heading", name="Feedback").wait_for()
    wait_for_app(page)
    page.get_by_text("Judges", exact=True).click()
    page.get_by_text("chat model", exact=True).click()
    wait_for_app(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Chat model").click()
    page.get_by_role("option", name="tiny", exact=True).click()
    page.get_by_role("button", name="Start judging").click()
    # The grid draws on a canvas; its cells are also in the canvas's fallback table.
    grid = page.locator('[data-testid="stDataFrame"]').filter(has=page.locator("th", has_text="same in both orders"))
    grid.locator("td", has_text="3 / 3").wait_for(state="attached", timeout=120_000)
    assert grid.locator("td").all_text_contents()[:3] == ["chat-tiny", "chat", "3 / 3"]
    assert len(judgment_rows(conn, c.id, "chat-tiny")) == 3

    page.get_by_text("OpenAI-compatible endpoint", exact=True).click()  # a bad field is named, not a traceback
    wait_for_app(page)
    page.get_by_role("textbox", name="Base URL").fill("http://127.0.0.1:9/v1")
    page.get_by_role("textbox", name="Model", exact=True).fill("m")
    page.get_by_role("textbox", name="API key variable").fill("HOME")
    page.get_by_role("button", name="Start judging").click()
    page.get_by_text("api key env 'HOME'").wait_for()
