"""What every page shares: the database handle, the signed-in user, the role check, error display.

Pages hold widgets only; anything worth testing lives in core/.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from urllib.parse import quote

import streamlit as st

from tunelab import auth, configs, db as dbmod, untrusted, web, workspace
from tunelab.errors import UserError



def db():
    """One connection per browser session (DESIGN: one connection per session or thread)."""
    if "db" not in st.session_state:
        st.session_state.db = dbmod.connect(workspace.current().db_path)
    return st.session_state.db


def ws():
    return workspace.current()


def current_user() -> auth.User | None:
    """The signed-in user, checked against the DB on every rerun (callbacks and fragments included), so
    signing out, disabling or demoting someone applies to pages they already have open.

    The session token is in an HttpOnly cookie that only the server sets (core/web.py); with no users at
    all, the app is the local admin's, and only for clients on this machine.
    """
    conn = db()
    if not auth.has_users(conn):
        return auth.LOCAL_ADMIN if is_local_client() else None
    return auth.session_user(conn, st.context.cookies.get(web.COOKIE))


def is_local_client() -> bool:
    return web.client_is_local(st.context.ip_address, {k.lower(): v for k, v in st.context.headers.items()})


# Set by streamlit_app.py on every run; a page run without it was run by Streamlit directly (below).
ENTRY_RAN = "entry_ran"
WANTED_PAGE = "wanted_page"


def guard(page: str) -> auth.User:
    """Every page calls this first: a wrong role sees 'not allowed' and nothing else."""
    if not st.session_state.get(ENTRY_RAN):
        # A new server whose first visitor opens a page's URL (a /labeling link) runs that file by
        # itself, in Streamlit's old pages/ folder mode, until streamlit_app.py has called st.navigation:
        # no sign-in, a raw file list in the sidebar. Go through the entry instead; it comes back here,
        # with the query (a Leaderboard link's ?run=), which switching pages clears.
        st.session_state[WANTED_PAGE] = (page, st.query_params.to_dict())
        st.switch_page("streamlit_app.py")
    user = current_user()
    if user is None or not user.can_open(page):
        st.error("Not allowed: your role cannot open this page." if user else "Not allowed: please sign in.")
        st.stop()
    return user


def allowed(page: str) -> auth.User | None:
    """For callbacks (on_click, on_change), which run before the page's own guard: the user, if the
    session is still valid and the role may still act on `page`; None otherwise (signed out, disabled,
    demoted since the page was drawn). A callback that gets None does nothing."""
    user = current_user()
    return user if user is not None and user.can_open(page) else None


def go_to_sign_in() -> None:
    """Send the browser to the server's sign-in form; it comes back to this page afterwards."""
    st.info("Please sign in.")
    redirect(f"{web.SIGNIN_PATH}?next={quote(_this_path(), safe='/')}")


def redirect(path: str) -> None:
    """Leave the Streamlit app for one of the server's own routes (core/web.py)."""
    st.html(f"<script>window.location.replace({json.dumps(path)});</script>", unsafe_allow_javascript=True)


def _this_path() -> str:
    """The page's own path, e.g. /runs, for coming back after signing in."""
    url = st.context.url or ""
    return "/" + url.split("://", 1)[1].split("/", 1)[1] if url.count("/") >= 3 else "/"


def show_error(message: str) -> None:
    """st.error for a message that may quote a name, a record from a file or a model's output: it loads
    no images."""
    st.error(untrusted.markdown(message))


@contextmanager
def user_errors():
    """Show a UserError with st.error instead of a traceback."""
    try:
        yield
    except UserError as exc:
        show_error(str(exc))


def config_form_fields(cls, key: str, *, skip=(), options: dict | None = None, defaults: dict | None = None,
                       multiline=(), columns: int = 1) -> dict:
    """One input per field of a config dataclass (tunelab.configs.form_fields), labelled with the key and
    explained by its help; returns the values as a mapping (nested blocks as `{'lora': {...}}`) for
    `configs.from_mapping` or `config.from_dict`, which check them as YAML keys are checked.

    `options` gives a field a list to pick from (registered models, datasets); None in it shows as (none).
    Text boxes keep numbers as typed (2e-4 stays 2e-4); `multiline` fields get a text area."""
    options, values = options or {}, {}
    slots = st.columns(columns) if columns > 1 else [st.container()]
    for i, f in enumerate(configs.form_fields(cls, skip=skip, defaults=defaults)):
        widget_key, label = f"{key}_{f.name}", f.name
        with slots[i % len(slots)]:
            if f.kind == "group":
                st.caption(f"{f.name}: {f.help}")
            elif f.name in options or f.kind == "choice":
                picks = list(options.get(f.name, f.choices))
                if f.optional and None not in picks:
                    picks.insert(0, None)
                values[f.name] = st.selectbox(label, picks, index=picks.index(f.default) if f.default in picks else 0,
                                              format_func=lambda p: "(none)" if p is None else str(p), help=f.help,
                                              key=widget_key)
            elif f.kind == "bool":
                values[f.name] = st.checkbox(label, value=f.default, help=f.help, key=widget_key)
            elif f.kind == "int":
                values[f.name] = st.number_input(label, value=f.default, min_value=f.min, max_value=f.max, step=1,
                                                 help=f.help, key=widget_key)
            else:
                box = st.text_area if f.name in multiline else st.text_input
                values[f.name] = f.value_of(box(label, value=f.text, help=f.help, key=widget_key))
    return configs.nest(values)
