"""Labeling integrity without a browser (issue 13): a vote counts only for the pair on the annotator's
screen, untrusted markdown loads no images, and CSV exports neutralise formula cells."""
import csv
import io
import json

import markdown_it
import pytest

from tunelab import feedback, leaderboard, untrusted
from tunelab.errors import UserError
from tests.conftest import ready_campaign


def test_vote_counts_only_for_the_pair_on_screen(workspace, tiny_model_dir):
    conn, ws = workspace
    c = ready_campaign(conn, ws, tiny_model_dir, "c", ["one?", "two?", "three?", "four?"],
                       ([f"A{i}" for i in range(4)], [f"B{i}" for i in range(4)]))
    first = feedback.next_pair(conn, c.id, 1, "ann")
    second = feedback.vote_and_next(conn, first.id, "left", annotator_id=1)
    # A second press sent before the page drew `second` still names `first`: it changes nothing, and
    # `second` stays open and unvoted.
    assert feedback.vote_and_next(conn, first.id, "right", annotator_id=1).id == second.id
    assert conn.execute("SELECT pair_id, choice FROM votes").fetchall() == [
        (first.pair_id, "a" if first.left.startswith("A") else "b")]
    assert feedback.next_pair(conn, c.id, 1, "ann").id == second.id
    # Someone else's open pair is not this annotator's to vote on; nor is a pair they skipped.
    other = feedback.next_pair(conn, c.id, 2, "bob")
    with pytest.raises(UserError, match="not the pair on your screen"):
        feedback.vote_and_next(conn, other.id, "tie", annotator_id=1)
    feedback.skip(conn, second.id)
    with pytest.raises(UserError, match=r"not the pair on your screen \(skipped\)"):
        feedback.vote_and_next(conn, second.id, "tie", annotator_id=1)
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 1
    # After an undo, the pair is on screen again and takes a vote.
    back = feedback.undo_last(conn, c.id, 1)
    assert back.id == first.id
    feedback.vote_and_next(conn, back.id, "tie", annotator_id=1)
    assert conn.execute("SELECT count(*), min(choice) FROM votes").fetchone() == (1, "tie")


def _images(md: str) -> list[str]:
    """The image sources a CommonMark + GFM renderer would load, in the order it meets them."""
    parser = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
    found = []
    def walk(tokens):
        for t in tokens:
            if t.type == "image":
                found.append(t.attrGet("src"))
            walk(t.children or [])
    walk(parser.parse(md))
    return found


ATTACKS = [
    "![x](http://evil/a.png)",
    "Look: ![x][pix]\n\n[pix]: http://evil/b.png",
    "![pix]\n\n[pix]: http://evil/c.png",
    "![pix][]\n\n[pix]: http://evil/d.png",
    "\\\\![x](http://evil/e.png)",                   # an escaped backslash, then a real image
    "[![badge](http://evil/f.png)](http://site)",    # an image inside a link
    "- item ![x](<http://evil/g.png> \"t\")",
    "> quote\n> ![x](http://evil/h.png)",
]


@pytest.mark.parametrize("text", ATTACKS)
def test_markdown_loads_no_images(text):
    assert _images(text), "the attack must be an image before neutralising"
    assert _images(untrusted.markdown(text)) == []


def test_markdown_keeps_ordinary_markdown():
    text = "**bold** and `vec![1, 2]`\n\n- one\n- two\n\n```rust\nlet v = vec![3];\n```\n\n[a link](http://site)"
    html = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(untrusted.markdown(text))
    assert "<strong>bold</strong>" in html and "<li>one</li>" in html and '<a href="http://site">a link</a>' in html
    # In code the neutralised `![` still reads as `![` (a word joiner sits between the two characters).
    assert "vec!\u2060[1, 2]" in html and "vec!\u2060[3]" in html
    assert untrusted.markdown("no images here") == "no images here"


def test_csv_cells():
    for bad in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert untrusted.csv_cell(bad) == "'" + bad
    assert [untrusted.csv_cell(v) for v in ("ok", "a=b", -1.5, 3, None)] == ["ok", "a=b", -1.5, 3, None]


def test_leaderboard_csv_neutralises_formula_names(workspace, tmp_path):
    conn, _ = workspace
    names = ['=HYPERLINK("http://evil","x")', "@SUM(1)", "-cmd", "plain"]
    q = [{"role": "user", "content": "q"}]
    with open(tmp_path / "battles.jsonl", "w") as fh:
        for i in range(12):
            a, b = names[i % 4], names[(i + 1) % 4]
            fh.write(json.dumps({"model_a": a, "model_b": b, "winner": "model_a",
                                 "conversation_a": q + [{"role": "assistant", "content": f"{a} {i}"}],
                                 "conversation_b": q + [{"role": "assistant", "content": f"{b} {i}"}]}) + "\n")
    feedback.import_judgments(conn, tmp_path / "battles.jsonl", "arena", "arena")
    rows = leaderboard.build(conn, campaign="arena", anchor="plain")["rows"]
    table = list(csv.DictReader(io.StringIO(leaderboard.to_csv(rows))))
    assert sorted(r["model"] for r in table) == sorted(["'" + n for n in names[:3]] + ["plain"])
    for r in table:  # numbers stay numbers
        assert float(r["rating"]) > 0 and int(r["votes"]) == 6
