"""tunelab's entry: sign-in, then role-aware navigation over the files in pages/.

Run it with `streamlit run streamlit_app.py`. Every page is listed here (st.navigation turns off
the automatic pages/ discovery). Pages a role may not open are hidden from its menu, and each page
also checks the role itself, so opening a hidden page's URL shows "not allowed".
"""
from pathlib import Path

import streamlit as st

from core import auth
from pages import _ui

st.set_page_config(page_title="tunelab", page_icon=":material/tune:", layout="wide")
st.session_state[_ui.ENTRY_RAN] = True

# key, file, title, icon; the key is the URL path and the PAGE_ROLES key.
PAGES = [
    ("home", "home.py", "Home", ":material/home:"),
    ("datasets", "datasets.py", "Datasets", ":material/dataset:"),
    ("launch", "launch.py", "Launch run", ":material/rocket_launch:"),
    ("runs", "runs.py", "Runs", ":material/monitoring:"),
    ("models", "models.py", "Models", ":material/neurology:"),
    ("playground", "playground.py", "Playground", ":material/chat:"),
    ("labeling", "labeling.py", "Labeling", ":material/thumbs_up_down:"),
    ("feedback", "feedback.py", "Feedback", ":material/groups:"),
    ("evaluate", "evaluate.py", "Evaluate", ":material/fact_check:"),
    ("leaderboard", "leaderboard.py", "Leaderboard", ":material/leaderboard:"),
    ("admin", "admin.py", "Admin", ":material/admin_panel_settings:"),
]
# Where each role lands first.
HOME_OF = {"admin": "home", "engineer": "home", "annotator": "labeling", "viewer": "leaderboard"}


def sign_in() -> None:
    st.title("tunelab")
    if st.context.cookies.get(_ui.COOKIE):
        _ui.forget_session_cookie()  # a stale or signed-out session's cookie
    with st.form("sign_in"):
        name = st.text_input("User name")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        user = auth.authenticate(_ui.db(), name.strip(), password)
        if user is None:
            st.error("Wrong user name or password.")
        else:
            st.session_state.session_token = auth.create_session(_ui.db(), user)
            st.rerun()


user = _ui.current_user()
if user is None:
    st.navigation([st.Page(sign_in, title="Sign in", url_path="signin", default=True)], position="hidden").run()
    st.stop()

here = Path(__file__).parent / "pages"
available = [p for p in PAGES if (here / p[1]).exists()]
landing = HOME_OF[user.role] if any(p[0] == HOME_OF[user.role] for p in available) else None
pages = [
    st.Page(f"pages/{file}", title=title, icon=icon, url_path=key,
            default=(key == landing) if landing else i == 0,
            visibility="visible" if user.can_open(key) else "hidden")
    for i, (key, file, title, icon) in enumerate(available)
]
nav = st.navigation(pages)
wanted = st.session_state.pop(_ui.WANTED_PAGE, None)  # a page's URL opened before the entry had run
if wanted and user.can_open(wanted):
    st.switch_page(next(p for p, (key, *_) in zip(pages, available) if key == wanted))

with st.sidebar:
    _ui.remember_session_cookie()
    if user is auth.LOCAL_ADMIN:
        st.info("No users yet, so you are the local admin. To require sign-in, add a user: "
                "`tunelab users add NAME --role admin`, or on the Admin page.")
    else:
        st.caption(f"Signed in as **{user.name}** ({user.role})")
        if st.button("Sign out", key="sign_out"):
            auth.end_session(_ui.db(), st.session_state.pop("session_token", None))
            st.session_state.pop("cookie_written", None)
            st.rerun()

nav.run()
