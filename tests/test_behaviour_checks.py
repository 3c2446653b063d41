"""Behaviour checks (tunelab.checks): each kind passes and fails on hand-written texts, a bad declaration is a
UserError naming the check and the key, the bundled sample's references keep the format it declares, and an
eval on the tiny model reports pass rates that its outputs.jsonl recomputes to."""
import json
import os
import subprocess
import sys

import pytest

from tunelab import checks, evaluate, samples
from tunelab.errors import UserError
from tests.conftest import make_dataset, run_cli

GOOD = "Answer: Restart the router.\nSteps: 1. Unplug it. 2. Wait 30 seconds. 3. Plug it in."


@pytest.mark.parametrize("decl, passes, fails", [
    ({"kind": "regex", "pattern": r"^Answer: \S"}, GOOD, "The answer: restart it."),
    ({"kind": "regex", "pattern": r"lorem", "must": "not_match", "ignore_case": True}, GOOD, "LOREM ipsum"),
    ({"kind": "sections", "required": ["Answer:", "Steps:"]}, GOOD, "Answer: restart.\nThen unplug it."),
    ({"kind": "sections", "required": ["Answer:", "Steps:"]}, "  Answer: x\n  Steps: 1. y",
     "Steps: 1. y\nAnswer: x"),  # indented lines count; the order is part of the format
    ({"kind": "sections", "required": ["Answer:", "Steps:"], "in_order": False}, "Steps: 1. y\nAnswer: x",
     "Answer: x, Steps: 1. y"),  # a section starts a line
    ({"kind": "json"}, '{"a": 1}', "{'a': 1}"),
    ({"kind": "json"}, '```json\n[1, 2]\n```', 'Here it is: [1, 2]'),
    ({"kind": "json", "schema": {"type": "object", "required": ["name"],
                                 "properties": {"name": {"type": "string"}}}},
     '{"name": "Acme"}', '{"name": 7}'),
    ({"kind": "max_length", "words": 3}, "one two three", "one two three four"),
    ({"kind": "max_length", "chars": 5, "words": 10}, "12345", "123456"),
    ({"kind": "forbidden", "phrases": ["as an ai", "competitor"]}, GOOD, "As an AI, I think so."),
    ({"kind": "forbidden", "phrases": ["Acme"], "ignore_case": False}, "acme router", "Acme router"),
    ({"kind": "refusal"}, GOOD, "I'm sorry, but I can't help with that."),
    ({"kind": "refusal", "expect": "refuse", "phrases": ["I will not"]}, "I will not do that.", GOOD),
])
def test_each_kind_passes_and_fails(decl, passes, fails):
    assert checks.run(passes, [decl]) == {decl["kind"]: True}
    assert checks.run(fails, [decl]) == {decl["kind"]: False}


def test_names_and_pass_rates():
    decl = [{"kind": "regex", "pattern": "a"}, {"kind": "regex", "pattern": "b"},
            {"kind": "max_length", "words": 1, "name": "one_word"}]
    results = [checks.run(t, decl) for t in ("a", "ab", "b c")]
    assert results == [{"regex": True, "regex_2": False, "one_word": True},
                       {"regex": True, "regex_2": True, "one_word": True},
                       {"regex": False, "regex_2": True, "one_word": False}]
    every, each = checks.pass_rates(results)
    assert every == pytest.approx(100 / 3) and each == pytest.approx({"regex": 200 / 3, "regex_2": 200 / 3,
                                                                      "one_word": 200 / 3})


@pytest.mark.parametrize("decl, message", [
    ([{"kind": "regex", "pattern": "Answer: ("}], r"check 1, 'regex': key 'pattern': bad regular expression"),
    ([{"kind": "regex"}], r"check 1, 'regex': key 'pattern': is required"),
    ([{"kind": "sizes"}], r"check 1: key 'kind': 'sizes' is not one of: regex"),
    ([{"kind": "json", "schema": {"type": "objekt"}}], r"check 1, 'json': key 'schema': not a valid JSON Schema"),
    ([{"kind": "json", "schema": "object"}], r"key 'schema': expected a mapping"),
    ([{"kind": "max_length"}], r"'max_length': key 'words': give words, chars or both"),
    ([{"kind": "max_length", "words": 0}], r"key 'words': expected a whole number of at least 1"),
    ([{"kind": "regex", "pattern": "a", "must": "maybe"}], r"key 'must': 'maybe' is not one of: match, not_match"),
    ([{"kind": "forbidden", "phrases": []}], r"key 'phrases': expected a non-empty list"),
    ([{"kind": "regex", "pattern": "a", "patern": "b"}], r"unknown key 'patern' for kind 'regex'"),
    ([{"kind": "regex", "pattern": "a", "name": "x"}, {"kind": "sections", "required": ["A"], "name": "x"}],
     r"check 2: key 'name': 'x' is used by an earlier check"),
    ([], r"expected a non-empty list of checks"),
    (["regex"], r"check 1: expected a mapping"),
])
def test_bad_declarations_name_the_check_and_key(decl, message):
    with pytest.raises(UserError, match=message):
        checks.run("text", decl)


