"""The judge-versus-people panel in Chromium: the Feedback page shows the "Judges against people" table
for a campaign with a judge, and its Triage button leaves the judge's confident verdicts standing; the
Leaderboard then rates on both sources and says what its intervals rest on."""
import pytest

from tunelab import auth, db as dbmod
from tunelab.feedback.judgments import insert_judge, write_judgment
from tunelab.feedback.votes import write_vote
from tunelab.workspace import Workspace
from tests.conftest import ready_campaign, sign_in, wait_for_app

pytestmark = [pytest.mark.e2e, pytest.mark.process]

PROMPTS = ["Capital of France?", "Two plus two?", "Sky colour?", "Bees make?"]
# Two people agree on pairs 1-3 (a, b, a); nobody voted on pair 4. The judge: a (unsure: small margin),
# a (flips with the order), a (sure), b (sure): triage leaves it pairs 3 and 4.
PEOPLE = ["a", "b", "a"]
VERDICTS = [("a", 0.3, "a", "a"), ("a", 0.6, "a", "b"), ("a", 0.8, "a", "a"), ("b", -0.9, "b", "b")]


@pytest.mark.timeout(240)
def test_feedback_page_shows_the_panel_and_triages(app, page, tiny_model_dir):
    conn = app.db()
    auth.add_user(conn, "root", "admin", "admin password")
    c = ready_campaign(conn, Workspace(app.home), tiny_model_dir, "c1", PROMPTS,
                       (["Paris.", "Four.", "Blue.", "Honey."], ["Lyon.", "4", "Red.", "Wax."]))
    pids = [r[0] for r in conn.execute("SELECT p.id FROM pairs p JOIN campaign_prompts cp ON cp.id = p.prompt_id "
                                       "WHERE p.campaign_id = ? ORDER BY cp.idx", [c.id])]
    with dbmod.transaction(conn):
        for pid, label in zip(pids, PEOPLE):
            for uid in (1, 2):
                write_vote(conn, pid, c.id, uid, f"u{uid}", label, None, True, "tiny", 0.0, float(uid))
    judge = insert_judge(conn, c.id, "gpt-judge", "endpoint", {"model": "m"})
    for pid, (choice, margin, first_a, first_b) in zip(pids, VERDICTS):
        write_judgment(conn, judge, pid, choice, margin, first_a, first_b)

    sign_in(page, app, "root", "admin password")
    page.goto(f"{app.url}/feedback")
    page.get_by_role("heading", name="Feedback").wait_for()
    wait_for_app(page)
    page.get_by_text("Judges against people").wait_for()
    # The grid draws on a canvas; its cells are also in the canvas's fallback table, as raw values.
    grid = page.locator('[data-testid="stDataFrame"]').filter(has=page.locator("th", has_text="position consistency"))
    grid.locator("td", has_text="gpt-judge").wait_for(state="attached")
    assert grid.locator("th").all_text_contents() == [
        "judge", "kind", "judged", "compared", "agreement", "Cohen's κ", "position consistency",
        "judge prefers longer", "people prefer longer", "pairs by length"]
    # Agreement 2/3 and κ 0 (the people's b on pair 2 is the only label the judge never gives); consistency 3/4;
    # the longer answer is A on pairs 1-3: the judge always takes it, people 4 of 6 times.
    assert grid.locator("td").all_text_contents() == ["gpt-judge", "endpoint", "4", "3", "0.6667", "0", "0.75", "1",
                                                      "0.6667", "3"]

    page.get_by_role("button", name="Triage", exact=True).click()
    page.get_by_text("2 pairs to people, 2 left to judge gpt-judge.").wait_for()
    assert conn.execute("SELECT id FROM pairs WHERE triaged_by = 'gpt-judge' ORDER BY id").fetchall() == sorted(
        [(pids[2],), (pids[3],)])

    page.goto(f"{app.url}/leaderboard")
    page.get_by_role("heading", name="Leaderboard").wait_for()
    wait_for_app(page)
    page.get_by_text("intervals rest on 6 people's votes").wait_for()
    page.get_by_test_id("stSelectbox").filter(has_text="Votes from").click()
    page.get_by_role("option", name="both", exact=True).click()
    page.get_by_text("intervals rest on 6 people's votes and 1 judge verdict (judge gpt-judge)").wait_for()
