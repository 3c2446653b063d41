"""tunelab's entry: the web server's own routes, sign-in, then role-aware navigation over pages/.

Run it with `streamlit run streamlit_app.py`. Streamlit first imports this file to find `app` (an
`st.App`): that adds the server's host check and the sign-in routes (core/web.py) in front of Streamlit.
The App then runs this same file, as `__main__`, for every browser session: that is `main()` below.

Every page is listed here (st.navigation turns off the automatic pages/ discovery). Pages a role may not
open are hidden from its menu, and each page also checks the role itself, so opening a hidden page's
URL shows "not allowed".
"""
import streamlit as st

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


def main() -> None:
    from tunelab import auth, web
    from pages import _ui

    st.set_page_config(page_title="tunelab", page_icon=":material/tune:", layout="wide")
    st.session_state[_ui.ENTRY_RAN] = True

    user = _ui.current_user()
    if user is None:
        # One hidden page, so that Streamlit shows no pages/ listing either.
        st.navigation([st.Page(_no_access, title="tunelab", default=True)], position="hidden").run()
        st.stop()

    landing = HOME_OF[user.role]
    pages = [st.Page(f"pages/{file}", title=title, icon=icon, url_path=key, default=key == landing,
                     visibility="visible" if user.can_open(key) else "hidden")
             for key, file, title, icon in PAGES]
    nav = st.navigation(pages)
    wanted = st.session_state.pop(_ui.WANTED_PAGE, None)  # a page's URL opened before the entry had run
    if wanted and user.can_open(wanted[0]):
        st.switch_page(next(p for p in pages if p.url_path == wanted[0]), query_params=wanted[1])

    with st.sidebar:
        if user is auth.LOCAL_ADMIN:
            st.info("No users yet, so you are the local admin (this machine only). To require sign-in, add a "
                    "user: `tunelab users add NAME --role admin`, or on the Admin page.")
        else:
            st.caption(f"Signed in as **{user.name}** ({user.role})")
            if st.button("Sign out", key="sign_out"):
                _ui.redirect(web.SIGNOUT_PATH)
                st.stop()
    nav.run()


def _no_access() -> None:
    from tunelab import auth
    from pages import _ui
    if auth.has_users(_ui.db()):
        _ui.go_to_sign_in()
        return
    st.title("tunelab")
    st.warning("This tunelab has no users yet, so only its owner, on the machine it runs on, can use it. "
               "Ask the owner to add an account for you (`tunelab users add NAME --role ROLE`).")


def on_script_error(exc: Exception) -> bool:
    """What a page's uncaught exception shows. A UserError is something a signed-in user can fix: its
    message (a changed dataset file, say). A signed-in admin or engineer sees any other traceback (it is
    their server); anyone else sees one line, and the details go to the server's log."""
    from tunelab.errors import UserError
    try:
        from pages import _ui
        user = _ui.current_user()
    except Exception:
        user = None
    if user is not None and isinstance(exc, UserError):
        _ui.show_error(str(exc))
        return True
    if user is not None and user.role in ("admin", "engineer"):
        return False
    import logging
    logging.getLogger("tunelab.app").error("page error", exc_info=exc)
    st.error("Something went wrong on the server. The owner can find the details in the server's log.")
    return True


if __name__ == "__main__":
    main()
else:
    from tunelab import web

    app = st.App(__file__, routes=web.routes(), on_script_error=on_script_error,
                 middleware=web.middleware(bind_address=lambda: st.get_option("server.address")))
