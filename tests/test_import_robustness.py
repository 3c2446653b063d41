"""`tunelab data import` on broken and hostile files (issue 13, item 7): each one exits 2 with a message
naming the file and the line or record, or imports correctly; a failed import writes nothing (no DB row,
no `datasets/<name>` folder, an existing dataset untouched); and a 50 MB JSONL import keeps its peak
memory within 4x the file size. All through the real CLI, on files written here."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tunelab.datasets import formats
from tunelab.errors import UserError
from tests.conftest import REPO, run_cli

GOOD = {"instruction": "Reset the router?", "output": "Hold the button for ten seconds."}
PAIR = {"prompt": "Which band?", "chosen": "5 GHz, it is faster.", "rejected": "No idea."}
CHAT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
KTO = {"prompt": "Which band?", "completion": "5 GHz.", "label": True}
DEEP = "[" * 100_000 + "]" * 100_000


def line(record) -> bytes:
    return json.dumps(record).encode() + b"\n"


def parquet(path, rows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path.read_bytes()


def good_parquet(tmp_path) -> bytes:
    return parquet(tmp_path / "good.parquet", [GOOD] * 500)


# (file name, its bytes or a function of tmp_path giving them, what the error must say besides the file name)
BAD_FILES = [
    # Python's parser fails on these with a bare exception.
    ("deep.jsonl", line(GOOD) + b'{"instruction": ' + DEEP.encode() + b"}\n", ["line 2", "nested too deeply"]),
    ("deep.json", b"[" + line(GOOD) + b', {"instruction": ' + DEEP.encode() + b"}]",
     ["record 2 (line 2", "nested too deeply"]),
    ("longint.jsonl", line(GOOD) + b'{"instruction": "a", "output": "b", "n": ' + b"9" * 5000 + b"}\n",
     ["line 2", "longer than 4300 digits"]),
    ("longint.json", b"[" + line(GOOD) + b', {"n": ' + b"9" * 5000 + b"}]", ["record 2", "4300 digits"]),
    # ... or lets these through: a lone surrogate cannot be written as UTF-8, NaN and Infinity are not JSON.
    ("surrogate.jsonl", line(GOOD) + b'{"instruction": "a\\ud800", "output": "b"}\n',
     ["line 2", "field 'instruction' holds a lone surrogate \\ud800"]),
    ("surrogate_key.json", b"[" + line(GOOD) + b', {"instruction": "a", "output": "b", "\\udfff": 1}]',
     ["record 2", "lone surrogate"]),
    ("nan.jsonl", line(PAIR) + line(PAIR)[:-2] + b', "margin": NaN}\n', ["line 2", "field 'margin' is NaN"]),
    ("inf.json", b"[" + line(PAIR) + b"," + line(PAIR)[:-2] + b', "margin": -Infinity}]',
     ["record 2", "field 'margin' is -Infinity"]),
    ("overflow.jsonl", line(PAIR) + line(PAIR)[:-2] + b', "margin": 1e999}\n', ["line 2", "'margin' is Infinity"]),
    ("overflow.json", b"[" + line(PAIR)[:-2] + b', "margin": ' + b"9" * 400 + b'.5}]', ["record 1", "is Infinity"]),
    ("nan_elsewhere.jsonl", line(GOOD) + line(GOOD)[:-2] + b', "meta": {"score": [1, NaN]}}\n',
     ["line 2", "field 'meta.score[1]' is NaN"]),
    ("nan.csv", b"prompt,chosen,rejected,margin\nq,a,b,0.5\nq,a,b,nan\n", ["line 3", "field 'margin' is nan"]),
    ("nan.parquet", lambda tmp: parquet(tmp / "n.parquet", [{**PAIR, "margin": 1.0}, {**PAIR, "margin": math.nan}]),
     ["record 2", "field 'margin' is NaN"]),
    ("label.jsonl", line(KTO) + line(KTO)[:-2] + b', "label": NaN}\n', ["line 2", "field 'label' is NaN"]),
    ("label.parquet", lambda tmp: parquet(tmp / "l.parquet", [{**KTO, "label": 1.0}, {**KTO, "label": math.nan}]),
     ["1 bad record of 2", "record 2: wrong type: 'label' must be true or false, not nan"]),
    # Field values of a type the validator did not expect (they raised TypeError: unhashable).
    ("unhashable.jsonl", line(CHAT) + line({"conversations": [{"from": ["human"], "value": "hi"}]}),
     ["line 2", "unknown role ['human'] in conversations[0]"]),
    ("part_type.jsonl", line(CHAT) + line({"messages": [{"role": "user", "content": [{"type": {}}]}]}),
     ["line 2", "messages[0].content must be a string, not a list"]),
    # Broken files.
    ("truncated.json", b"[" + line(GOOD) + b"," + line(GOOD)[:25], ["line 2", "not JSON: Unterminated string"]),
    ("truncated.jsonl", line(GOOD) * 2 + line(GOOD)[:25], ["line 3: not JSON"]),
    ("missing_comma.json", b"[" + line(GOOD) + line(GOOD) + b"]", ["line 2, column 1", "expected ',' or ']'"]),
    ("extra.json", b"[" + line(GOOD) + b"] []", ["line 2, column 3", "extra data"]),
    ("bytes.jsonl", line(GOOD) + b'{"instruction": "caf\xe9", "output": "b"}\n', ["line 2: encoding error: byte 0xe9"]),
    ("bytes.json", b"[" + line(GOOD) + b', {"instruction": "caf\xe9"}]',
     ["line 2: encoding error: byte 0xe9 at column 23"]),
    ("utf16.json", json.dumps([GOOD]).encode("utf-16"), ["line 1", "byte 0xff at column 1", "UTF-16"]),
    ("utf16.csv", "instruction,output\na,b\n".encode("utf-16"), ["line 1", "UTF-16"]),
    ("nul.csv", b'instruction,output\na,b\n"a\x00",b\n', ["line 3", "NUL byte"]),
    ("number.json", b"42", ["top level must be a list of records, not number"]),
    ("string.json", b'"hello"', ["not string"]),
    ("null.json", b"null", ["not null"]),
    ("empty.jsonl", b"", ["the file is empty"]),
    ("blank.json", b" \n\t\n", ["the file is empty"]),
    ("header_only.csv", b"instruction,output\r\n", ["the file is empty"]),
    ("empty.parquet", b"", ["not a readable Parquet file"]),
    ("not_object.jsonl", line(GOOD) + b"42\n" + line(GOOD),
     ["line 2: wrong type: a record must be an object, not number"]),
    ("not_object.json", b'[{"instruction": "a", "output": "b"}, "text"]', ["record 2: wrong type", "not string"]),
    ("not_parquet.parquet", b"PAR1 this is not parquet", ["not a readable Parquet file"]),
    ("cut.parquet", lambda tmp: good_parquet(tmp)[:-300], ["not a readable Parquet file"]),
    ("csv_in_parquet.parquet", b"instruction,output\na,b\n", ["not a readable Parquet file"]),
    ("unreadable_only.jsonl", b"x\n", ["1 bad record of 1", "line 1: not JSON"]),
]


@pytest.fixture
def home(tmp_path):
    """A workspace that already holds one dataset, `keep`, so that a failed import can be seen not to
    touch it; yields (home, `data list --json` before)."""
    home = tmp_path / "home"
    keep = tmp_path / "keep.jsonl"
    keep.write_bytes(line(GOOD) * 3)
    assert run_cli("data", "import", str(keep), "--name", "keep", env_home=home).returncode == 0
    listed = run_cli("data", "list", "--json", env_home=home)
    yield home, json.loads(listed.stdout)


def assert_nothing_written(home, before) -> None:
    listed = run_cli("data", "list", "--json", env_home=home)
    assert listed.returncode == 0 and json.loads(listed.stdout) == before
    assert sorted(p.name for p in (home / "datasets").iterdir()) == ["keep"]
    assert [p.name for p in (home / "datasets" / "keep").iterdir()] == ["v1"]


def import_fails(home, path, dataset: str, says: list[str]) -> None:
    done = run_cli("data", "import", str(path), "--name", dataset, env_home=home)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error = done.stderr[done.stderr.index("error: "):]
    assert error.startswith(f"error: {path.name}: "), error
    for text in says:
        assert text in error, error


@pytest.mark.process
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, content, says", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_exits_2_naming_file_and_record_and_writes_nothing(home, tmp_path, name, content, says):
    home, before = home
    path = tmp_path / name
    path.write_bytes(content(tmp_path) if callable(content) else content)
    import_fails(home, path, "bad", says)
    assert_nothing_written(home, before)


@pytest.mark.process
@pytest.mark.timeout(120)
def test_a_failed_new_version_leaves_the_dataset_as_it_was(home, tmp_path):
    home, before = home
    for name, content, says in BAD_FILES:
        if name in ("surrogate.jsonl", "nan.jsonl", "deep.json", "nul.csv"):
            (tmp_path / name).write_bytes(content)
            import_fails(home, tmp_path / name, "keep", says)
    assert_nothing_written(home, before)


@pytest.mark.process
@pytest.mark.timeout(120)
def test_a_million_bad_lines_are_counted_not_all_kept(home, tmp_path):
    """A hostile file of tiny bad lines: the report lists 50 and counts the rest."""
    home, before = home
    path = tmp_path / "junk.jsonl"
    path.write_bytes(line(GOOD) + b"x\n" * 1_000_000)
    done = run_cli("data", "import", str(path), "--name", "bad", env_home=home)
    assert done.returncode == 2, done.stderr
    assert "junk.jsonl: 1000000 bad records of 1000001" in done.stderr and "... and 999950 more" in done.stderr
    assert_nothing_written(home, before)
    done = run_cli("data", "import", str(path), "--name", "bad", "--skip-invalid", "--json", env_home=home)
    doc = json.loads(done.stdout)
    assert (doc["imported"], doc["skipped"], len(doc["skipped_records"])) == (1, 1_000_000, 10_000)
    assert doc["skipped_records"][0] == {"where": "line 2", "reason": "not JSON: Expecting value (column 1)"}


def imported_rows(home, path, name: str, *extra: str) -> list[dict]:
    done = run_cli("data", "import", str(path), "--name", name, "--json", *extra, env_home=home)
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    return [json.loads(x) for x in (home / "datasets" / name / f"v{version['version']}" / "train.jsonl")
            .read_text(encoding="utf-8").splitlines()]


@pytest.mark.process
@pytest.mark.timeout(120)
def test_files_that_import_correctly(tmp_path):
    """What the old reader choked on or a demanding user sends: big CSV cells, BOMs, CRLF, a huge line,
    a margin written as CSV text, emoji written as surrogate pairs."""
    home = tmp_path / "home"
    big_cell = "word " * 60_000  # 300 kB, over csv's default field limit of 128 KiB
    path = tmp_path / "big_cell.csv"
    path.write_text(f'instruction,output\r\nSummarize,"{big_cell}"\r\nSay hi,hi\r\n', encoding="utf-8")
    rows = imported_rows(home, path, "bigcell")
    assert [r["messages"][1]["content"] for r in rows] == [big_cell, "hi"]

    for suffix, data in [(".jsonl", line(GOOD) * 2), (".json", json.dumps([GOOD, GOOD]).encode()),
                         (".csv", b"instruction,output\na,b\n")]:
        (tmp_path / f"bom{suffix}").write_bytes(b"\xef\xbb\xbf" + data)
        assert len(imported_rows(home, tmp_path / f"bom{suffix}", f"bom{suffix[1:]}")) == (1 if suffix == ".csv" else 2)

    huge = {"instruction": "Repeat", "output": "x" * 5_000_000}  # one 5 MB line
    (tmp_path / "huge.jsonl").write_bytes(line(huge))
    assert imported_rows(home, tmp_path / "huge.jsonl", "huge")[0]["messages"][1]["content"] == huge["output"]

    (tmp_path / "margin.csv").write_text("prompt,chosen,rejected,margin\nq,a,b,0.5\nq,a,b,\n")
    assert [r.get("margin") for r in imported_rows(home, tmp_path / "margin.csv", "margin")] == [0.5, None]

    (tmp_path / "emoji.jsonl").write_bytes(b'{"instruction": "\\ud83d\\ude00", "output": "ok"}\n')
    assert imported_rows(home, tmp_path / "emoji.jsonl", "emoji")[0]["messages"][0]["content"] == "\U0001F600"


def test_read_records_is_one_streaming_reader_that_names_the_bad_line(tmp_path):
    """The reader other modules share: an iterator of records, strict by default."""
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(line({"prompt": "a"}) + b'{"prompt": NaN}\n' + line({"prompt": "c"}))
    records = formats.read_records(path)
    assert next(records) == formats.Record("line 1", {"prompt": "a"})
    with pytest.raises(UserError, match=r"^prompts.jsonl: line 2: field 'prompt' is NaN"):
        next(records)
    skipped = []
    assert [r.where for r in formats.read_records(path, "upload.jsonl", skipped.append)] == ["line 1", "line 3"]
    assert [str(p) for p in skipped] == ["line 2: field 'prompt' is NaN: JSON numbers cannot be NaN or Infinity; "
                                         "write null or a number"]


MEASURE = ("import resource, subprocess, sys; "
           "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
           "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_mb(path, home, name: str) -> float:
    """Peak RSS of one `tunelab data import` process, read by a fresh parent whose only child it is."""
    env = dict(os.environ, TUNELAB_HOME=str(home))
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "tunelab.cli", "data", "import",
                          str(path), "--name", name], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=240, check=True).stdout
    rc, kilobytes = out.split()
    assert rc == "0", f"import of {path.name} exited {rc}"
    return int(kilobytes) / 1024


@pytest.mark.process
@pytest.mark.timeout(300)
def test_50_mb_jsonl_import_peaks_within_4x_the_file(tmp_path):
    """Measured: the peak RSS of the real `tunelab data import` process on a 50 MB JSONL file, minus the
    peak RSS of the same command on a one-record file (the interpreter and the modules it loads). That
    growth is the import's own memory; the issue allows 4x the file size (before streaming: about 7x)."""
    import random
    rng = random.Random(0)
    words = "router reset light blink cable modem firmware guest network password channel mesh".split()
    path, records = tmp_path / "big.jsonl", 0
    with open(path, "w") as fh:
        while fh.tell() < 50 * 2**20:
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": " ".join(rng.choices(words, k=20)) + f" ({records})?"},
                {"role": "assistant", "content": " ".join(rng.choices(words, k=70)) + "."}]}) + "\n")
            records += 1
    (tmp_path / "one.jsonl").write_text(path.open().readline())
    size_mb = path.stat().st_size / 2**20

    baseline = peak_rss_mb(tmp_path / "one.jsonl", tmp_path / "home", "one")
    peak = peak_rss_mb(path, tmp_path / "home", "big")
    assert peak - baseline <= 4 * size_mb, (baseline, peak, size_mb)
    shown = json.loads(run_cli("data", "show", "big", "--json", env_home=tmp_path / "home").stdout)
    assert shown["rows"] == records
