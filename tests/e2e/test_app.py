"""The real app in Chromium: home page, sign-in, and role checks."""
import pytest
from playwright.sync_api import expect

from tunelab import auth
from tests.conftest import sign_in, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]


def nav_labels(page) -> list[str]:
    page.wait_for_selector('[data-testid="stSidebarNav"]')
    return [a.inner_text().split("\n")[-1].strip()
            for a in page.locator('[data-testid="stSidebarNav"] a').all()]


@pytest.mark.timeout(120)
def test_home_renders_pipeline_in_local_mode(app, page):
    page.goto(app.url)
    page.get_by_text("Getting started").wait_for()
    expect(page.get_by_text("No users yet")).to_be_visible()
    for label in ("Datasets", "Runs", "Feedback campaigns", "Votes"):
        expect(page.get_by_test_id("stMetricLabel").filter(has_text=label)).to_have_count(1)


@pytest.mark.timeout(120)
def test_annotator_sees_only_labeling(app, page):
    conn = app.db()
    auth.add_user(conn, "root", "admin", "admin password")
    auth.add_user(conn, "ann", "annotator", "annotator pw")
    sign_in(page, app, "ann", "annotator pw")
    page.get_by_role("heading", name="Labeling").wait_for()
    wait_for_app(page)
    # One page left: Streamlit then draws no menu at all, so no link leads anywhere else.
    assert page.locator('[data-testid="stSidebarNav"] a').all_inner_texts() in ([], ["Labeling"])
    for other in ("/home", "/runs", "/admin"):
        page.goto(app.url + other)
        page.get_by_text("Not allowed").wait_for()


@pytest.mark.timeout(120)
def test_wrong_password_refused(app, page):
    auth.add_user(app.db(), "root", "admin", "admin password")
    sign_in(page, app, "root", "not the password", expect_success=False)
    page.get_by_text("Wrong user name or password").wait_for()
    assert page.get_by_text("Signed in as").count() == 0


@pytest.mark.timeout(120)
def test_viewer_opening_admin_url_is_refused(app, page):
    conn = app.db()
    auth.add_user(conn, "root", "admin", "admin password")
    auth.add_user(conn, "vic", "viewer", "viewer password")
    sign_in(page, app, "vic", "viewer password")  # the sign-in is kept in a cookie, so a typed URL opens as vic
    assert "Admin" not in nav_labels(page)
    page.goto(f"{app.url}/admin")
    page.get_by_text("Not allowed").wait_for()
    assert page.get_by_text("Users").count() == 0
    assert page.get_by_role("button", name="Add").count() == 0


@pytest.mark.timeout(120)
def test_a_page_link_opened_first_on_a_new_server_signs_in_then_opens_that_page(app, page):
    auth.add_user(app.db(), "root", "admin", "admin password")
    page.goto(f"{app.url}/runs")  # the server's first visitor, straight to a page's URL
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.get_by_text("streamlit app").count() == 0  # not Streamlit's raw pages/ listing
    page.get_by_label("User name").fill("root")
    page.get_by_label("Password", exact=True).fill("admin password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Runs").wait_for()  # the page asked for, not the admin's home
    assert page.url.endswith("/runs")
