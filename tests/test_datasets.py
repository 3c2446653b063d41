"""Dataset import: formats, file types, validation reasons, versions and atomicity."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TEST_DATA
from tunelab import datasets
from tunelab import workspace as wsmod
from tunelab.errors import UserError

def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def only_row(db, ws, tmp_path, record, fmt="auto", name="d", suffix=".jsonl"):
    result = datasets.import_file(db, ws, write_jsonl(tmp_path / f"{name}{suffix}", [record]), name, fmt=fmt)
    return result, result.version.load()[0]


def import_error(db, ws, path, **kw) -> str:
    with pytest.raises(UserError) as exc:
        datasets.import_file(db, ws, path, "bad", **kw)
    assert db.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 0
    assert not (ws.datasets_dir / "bad").exists() or not any((ws.datasets_dir / "bad").iterdir())
    return str(exc.value)


# ---------------------------------------------------------------- LLaMA-Factory's formats, whole files

def test_llamafactory_alpaca_demo_is_alpaca_with_300_rows(workspace):
    db, ws = workspace
    result = datasets.import_file(db, ws, TEST_DATA / "alpaca_demo.json", "alpaca")
    assert result.detected_format == "alpaca"
    assert result.version.rows == 300 and result.version.kind == "sft"
    first = json.loads((TEST_DATA / "alpaca_demo.json").read_text())[0]
    row = result.version.load()[0]
    assert row == {"messages": [{"role": "user", "content": first["instruction"]},
                                {"role": "assistant", "content": first["output"]}]}


def test_llamafactory_dpo_demo_is_preference_with_120_pairs(workspace):
    db, ws = workspace
    result = datasets.import_file(db, ws, TEST_DATA / "dpo_demo.json", "dpo")
    assert result.detected_format == "preference"
    v = result.version
    assert v.rows == 120 and v.kind == "preference"
    src = json.loads((TEST_DATA / "dpo_demo.json").read_text())[0]
    row = v.load()[0]
    assert row["prompt"][-1] == {"role": "user", "content": src["conversations"][-1]["value"]}
    assert row["chosen"] == [{"role": "assistant", "content": src["chosen"]["value"]}]
    assert row["rejected"] == [{"role": "assistant", "content": src["rejected"]["value"]}]
    assert datasets.prompts_of(v)[0] == row["prompt"]


# ---------------------------------------------------------------- formats

def test_alpaca_with_input_system_and_history(workspace, tmp_path):
    db, ws = workspace
    res, row = only_row(db, ws, tmp_path, {"instruction": "Add", "input": "2 and 3", "output": "5",
                                           "system": "Be brief.", "history": [["Hi", "Hello!"]]})
    assert res.detected_format == "alpaca"
    assert row["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello!"},
                               {"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]


def test_sharegpt_with_system_tools_function_call_and_observation(workspace, tmp_path):
    db, ws = workspace
    tools = [{"name": "weather", "description": "weather in a city", "parameters": {"type": "object"}}]
    res, row = only_row(db, ws, tmp_path, {"conversations": [
        {"from": "system", "value": "You can call tools."},
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "It is 21 degrees."}], "tools": json.dumps(tools)})
    assert res.detected_format == "sharegpt" and res.version.kind == "sft"
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert row["tools"] == tools


def test_openai_messages(workspace, tmp_path):
    db, ws = workspace
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    res, row = only_row(db, ws, tmp_path, {"messages": msgs})
    assert res.detected_format == "messages" and row == {"messages": msgs}


def test_prompt_completion_strings_and_conversational(workspace, tmp_path):
    db, ws = workspace
    res, row = only_row(db, ws, tmp_path, {"prompt": "2+2?", "completion": "4"})
    assert res.detected_format == "prompt-completion"
    assert row["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    _, row = only_row(db, ws, tmp_path, {"prompt": [{"role": "user", "content": "Hi"}],
                                         "completion": [{"role": "assistant", "content": "Yo"}]}, name="e")
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_preference_strings_lists_and_implicit_prompt(workspace, tmp_path):
    db, ws = workspace
    res, row = only_row(db, ws, tmp_path, {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."})
    assert res.detected_format == "preference"
    assert row == {"prompt": [{"role": "user", "content": "Sky?"}],
                   "chosen": [{"role": "assistant", "content": "Blue."}],
                   "rejected": [{"role": "assistant", "content": "Green."}]}
    user = {"role": "user", "content": "Sky?"}
    _, row = only_row(db, ws, tmp_path, {"chosen": [user, {"role": "assistant", "content": "Blue."}],
                                         "rejected": [user, {"role": "assistant", "content": "Red."}]}, name="e")
    assert row["prompt"] == [user] and row["rejected"] == [{"role": "assistant", "content": "Red."}]


def test_kto_messages_with_label_and_csv_prompt_completion_label(workspace, tmp_path):
    db, ws = workspace
    res, row = only_row(db, ws, tmp_path, {"messages": [{"role": "user", "content": "Hi"},
                                                        {"role": "assistant", "content": "Go away"}],
                                           "label": False})
    assert res.detected_format == "kto" and res.version.kind == "kto"
    assert row == {"prompt": [{"role": "user", "content": "Hi"}],
                   "completion": [{"role": "assistant", "content": "Go away"}], "label": False}
    path = tmp_path / "kto.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([["prompt", "completion", "label"], ["Hi", "Hello!", "true"], ["Hi", "Bye", "false"]])
    result = datasets.import_file(db, ws, path, "kto_csv")
    assert result.detected_format == "kto" and [r["label"] for r in result.version.load()] == [True, False]


def test_prompts_from_prompt_instruction_or_open_messages(workspace, tmp_path):
    db, ws = workspace
    for i, rec in enumerate([{"prompt": "Tell a joke"}, {"instruction": "Tell a joke"},
                             {"messages": [{"role": "user", "content": "Tell a joke"}]}]):
        res, row = only_row(db, ws, tmp_path, rec, name=f"p{i}")
        assert res.detected_format == "prompts" and res.version.kind == "prompts"
        assert row == {"prompt": [{"role": "user", "content": "Tell a joke"}]}


def test_csv_and_parquet_files(workspace, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    db, ws = workspace
    path = tmp_path / "a.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["instruction", "input", "output"])
        w.writeheader()
        w.writerows([{"instruction": "Say hi", "input": "", "output": "hi\nthere"},
                     {"instruction": "Count", "input": "to 2", "output": "1 2"}])
    v = datasets.import_file(db, ws, path, "csvset").version
    assert v.rows == 2 and v.load()[0]["messages"][1]["content"] == "hi\nthere"
    msgs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]] * 3
    pq.write_table(pa.table({"messages": msgs}), tmp_path / "m.parquet")
    result = datasets.import_file(db, ws, tmp_path / "m.parquet", "pq")
    assert result.detected_format == "messages" and result.version.load()[2] == {"messages": msgs[2]}


def test_mapping_and_format_override(workspace, tmp_path):
    db, ws = workspace
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Why?", "answer": "Because."}])
    assert "cannot tell the format from the columns question, answer" in import_error(db, ws, path)
    result = datasets.import_file(db, ws, path, "qa", mapping=["instruction=question", "output=answer"])
    assert result.detected_format == "alpaca"
    assert result.version.load()[0]["messages"][1]["content"] == "Because."
    # A forced format reads the row that way even though detection would say otherwise.
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Hi", "completion": "Yo"}])
    assert datasets.import_file(db, ws, path, "pr", fmt="prompts").version.kind == "prompts"


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("record, reason", [
    ({"instruction": "x", "output": 5}, "wrong type: 'output' must be a string"),
    ({"messages": "hi"}, "wrong type: 'messages' must be a list"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}, "missing field 'content'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "empty message"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "alien", "value": "x"}]}, "unknown role 'alien'"),
    ({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"},
                   {"role": "assistant", "content": "y"}]}, "roles out of order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "y"}]}, "roles out of order"),
    ({"instruction": "Describe", "output": "A cat.", "images": ["cat.png"]}, "images are not supported"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "audios": ["a.wav"]},
     "audio is not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "url": "x.png"}]},
                   {"role": "assistant", "content": "x"}]}, "image content is not supported"),
    ({"prompt": "x", "chosen": "a"}, "missing field 'rejected'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "label": "maybe"},
     "wrong type: 'label' must be true or false"),
])
def test_each_bad_record_is_named_with_its_line_and_reason(workspace, tmp_path, record, reason):
    db, ws = workspace
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    if "label" in record:
        good = {**good, "label": True}
    if "chosen" in record:
        good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    if "conversations" in record:
        good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    if "instruction" in record:
        good = {"instruction": "Say", "output": "ok"}
    path = write_jsonl(tmp_path / "f.jsonl", [good, good, record, good])
    msg = import_error(db, ws, path)
    assert "1 bad record of 4" in msg and "nothing imported" in msg
    assert f"line 3: {reason}" in msg, msg


def test_not_json_line_encoding_error_and_record_not_an_object(workspace, tmp_path):
    db, ws = workspace
    good = json.dumps({"prompt": "p", "completion": "c"}).encode()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([good, b'{"prompt": "p", "completion": ', good, b'{"prompt": "caf\xe9"}', b"[1, 2]"]))
    msg = import_error(db, ws, path)
    assert "3 bad records of 5" in msg
    assert "line 2: not JSON" in msg
    assert "line 4: encoding error: byte 0xe9" in msg
    assert "line 5: wrong type: a record must be an object, not list" in msg


def test_whole_file_errors_empty_not_json_encoding_too_big(workspace, tmp_path):
    db, ws = workspace
    for name, content in [("e.jsonl", b""), ("e.json", b"  \n"), ("e2.json", b"[]"), ("e.csv", b"a,b\n")]:
        (tmp_path / name).write_bytes(content)
        assert "the file is empty" in import_error(db, ws, tmp_path / name)
    (tmp_path / "x.json").write_bytes(b'[\n{"prompt": "a"},\n{"prompt": \n]')
    assert "x.json: line 4: not JSON" in import_error(db, ws, tmp_path / "x.json")
    (tmp_path / "x.csv").write_bytes(b"prompt\nok\n\xff\xfe bad\n")
    assert "x.csv: line 3: encoding error" in import_error(db, ws, tmp_path / "x.csv")
    (tmp_path / "x.txt").write_text("hello")
    assert "unsupported file type '.txt'" in import_error(db, ws, tmp_path / "x.txt")
    wsmod.set_setting(db, "upload_limit_mb", 1)
    big = write_jsonl(tmp_path / "big.jsonl", [{"prompt": "x" * 1000}] * 1100)
    assert "over the upload limit of 1 MB" in import_error(db, ws, big)


def test_report_lists_first_50_problems_and_the_count(workspace, tmp_path):
    db, ws = workspace
    records = [{"prompt": "ok", "completion": "fine"}] + [{"prompt": "p", "completion": ""}] * 70
    msg = import_error(db, ws, write_jsonl(tmp_path / "many.jsonl", records))
    assert "70 bad records of 71" in msg
    assert "line 51: empty message" in msg and "line 52:" not in msg
    assert "... and 20 more" in msg


def test_skip_invalid_imports_the_good_rows_and_lists_the_skipped(workspace, tmp_path):
    db, ws = workspace
    good = {"prompt": "p", "completion": "c"}
    result = datasets.import_file(db, ws, write_jsonl(tmp_path / "s.jsonl", [good, {"prompt": "p"}, good]), "s",
                                  skip_invalid=True)
    assert result.version.rows == 2
    assert [str(p) for p in result.skipped] == ["line 2: missing field 'completion'"]
    assert result.version.report["skipped"] == 1


# ---------------------------------------------------------------- versions

def test_versions_refs_and_lineage(workspace, tmp_path):
    db, ws = workspace
    path = write_jsonl(tmp_path / "v.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": "d"}])
    v1 = datasets.import_file(db, ws, path, "v").version
    v2 = datasets.import_file(db, ws, path, "v").version
    assert (v1.ref, v2.ref) == ("v@1", "v@2") and v1.content_hash == v2.content_hash
    assert datasets.resolve(db, ws, "v").ref == "v@2" and datasets.resolve(db, ws, "v@1").version == 1
    assert v1.source_name == "v.jsonl" and len(v1.source_hash) == 64 and v1.transform == "import"
    meta = json.loads((v1.dir / "meta.json").read_text())
    assert meta["content_hash"] == v1.content_hash and meta["rows"] == 2
    v3 = datasets.split(db, ws, "v@1", val=0.5, seed=1)
    assert [x.ref for x in datasets.lineage(db, ws, v3.ref)] == ["v@1", "v@3"]
    assert v3.parent == "v@1" and v3.params == {"val": 0.5, "test": 0.0, "seed": 1}
    assert set(v3.files) == {"train", "validation"}
    for ref, text in [("v@9", "no such version"), ("nope", "dataset 'nope' not found"), ("v@x", "must be a number")]:
        with pytest.raises(UserError, match=text):
            datasets.resolve(db, ws, ref)
    assert [d["ref"] for d in datasets.list_datasets(db)] == ["v@3"]


def test_register_rows_checks_canonical_rows(workspace):
    db, ws = workspace
    pair = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}]}
    v = datasets.register_rows(db, ws, "votes", [pair], "preference", "feedback_export", {"campaign": 1},
                               source="campaign:1")
    assert v.load() == [pair] and v.transform == "feedback_export" and v.source_name == "campaign:1"
    with pytest.raises(UserError, match="row 1: missing field 'rejected'"):
        datasets.register_rows(db, ws, "votes", [{"prompt": pair["prompt"], "chosen": pair["chosen"]}],
                               "preference", "feedback_export", {})


@pytest.mark.process
@pytest.mark.timeout(120)
def test_orphan_folders_are_ignored_and_cleaned(workspace, tmp_path):
    db, ws = workspace
    # What a crash between rename and commit leaves, and a dead writer's temp folder.
    (ws.datasets_dir / "o" / "v1").mkdir(parents=True)
    (ws.datasets_dir / "o" / "v1" / "train.jsonl").write_text("garbage\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (ws.datasets_dir / "o" / f".tmp-{dead.pid}-abc").mkdir()
    with pytest.raises(UserError):
        datasets.resolve(db, ws, "o")
    v = datasets.import_file(db, ws, write_jsonl(tmp_path / "o.jsonl", [{"prompt": "p", "completion": "c"}]), "o")
    assert v.version.ref == "o@1" and "garbage" not in (v.version.dir / "train.jsonl").read_text()
    assert sorted(p.name for p in (ws.datasets_dir / "o").iterdir()) == ["v1"]


@pytest.mark.process
@pytest.mark.timeout(120)
def test_killed_import_leaves_no_version(tmp_path):
    """SIGKILL while the version folder is being written: no DB row, and the next import is whole."""
    home = tmp_path / "home"
    big = write_jsonl(tmp_path / "big.jsonl", [{"instruction": f"Say {i}", "output": f"{i} " * 40}
                                               for i in range(40_000)])
    env = dict(os.environ, TUNELAB_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "data", "import", str(big), "--name", "big"],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((home / "datasets" / "big").glob(".tmp-*")):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((home / "datasets" / "big").glob(".tmp-*")), "the kill missed the write window"
    from tunelab import db as dbmod
    conn = dbmod.connect(home / "tunelab.db")
    ws = wsmod.Workspace(home)
    assert conn.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 0
    assert datasets.list_datasets(conn) == []
    small = write_jsonl(tmp_path / "small.jsonl", [{"instruction": "a", "output": "b"}])
    v = datasets.import_file(conn, ws, small, "big").version
    assert v.ref == "big@1" and v.load() == [{"messages": [{"role": "user", "content": "a"},
                                                           {"role": "assistant", "content": "b"}]}]
    assert [p.name for p in (home / "datasets" / "big").iterdir()] == ["v1"]
