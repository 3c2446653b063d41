"""One reader for rows from files: prompts files, gold pairs and judgments are read, detected and
validated as `tunelab data import` does, and a bad line ends in exit 2 naming the file and line."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab import datasets, feedback, jobs, models
from tunelab.errors import UserError
from tests.conftest import REPO, run_cli

SAMPLE = REPO / "data" / "samples" / "prompts.jsonl"
QUESTIONS = ["Can I pause the internet for one device?", "Why is my Wi-Fi slow, at night?", 'Say "hi".']


@pytest.fixture
def two_models(tiny_model, tiny_model_dir):
    """'tiny' and 'tiny-b' to compare; no generation job outlives the test, even a failed one."""
    conn, ws, _ = tiny_model
    models.add_local(conn, tiny_model_dir, "tiny-b")
    yield conn, ws
    for job in jobs.list_jobs(conn):
        if job.status in jobs.ACTIVE:
            jobs.stop(conn, job.id, grace_s=5)


def stored_prompts(conn, name: str) -> list[str]:
    """The text of each prompt a campaign stored, in order; a prompt is one user message."""
    rows = conn.execute("SELECT p.messages_json FROM campaign_prompts p JOIN campaigns c ON c.id = p.campaign_id "
                        "WHERE c.name = ? ORDER BY p.idx", [name]).fetchall()
    messages = [json.loads(r[0]) for r in rows]
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in messages), messages
    return [m[0]["content"] for m in messages]


@pytest.mark.process
@pytest.mark.timeout(300)
def test_cli_prompts_file_gives_the_sample_prompts_not_json(two_models):
    """The project's own sample file: annotators and models see the question, not a JSON line."""
    conn, ws = two_models
    done = run_cli("feedback", "create", "sample", "--prompts-file", str(SAMPLE), "--models", "tiny,tiny-b",
                   "--overlap", "1", "--max-new-tokens", "2", "--wait", env_home=ws.home, timeout=280)
    assert done.returncode == 0, done.stderr
    expected = [json.loads(line)["prompt"] for line in SAMPLE.read_text().splitlines() if line.strip()]
    assert stored_prompts(conn, "sample") == expected
    assert not any(p.lstrip().startswith("{") for p in stored_prompts(conn, "sample"))


def _write(path: Path, kind: str) -> Path:
    """QUESTIONS as a prompts file of one kind."""
    if kind == "txt":
        path.write_text("\n".join(QUESTIONS) + "\n\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    elif kind == "json":  # an alpaca file: its instructions are the prompts
        path.write_text(json.dumps([{"instruction": q, "input": "", "output": "ok"} for q in QUESTIONS]))
    elif kind == "csv":
        path.write_text("prompt\n" + "".join(f'"{q.replace(chr(34), chr(34) * 2)}"\n' for q in QUESTIONS))
    elif kind == "parquet":
        pq.write_table(pa.table({"instruction": QUESTIONS}), path)
    elif kind == "sft.jsonl":  # a chat dataset serves as prompts by its turns before the answer
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                         {"role": "assistant", "content": "ok"}]}) + "\n"
                                for q in QUESTIONS))
    elif kind == "preference.jsonl":
        path.write_text("".join(json.dumps({"prompt": q, "chosen": "yes", "rejected": "no"}) + "\n"
                                for q in QUESTIONS))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "sft.jsonl", "preference.jsonl"])
def test_a_prompts_file_in_any_format_gives_the_same_prompts(tmp_path, kind):
    path = _write(tmp_path / f"prompts.{kind}", kind)
    assert datasets.read_prompts(path) == [[{"role": "user", "content": q}] for q in QUESTIONS]


@pytest.mark.process
@pytest.mark.timeout(120)
def test_cli_txt_jsonl_and_csv_prompts_files_store_the_same_prompts(two_models, tmp_path):
    conn, ws = two_models
    for kind in ("txt", "jsonl", "csv"):
        path = _write(tmp_path / f"prompts.{kind}", kind)
        done = run_cli("feedback", "create", f"from-{kind}", "--prompts-file", str(path), "--models", "tiny,tiny-b",
                       "--overlap", "1", "--max-new-tokens", "2", "--wait", env_home=ws.home, timeout=110)
        assert done.returncode == 0, done.stderr
        assert stored_prompts(conn, f"from-{kind}") == QUESTIONS


