"""`tunelab data ...` through the real console entry point, as a subprocess."""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, TEST_DATA, run_cli

ACME = REPO / "data" / "samples" / "acme_router_sft.jsonl"


@pytest.mark.process
@pytest.mark.timeout(120)
def test_broken_line_3_exits_2_names_it_and_imports_nothing(tmp_path):
    home = tmp_path / "home"
    lines = ACME.read_text().splitlines()[:5]
    lines[2] = lines[2][:40]  # cut mid-record: line 3 is no longer JSON
    bad = tmp_path / "broken.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    done = run_cli("data", "import", str(bad), "--name", "acme", env_home=home)
    assert done.returncode == 2, done.stderr
    assert "broken.jsonl: 1 bad record of 5" in done.stderr and "line 3: not JSON" in done.stderr
    assert "Traceback" not in done.stderr
    listed = run_cli("data", "list", "--json", env_home=home)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert not any((home / "datasets").iterdir())

    done = run_cli("data", "import", str(bad), "--name", "acme", "--skip-invalid", "--json", env_home=home)
    doc = json.loads(done.stdout)
    assert (doc["imported"], doc["skipped"], doc["skipped_records"][0]["where"]) == (4, 1, "line 3")


@pytest.mark.process
@pytest.mark.timeout(300)
def test_import_show_clean_split_export_with_json(tmp_path):
    home = tmp_path / "home"
    done = run_cli("data", "import", str(TEST_DATA / "alpaca_demo.json"), "--name", "alpaca",
                   "--json", env_home=home)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["ref"], doc["detected_format"], doc["imported"], doc["skipped"]) == ("alpaca@1", "alpaca", 300, 0)
    # Progress went to stderr (one summary line, as stderr is no terminal here), the JSON alone to stdout.
    assert done.stderr.startswith("importing ") and "imported 300 rows as alpaca@1 in " in done.stderr

    done = run_cli("data", "clean", "alpaca", "--dedup", "near", "--threshold", "0.7", "--json", env_home=home)
    steps = json.loads(done.stdout)
    assert [(s["step"], s["ref"], s["before"]) for s in steps] == [("dedup_exact", "alpaca@2", 300),
                                                                   ("dedup_near", "alpaca@3", steps[0]["after"])]
    assert steps[1]["after"] <= steps[1]["before"]

    done = run_cli("data", "split", "alpaca", "--val", "0.1", "--test", "0.1", "--seed", "3", "--json", env_home=home)
    split = json.loads(done.stdout)
    n = steps[1]["after"]
    assert split["ref"] == "alpaca@4" and sum(split["splits"].values()) == n
    assert split["splits"]["validation"] == round(0.1 * n)

    done = run_cli("data", "show", "alpaca", "--json", env_home=home)
    show = json.loads(done.stdout)
    assert [s["transform"] for s in show["lineage"]] == ["import", "dedup_exact", "dedup_near", "split"]
    assert show["lineage"][0]["source"] == "alpaca_demo.json" and show["turns"]["roles"]["assistant"] > 0

    out = tmp_path / "export"
    done = run_cli("data", "export", "alpaca@4", "--format", "jsonl", "--out", str(out), env_home=home)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    assert len((out / "validation.jsonl").read_text().splitlines()) == split["splits"]["validation"]

    done = run_cli("data", "show", "alpaca@7", env_home=home)
    assert done.returncode == 2 and "alpaca@7" in done.stderr
