"""Labeling: blind A/B votes on two answers to one prompt, keyboard first.

Keys: A / B = that answer is better, Shift+A / Shift+B = much better, T = tie, X = both bad,
S = skip, U = undo the last vote. The voting part is a fragment, so a vote reruns only it.

Integrity (SECURITY.md): the vote and skip buttons carry the assignment id in their keys, so a key press
sent before the next pair was drawn still names the pair it was pressed for: it is not counted, and a toast
says so (a press never vanishes silently); every callback and fragment rerun checks the session and role
again, so signing someone out or demoting them stops an open page; prompts, answers and guidelines come
from files and models, so they go through `untrusted.markdown` and load no images.
"""
import streamlit as st

from tunelab import feedback, untrusted
from tunelab.errors import UserError
from pages import _ui

user = _ui.guard("labeling")
st.title("Labeling")
conn = _ui.db()

LONG_CHARS = 1500  # longer answers start collapsed, under a short preview

campaigns = [c for c in feedback.list_campaigns(conn) if c.status == "ready" and not c.source.startswith("import:")]
if not campaigns:
    st.info("No campaign is ready to label yet. An engineer creates one on the Feedback page.")
    st.stop()
names = [c.name for c in campaigns]
# Buttons, not a selectbox or radio: Streamlit drops letter shortcuts while any <input> has the focus,
# and both keep it after the choice, so the next key presses typed into the selector instead of voting.
chosen = (st.segmented_control("Campaign", names, default=names[0], required=True, key="label_campaign",
                                format_func=untrusted.markdown)
          if len(names) > 1 else names[0])
campaign = campaigns[names.index(chosen)]
if campaign.guidelines:
    with st.expander("Guidelines"):
        st.markdown(untrusted.markdown(campaign.guidelines))


SHOWN = "label_shown"  # session key: the assignment id of the pair this session drew or moved on to last


def _stale(assignment_id: int, said: str) -> bool:
    """A second click, or a click on the last pair's buttons while the next pair is still being drawn (its text
    can show before its buttons): core would ignore it without a word, so the annotator is told instead."""
    if assignment_id == st.session_state.get(SHOWN):
        return False
    st.toast(f"{said}: that press was for the pair before this one. Press again on this pair.")
    return True


def _vote(assignment_id: int, choice: str, strength: int | None) -> None:
    if (acting := _ui.allowed("labeling")) is None:
        return  # signed out or demoted since the page was drawn: the fragment's guard says so
    if _stale(assignment_id, "Not counted"):
        return
    try:
        nxt = feedback.vote_and_next(conn, assignment_id, choice, strength, annotator_id=acting.id)
    except UserError as exc:  # a press for a pair skipped or taken back since it was drawn
        st.toast(untrusted.markdown(str(exc)))
        return
    st.session_state[SHOWN] = nxt and nxt.id  # here, not in the fragment: a click can interrupt its rerun


def _skip(assignment_id: int) -> None:
    if _ui.allowed("labeling") is not None and not _stale(assignment_id, "Not skipped"):
        feedback.skip(conn, assignment_id)


def _undo() -> None:
    if (acting := _ui.allowed("labeling")) is not None and feedback.undo_last(conn, campaign.id, acting.id) is None:
        st.toast("Nothing to undo.")


def _answer(title: str, text: str) -> None:
    with st.container(border=True):
        st.markdown(f"**{title}**")
        if len(text) > LONG_CHARS:
            st.text(text[:300] + " …")
            with st.expander(f"Show all ({len(text.split())} words)"):
                st.markdown(untrusted.markdown(text))
        else:
            st.markdown(untrusted.markdown(text) or "*(empty answer)*")


@st.fragment
def labeler() -> None:
    user = _ui.guard("labeling")  # a fragment rerun skips the page's own guard
    assignment = feedback.next_pair(conn, campaign.id, user.id, user.name)
    st.session_state[SHOWN] = assignment and assignment.id
    done, total = feedback.annotator_progress(conn, campaign.id, user.id)
    st.progress(done / total if total else 1.0, text=f"{done} of {total}")
    if assignment is None:
        st.success("All done: no pair is left for you in this campaign. Thank you!")
        st.button("Undo last vote", key="undo", shortcut="U", on_click=_undo, disabled=done == 0)
        return
    *history, last = assignment.prompt
    with st.container(border=True):
        for m in history:
            st.caption(untrusted.markdown(m["role"]))
            st.markdown(untrusted.markdown(m["content"]))
        st.markdown("**Prompt**")
        st.markdown(untrusted.markdown(last["content"]))
    left, right = st.columns(2)
    with left:
        _answer("Answer A", assignment.left)
    with right:
        _answer("Answer B", assignment.right)
    buttons = [("A ≫ B", "A is much better", "vote_a2", "Shift+A", ("left", 2)),
               ("A > B", "A is better", "vote_a", "A", ("left", 1)),
               ("Tie", "Both are about as good", "vote_tie", "T", ("tie", None)),
               ("Both bad", "Neither answer is acceptable", "vote_bad", "X", ("both_bad", None)),
               ("B > A", "B is better", "vote_b", "B", ("right", 1)),
               ("B ≫ A", "B is much better", "vote_b2", "Shift+B", ("right", 2))]
    for col, (label, help_, key, shortcut, (choice, strength)) in zip(st.columns([1.5, 1, 1, 1.2, 1, 1.5]), buttons):
        col.button(label, key=f"{key}_{assignment.id}", help=help_, shortcut=shortcut, on_click=_vote,
                   args=(assignment.id, choice, strength),
                   type="primary" if choice in ("left", "right") else "secondary", width="stretch")
    a, b, _ = st.columns([1, 1, 4])
    a.button("Skip", key=f"skip_{assignment.id}", shortcut="S", on_click=_skip, args=(assignment.id,))
    b.button("Undo", key="undo", shortcut="U", on_click=_undo, disabled=done == 0)


labeler()
