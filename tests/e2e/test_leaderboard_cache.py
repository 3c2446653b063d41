"""The Leaderboard page keeps its board between views while nothing is committed (a build takes seconds at
Arena scale), and builds it again once a vote lands, a changed vote as well as a new one."""
import json

import pytest

from tunelab import feedback
from tests.conftest import arena_file, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]


def board_json(page) -> dict:
    with page.expect_download() as info:
        page.get_by_role("button", name="Download JSON").click()
    return json.loads(open(info.value.path()).read())


def reload_board(page, votes: int) -> dict:
    page.reload()
    page.get_by_text(f"{votes} votes").wait_for()
    wait_for_app(page)
    return board_json(page)


@pytest.mark.timeout(240)
def test_board_kept_until_a_vote_lands(app, page, tmp_path):
    conn = app.db()
    battles = tmp_path / "battles.jsonl"
    arena_file(battles, {"big-model": 1250.0, "mid-model": 1000.0, "small-model": 800.0}, n=240)
    feedback.import_judgments(conn, battles, "arena", "team-votes")
    page.goto(app.url)  # no users: the local admin
    page.get_by_text("Getting started").wait_for()
    page.goto(f"{app.url}/leaderboard")
    page.get_by_text("240 votes").wait_for()
    wait_for_app(page)
    first = board_json(page)

    assert reload_board(page, 240)["built_at"] == first["built_at"]  # nothing committed: the same board

    # The first battle's judge changes their mind: the same pair and judge, so the vote is updated, not
    # added; the count stays and only the ratings say that the board was built again.
    record = json.loads(battles.read_text().splitlines()[0])
    record["winner"] = "model_b" if record["winner"] == "model_a" else "model_a"
    (tmp_path / "changed.jsonl").write_text(json.dumps(record) + "\n")
    feedback.import_judgments(conn, tmp_path / "changed.jsonl", "arena", "team-votes", source_name=battles.name)
    changed = reload_board(page, 240)
    assert changed["built_at"] > first["built_at"]
    assert {r["model"]: r["rating"] for r in changed["rows"]} != {r["model"]: r["rating"] for r in first["rows"]}

    record["judge"] = "a new judge"  # a vote of its own on that pair
    (tmp_path / "new.jsonl").write_text(json.dumps(record) + "\n")
    feedback.import_judgments(conn, tmp_path / "new.jsonl", "arena", "team-votes", source_name=battles.name)
    assert reload_board(page, 241)["votes"] == 241
    conn.close()