@pytest.mark.process
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind, content, where", [
    ("jsonl", '{"prompt": "fine"}\n{"prompt": "broken"\n', "line 2"),
    ("jsonl", '{"prompt": "fine"}\n\n{"question": 3}\n', "line 3"),
    ("csv", "prompt,note\nfine,x\n,y\n", "line 3: empty message"),
    ("txt", b"fine\n\xff\xfebad\n", "line 2"),
])
def test_cli_bad_line_in_a_prompts_file_exits_2_naming_it(two_models, tmp_path, kind, content, where):
    conn, ws = two_models
    path = tmp_path / f"bad-prompts.{kind}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = run_cli("feedback", "create", "bad", "--prompts-file", str(path), "--models", "tiny,tiny-b",
                   env_home=ws.home, timeout=110)
    assert done.returncode == 2, done.stderr
    assert f"bad-prompts.{kind}" in done.stderr and where in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 0


@pytest.mark.process
@pytest.mark.timeout(120)
def test_cli_gold_file_any_format_and_a_bad_line_exits_2_naming_it(two_models, tmp_path):
    conn, ws = two_models
    feedback.create_campaign(conn, ws, "c1", ["tiny", "tiny-b"], prompts=QUESTIONS)
    bad = tmp_path / "gold.jsonl"
    bad.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n"
                   + json.dumps({"prompt": "3+3?", "chosen": "6"}) + "\n"
                   + "{not json\n")
    done = run_cli("feedback", "gold", "c1", str(bad), env_home=ws.home, timeout=110)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "gold.jsonl: line 2: missing field 'rejected'" in done.stderr, done.stderr
    bad.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n{not json\n")
    done = run_cli("feedback", "gold", "c1", str(bad), env_home=ws.home, timeout=110)
    assert done.returncode == 2 and "gold.jsonl: line 2: not JSON" in done.stderr, done.stderr
    assert conn.execute("SELECT count(*) FROM pairs").fetchone()[0] == 0  # nothing half-added

    good = tmp_path / "gold.csv"
    good.write_text("prompt,chosen,rejected\n2+2?,4,5\n3+3?,6,7\n")
    done = run_cli("feedback", "gold", "c1", str(good), env_home=ws.home, timeout=110)
    assert done.returncode == 0, done.stderr
    golds = conn.execute("SELECT cp.messages_json, ra.text, rb.text, p.gold FROM pairs p JOIN campaign_prompts cp "
                         "ON cp.id = p.prompt_id JOIN responses ra ON ra.id = p.response_a JOIN responses rb "
                         "ON rb.id = p.response_b ORDER BY cp.idx").fetchall()
    assert [(json.loads(m)[0]["content"], a if g == "a" else b) for m, a, b, g in golds] == [("2+2?", "4"), ("3+3?", "6")]


def test_judgments_are_read_by_the_import_reader(workspace, tmp_path):
    """Arena battles as CSV import too, and a broken line is named like any import's."""
    conn, _ = workspace
    path = tmp_path / "battles.csv"
    path.write_text("model_a,model_b,winner,prompt,response_a,response_b\nm1,m2,model_a,Hi?,Hello,Yo\n")
    assert feedback.import_judgments(conn, path, "arena", "csv-battles")["votes_added"] == 1
    bad = tmp_path / "battles.jsonl"
    bad.write_text(json.dumps({"model_a": "m1", "model_b": "m2", "winner": "tie", "prompt": "p",
                               "response_a": "a", "response_b": "b"}) + "\n[1, 2\n")
    with pytest.raises(UserError, match=r"battles.jsonl: line 2: not JSON"):
        feedback.import_judgments(conn, bad, "arena", "jsonl-battles")


def test_a_bad_line_in_an_eval_reference_file_is_named(workspace, tmp_path):
    from tunelab import evaluate
    conn, ws = workspace
    ref = tmp_path / "general.jsonl"
    ref.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(UserError, match=r"general.jsonl: line 2"):
        evaluate.reference_texts(conn, ws, str(ref), None)
    ref.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"general.jsonl: line 2: no 'text' field"):
        evaluate.reference_texts(conn, ws, str(ref), None)


@pytest.mark.parametrize("bad", [
    {"conversation_a": ["hi", "yo"]},
    {"model_a": 1},
    {"tstamp": "noon"},
    {"conversation_a": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": {"a": 1}}]},
])
def test_hostile_arena_fields_are_named_not_crashed_on(workspace, tmp_path, bad):
    """Wrong-typed Arena fields give a UserError naming the file and record, and store nothing."""
    conn, _ = workspace
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rec = {"model_a": "m1", "model_b": "m2", "winner": "model_a", "conversation_a": conv,
           "conversation_b": conv, "tstamp": 1700000000.0, **bad}
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(UserError, match=r"hostile\.jsonl record 1"):
        feedback.import_judgments(conn, path, "arena", "c")
    assert conn.execute("SELECT count(*) FROM campaigns WHERE name = 'c'").fetchone()[0] == 0
