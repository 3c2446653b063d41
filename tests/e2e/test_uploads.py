"""An upload's file name is the client's to choose: in Chromium, a name that is an absolute path or
climbs out of the temp folder must not decide where the server writes."""
import hashlib
import json

import pytest

from tests.conftest import upload, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]

BATTLE = {"model_a": "m1", "model_b": "m2", "winner": "model_a", "judge": "j",
          "prompt": "Say hi.", "response_a": "Hi!", "response_b": "Hello."}


@pytest.mark.timeout(180)
def test_upload_named_with_a_path_writes_nowhere_but_a_temp_file(app, page, tmp_path):
    from tunelab import datasets
    from tunelab.workspace import Workspace
    conn, ws = app.db(), Workspace(app.home)
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    version = datasets.import_file(conn, ws, source, "victim").version
    victim = version.dir / "train.jsonl"
    before = hashlib.sha256(victim.read_bytes()).hexdigest()
    outside = tmp_path / "outside.jsonl"

    page.goto(f"{app.url}/feedback")
    page.get_by_role("heading", name="Feedback").wait_for()
    wait_for_app(page)
    page.get_by_text("Import external judgments").click()
    payload = (json.dumps(BATTLE) + "\n").encode()
    uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]').last
    for hostile, result in ((str(victim), "1 votes added, 0 updated"),
                            (f"../../../../../..{outside}", "0 votes added, 1 updated")):
        upload(page, uploader, {"name": hostile, "mimeType": "application/json", "buffer": payload})
        page.get_by_label("Campaign name").fill("imported")
        page.get_by_role("button", name="Import").click()
        page.get_by_text(result).wait_for()
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == before
    assert not outside.exists()
    assert datasets.resolve(conn, ws, "victim@1").load() == [json.loads(victim.read_text())]
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 1