def test_a_checks_file_names_its_line(tmp_path):
    path = tmp_path / "format.yaml"
    path.write_text("checks:\n  - kind: sections\n    required: [Answer:]\n")
    with pytest.raises(UserError, match=r"check 1 \(line 2\), 'sections': key 'required': .* quote a text"):
        checks.load(path)
    path.write_text("checks:\n  - kind: sections\n    required: ['Answer:']\n  - kind: regex\n    pattern: '(['\n")
    with pytest.raises(UserError, match=r"format\.yaml: check 2 \(line 4\), 'regex': key 'pattern'"):
        checks.load(path)
    path.write_text(json.dumps([{"kind": "max_length", "words": 5}]))  # JSON is YAML too
    assert checks.load(path) == [{"kind": "max_length", "words": 5}]
    path.write_text("check: []\n")
    with pytest.raises(UserError, match="only the key 'checks'"):
        checks.load(path)
    with pytest.raises(UserError, match="no such checks file"):
        checks.load(tmp_path / "missing.yaml")


def test_an_uploaded_checks_file_stays_in_the_workspace(tmp_path):
    """The Evaluate page's upload: the client's file name is only a name (no '..' or absolute path reaches
    the disk), the file is checked before it is kept, and a bad one is not kept."""
    from tunelab.workspace import Workspace
    ws = Workspace(tmp_path / "home")
    data = b"- kind: regex\n  pattern: '^Answer: '\n"
    kept = checks.save_upload(ws, "../../outside/../format.yaml", data)
    assert kept.parent.parent == ws.home / "checks" and kept.name == "format.yaml"
    assert checks.load(kept) == [{"kind": "regex", "pattern": "^Answer: "}]
    assert checks.save_upload(ws, "/etc/.hidden.yml", data).name == "checks.yml"  # a dot file is no name
    assert not (tmp_path / "outside").exists()
    with pytest.raises(UserError, match="expected a .yaml, .yml, .json file"):
        checks.save_upload(ws, "checks.txt", data)
    with pytest.raises(UserError, match="key 'kind'"):
        checks.save_upload(ws, "bad.yaml", b"- kind: nope\n")
    assert not list((ws.home / "checks").glob("*/bad.yaml"))


def test_the_sample_references_keep_the_format_the_sample_declares():
    declared = checks.load(samples.path("acme_router_sft.checks.yaml"))
    rows = [json.loads(line) for line in samples.path("acme_router_sft.jsonl").read_text().splitlines()]
    results = [checks.run(r["messages"][-1]["content"], declared) for r in rows]
    assert len(results) == 150 and checks.pass_rates(results)[0] == 100
    assert not all(checks.run("Restart the router, then unplug it.", declared).values())


def _recomputed(outputs):
    lines = [json.loads(x) for x in outputs.read_text().splitlines()]
    return lines, checks.pass_rates([x["checks"] for x in lines])


def test_an_eval_reports_pass_rates_its_outputs_recompute(tiny_model, tmp_path):
    db, ws, name = tiny_model
    make_dataset(db, ws, tmp_path)
    own = tmp_path / "checks.yaml"
    # The random tiny model's answers: any text passes the length check, none is JSON.
    own.write_text("- {kind: max_length, chars: 100000}\n- {kind: json}\n- {kind: refusal}\n")
    config = evaluate.EvalConfig(model=name, dataset="qa", checks=str(own), max_new_tokens=6, baseline="prompting",
                                 k=2)
    metrics = evaluate.run_eval(db, ws, config, outputs=tmp_path / "out.jsonl")
    lines, (every, each) = _recomputed(tmp_path / "out.jsonl")
    assert metrics["checks_source"] == "checks.yaml" and len(lines) == metrics["rows"] == 2
    assert [x["checks"] for x in lines] == [checks.run(x["answer"], checks.load(own)) for x in lines]
    assert metrics["format"] == every == 0 and metrics["checks"] == each
    assert each["max_length"] == 100 and each["json"] == 0

    # Without its own file, an eval of a dataset made from the bundled sample runs the sample's checks.
    from tunelab import datasets
    version = datasets.import_file(db, ws, samples.path("acme_router_sft.jsonl"), "support").version
    version = datasets.split(db, ws, version.ref, val=0.02, seed=0)
    sample = evaluate.run_eval(db, ws, evaluate.EvalConfig(model=name, dataset=version.ref, max_new_tokens=6),
                               outputs=tmp_path / "sample.jsonl")
    lines, (every, each) = _recomputed(tmp_path / "sample.jsonl")
    assert sample["checks_source"] == "acme_router_sft.checks.yaml"
    assert set(each) == {"sections", "numbered_steps", "short", "no_refusal"}
    assert sample["format"] == every and sample["checks"] == each
    plain = evaluate.run_eval(db, ws, evaluate.EvalConfig(model=name, dataset="qa", max_new_tokens=2))
    assert "format" not in plain and "checks" not in plain  # no checks declared, no column


@pytest.mark.process
@pytest.mark.timeout(300)
def test_cli_eval_checks_flag_and_leaderboard_format(tiny_model, tmp_path):
    db, ws, name = tiny_model
    make_dataset(db, ws, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- kind: json\n  schema: {type: 3}\n")
    done = run_cli("eval", name, "--dataset", "qa", "--checks", str(bad), env_home=ws.home)
    assert done.returncode == 2 and "bad.yaml: check 1 (line 1), 'json': key 'schema'" in done.stderr, done.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"checks": [{"kind": "max_length", "words": 1000, "name": "any"}]}))
    # A path relative to where the command runs: the job, in its own process, still finds it.
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "eval", name, "--dataset", "qa", "--checks", good.name,
                           "--limit", "2", "--max-new-tokens", "4", "--wait"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "TUNELAB_HOME": str(ws.home)}, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "format" in done.stdout and "check any" in done.stdout and "100% pass" in done.stdout
    board = json.loads(run_cli("leaderboard", "--json", env_home=ws.home).stdout)
    assert [(r["model"], r["format"]) for r in board["rows"]] == [(name, 100)]
