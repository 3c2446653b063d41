"""A vote or skip click that lands on the pair just voted (a double click, or a click while the next pair is
still being drawn) is not counted, and the annotator is told so: a click never vanishes silently."""
import pytest

from tunelab import auth
from tunelab.workspace import Workspace
from tests.conftest import ready_campaign, sign_in, wait_for_app, wait_for_pair

pytestmark = [pytest.mark.e2e, pytest.mark.process]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stale, key, toast", [("B > A", "vote_b", "Not counted"), ("Skip", "skip", "Not skipped")])
def test_a_click_on_the_pair_just_voted_is_not_counted_and_says_so(app, page, tiny_model_dir, stale, key, toast):
    conn = app.db()
    auth.add_user(conn, "root", "admin", "admin password")
    ann = auth.add_user(conn, "ann", "annotator", "annotator pw")
    ready_campaign(conn, Workspace(app.home), tiny_model_dir, "c", [f"Question number {i}?" for i in range(3)],
                   ([f"Alpha answer {i}" for i in range(3)], [f"Beta answer {i}" for i in range(3)]))
    # The server's messages to the page are held back while `held` is not None, so the page keeps the voted
    # pair's buttons as long as the test needs: a slow redraw, made certain.
    state = {"held": None}

    def route(ws):
        state["page_side"] = ws
        server = ws.connect_to_server()
        ws.on_message(server.send)
        server.on_message(lambda m: ws.send(m) if state["held"] is None else state["held"].append(m))

    page.route_web_socket("**/_stcore/stream", route)
    sign_in(page, app, "ann", "annotator pw")
    page.get_by_text("0 of 3").wait_for()
    wait_for_app(page)
    wait_for_pair(page, conn, ann.id)
    [(first,)] = conn.execute("SELECT id FROM assignments WHERE status = 'open'").fetchall()

    state["held"] = []
    page.get_by_role("button", name="A > B").click()
    for _ in range(120):  # the page waits, not time.sleep: the routed socket's messages go through this thread
        if conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 1:
            break
        page.wait_for_timeout(250)
    else:
        pytest.fail("the first click was not recorded in 30 s")
    page.get_by_role("button", name=stale).click()  # still the first pair's button: its redraw is held
    assert page.locator(f".st-key-{key}_{first}").count() == 1
    while state["held"]:  # in order; messages that come meanwhile join the queue
        state["page_side"].send(state["held"].pop(0))
    state["held"] = None
    page.get_by_text(toast).wait_for(timeout=15_000)
    wait_for_pair(page, conn, ann.id)
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM assignments WHERE status = 'skipped'").fetchone()[0] == 0
    page.get_by_text("1 of 3").wait_for()
    page.get_by_role("button", name="Tie").click()  # the pair now shown takes the vote
    page.get_by_text("2 of 3").wait_for()
    assert conn.execute("SELECT count(*) FROM votes").fetchone()[0] == 2
