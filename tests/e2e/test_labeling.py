"""An annotator labels in the real app with the keyboard only: votes land, progress moves, undo works."""
import pytest

from tunelab import auth, feedback, models
from tunelab.workspace import Workspace
from tests.conftest import sign_in, wait_for_app, wait_for_pair

pytestmark = [pytest.mark.e2e, pytest.mark.process]


@pytest.mark.timeout(180)
def test_annotator_votes_with_keyboard_and_undoes(app, page, tiny_model_dir):
    conn = app.db()
    auth.add_user(conn, "root", "admin", "admin password")
    ann = auth.add_user(conn, "ann", "annotator", "annotator pw")
    models.add_local(conn, tiny_model_dir, "tiny")
    models.add_local(conn, tiny_model_dir, "tiny-b")
    c = feedback.create_campaign(conn, Workspace(app.home), "e2e", ["tiny", "tiny-b"],
                                 prompts=[f"Question number {i}?" for i in range(6)],
                                 config=feedback.CampaignConfig(overlap=1, guidelines="Pick the **correct** one."))
    ids = [pid for pid, _ in feedback.prompts(conn, c)]
    feedback.store_responses(conn, c, "tiny", 0, ids, [f"Alpha answer {i}" for i in range(6)])
    feedback.store_responses(conn, c, "tiny-b", 0, ids, [f"Beta answer {i}" for i in range(6)])
    feedback.build_pairs(conn, c)

    sign_in(page, app, "ann", "annotator pw")
    page.get_by_text("0 of 6").wait_for()
    wait_for_app(page)
    page.get_by_text("Guidelines").wait_for()
    assert page.get_by_text("tiny-b").count() == 0  # model identities are hidden

    keys = ["a", "b", "t", "x", "Shift+B"]
    for n, key in enumerate(keys, 1):
        page.keyboard.press(key)
        page.get_by_text(f"{n} of 6").wait_for()
        wait_for_pair(page, conn, ann.id)  # the next pair's own buttons, before its key press
    votes = conn.execute("SELECT choice, strength, left_model, annotator_id FROM votes ORDER BY cast_at").fetchall()
    assert [v[3] for v in votes] == [ann.id] * 5
    winners = [("tiny" if ch == "a" else "tiny-b") if ch in ("a", "b") else ch for ch, _, _, _ in votes]
    # A and Shift+B picked the left and right answer; T and X a tie and both bad, whatever the sides were.
    assert winners[0] == votes[0][2] and winners[4] != votes[4][2]
    assert [w for w in winners[2:4]] == ["tie", "both_bad"] and votes[1][0] in ("a", "b")
    assert [v[1] for v in votes] == [1, 1, None, None, 2]

    last_pair = conn.execute("SELECT pair_id FROM votes ORDER BY cast_at DESC LIMIT 1").fetchone()[0]
    page.keyboard.press("u")
    page.get_by_text("4 of 6").wait_for()
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 4
    held = conn.execute("SELECT pair_id FROM assignments WHERE status = 'open'").fetchall()
    assert held == [(last_pair,)]
