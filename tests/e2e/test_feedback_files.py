"""Files uploaded on the Feedback page go through the importer's reader: a bad line in a gold file is
an error naming the file and line, not a traceback, and a good file in any import format is added."""
import json

import pytest

from tunelab import auth
from tunelab.workspace import Workspace
from tests.conftest import ready_campaign, sign_in, upload, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]

GOLD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


@pytest.mark.timeout(180)
def test_gold_upload_with_a_bad_line_shows_the_error_naming_it(app, page, tiny_model_dir):
    conn = app.db()
    auth.add_user(conn, "root", "admin", "admin password")
    ready_campaign(conn, Workspace(app.home), tiny_model_dir, "c1", ["Q1?", "Q2?"], (["a1", "a2"], ["b1", "b2"]))

    sign_in(page, app, "root", "admin password")
    page.goto(f"{app.url}/feedback")
    page.get_by_role("heading", name="Feedback").wait_for()
    wait_for_app(page)
    page.get_by_text("Add gold pairs").first.click()
    uploader = page.locator(".st-key-gold_file input[type=file]")
    upload(page, uploader, {"name": "my-gold.jsonl", "mimeType": "application/json",
                            "buffer": (json.dumps(GOLD) + "\n{broken\n").encode()})
    page.get_by_role("button", name="Add gold pairs").click()
    page.get_by_text("my-gold.jsonl: line 2: not JSON").wait_for()
    assert page.get_by_text("Traceback").count() == 0
    assert conn.execute("SELECT count(*) FROM pairs WHERE gold IS NOT NULL").fetchone()[0] == 0

    upload(page, uploader, {"name": "my-gold.csv", "mimeType": "text/csv",
                            "buffer": b"prompt,chosen,rejected\n2+2?,4,5\n3+3?,6,7\n"},
           clears="line 2: not JSON")
    page.get_by_role("button", name="Add gold pairs").click()
    page.get_by_text("Added 2 gold pairs.").wait_for()
    assert conn.execute("SELECT count(*) FROM pairs WHERE gold IS NOT NULL").fetchone()[0] == 2
