"""The Datasets page in Chromium: upload a file, see the detected format, the stats and the preview."""
import pytest
from playwright.sync_api import expect

from tests.conftest import TEST_DATA, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]


def upload(page, path, name: str) -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    page.get_by_text(path.name).first.wait_for()
    page.get_by_label("Dataset name", exact=True).fill(name)
    page.get_by_role("button", name="Import").click()


@pytest.mark.timeout(180)
def test_engineer_uploads_a_file_and_sees_format_stats_and_preview(app, page, tmp_path):
    page.goto(f"{app.url}/datasets")
    page.get_by_role("heading", name="Datasets").wait_for()
    wait_for_app(page)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{"prompt": \n')
    upload(page, broken, "broken")
    page.get_by_text("line 3: not JSON").wait_for()
    expect(page.get_by_text("nothing imported")).to_be_visible()

    upload(page, TEST_DATA / "alpaca_demo.json", "alpaca")
    page.get_by_text("Detected format:").wait_for()
    wait_for_app(page)
    expect(page.get_by_text("Imported 300 of 300 records as alpaca@1")).to_be_visible()
    metric = page.get_by_test_id("stMetric").filter(has_text="Rows")
    expect(metric).to_contain_text("300", timeout=20_000)
    expect(page.get_by_test_id("stMetric").filter(has_text="Format")).to_contain_text("alpaca")
    preview = page.get_by_test_id("stTable")
    expect(preview).to_contain_text("Describe how to feed a sourdough starter.")
    expect(preview).to_contain_text("Feeding a sourdough starter takes two minutes a day!")
    # The browser shows a row as a chat.
    page.get_by_label("Search rows", exact=True).fill("sourdough")
    page.get_by_label("Search rows", exact=True).press("Enter")
    page.get_by_text("1 matching rows").wait_for()
    expect(page.get_by_test_id("stChatMessage").first).to_contain_text("sourdough")
    assert app.db().execute("SELECT rows FROM dataset_versions WHERE name = 'alpaca'").fetchone()[0] == 300
