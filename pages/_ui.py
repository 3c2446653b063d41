"""What every page shares: the database handle, the signed-in user, the role check, error display.

Pages hold widgets only; anything worth testing lives in core/.
"""
from __future__ import annotations

from contextlib import contextmanager

import streamlit as st

from core import auth, db as dbmod, workspace
from core.errors import UserError

COOKIE = "tunelab_session"


def db():
    """One connection per browser session (DESIGN: one connection per session or thread)."""
    if "db" not in st.session_state:
        st.session_state.db = dbmod.connect(workspace.current().db_path)
    return st.session_state.db


def ws():
    return workspace.current()


def current_user() -> auth.User | None:
    """The signed-in user, checked against the DB on every rerun so role changes apply at once."""
    conn = db()
    if not auth.has_users(conn):
        return auth.LOCAL_ADMIN
    token = st.session_state.get("session_token") or st.context.cookies.get(COOKIE)
    user = auth.session_user(conn, token)
    if user:
        st.session_state.session_token = token
    return user


# Set by streamlit_app.py on every run; a page run without it was run by Streamlit directly (below).
ENTRY_RAN = "entry_ran"
WANTED_PAGE = "wanted_page"


def guard(page: str) -> auth.User:
    """Every page calls this first: a wrong role sees 'not allowed' and nothing else."""
    if not st.session_state.get(ENTRY_RAN):
        # A new server whose first visitor opens a page's URL (a /labeling link) runs that file by
        # itself, in Streamlit's old pages/ folder mode, until streamlit_app.py has called st.navigation:
        # no sign-in, a raw file list in the sidebar. Go through the entry instead; it comes back here.
        st.session_state[WANTED_PAGE] = page
        st.switch_page("streamlit_app.py")
    user = current_user()
    if user is None or not user.can_open(page):
        st.error("Not allowed: your role cannot open this page." if user else "Not allowed: please sign in.")
        st.stop()
    return user


def remember_session_cookie() -> None:
    """Keep the sign-in across reloads and opened URLs: the token goes into a cookie once per session."""
    token = st.session_state.get("session_token")
    if token and st.context.cookies.get(COOKIE) != token and not st.session_state.get("cookie_written"):
        st.html(f"<script>document.cookie = '{COOKIE}={token}; path=/; max-age={auth.SESSION_DAYS * 86400}; "
                f"SameSite=Strict';</script>", unsafe_allow_javascript=True)
        st.session_state.cookie_written = True


def forget_session_cookie() -> None:
    st.html(f"<script>document.cookie = '{COOKIE}=; path=/; max-age=0; SameSite=Strict';</script>",
            unsafe_allow_javascript=True)


@contextmanager
def user_errors():
    """Show a UserError with st.error instead of a traceback."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc))
