"""Admin: users, roles, password resets, and workspace settings."""
import streamlit as st

from tunelab import auth, workspace
from pages import _ui

_ui.guard("admin")
st.title("Admin")
conn = _ui.db()

st.subheader("Users")
users = auth.list_users(conn)
st.dataframe([{"name": u.name, "role": u.role, "disabled": u.disabled} for u in users], hide_index=True)

c1, c2, c3 = st.columns(3)
with c1.form("add_user", clear_on_submit=True):
    st.markdown("**Add a user**")
    name = st.text_input("Name")
    role = st.selectbox("Role", auth.ROLES)
    password = st.text_input("Password", type="password")
    if st.form_submit_button("Add"):
        with _ui.user_errors():
            auth.add_user(conn, name, role, password)
            st.rerun()
with c2.form("change_role"):
    st.markdown("**Change a role**")
    who = st.selectbox("User", [u.name for u in users], key="role_user")
    new_role = st.selectbox("New role", auth.ROLES, key="role_new")
    if st.form_submit_button("Change") and who:
        with _ui.user_errors():
            auth.set_role(conn, who, new_role)
            st.rerun()
with c3.form("reset_password", clear_on_submit=True):
    st.markdown("**Reset a password**")
    who = st.selectbox("User", [u.name for u in users], key="pw_user")
    new_pw = st.text_input("New password", type="password")
    if st.form_submit_button("Reset") and who:
        with _ui.user_errors():
            auth.set_password(conn, who, new_pw)
            st.success(f"Password of {who} reset; their sessions were signed out.")

# Form actions run in this script's body, after _ui.guard("admin") above has re-checked the role.
ACCOUNT_ACTIONS = {"Disable": auth.disable_user, "Enable": auth.enable_user, "Remove": auth.remove_user}
with st.form("account"):
    st.markdown("**Disable, enable or remove a user** (disabling or removing signs them out; their votes stay)")
    who = st.selectbox("User", [u.name for u in users], key="account_user")
    pressed = [label for label, col in zip(ACCOUNT_ACTIONS, st.columns(3)) if col.form_submit_button(label)]
    if pressed and who:
        with _ui.user_errors():
            ACCOUNT_ACTIONS[pressed[0]](conn, who)
            st.rerun()

st.subheader("Settings")
with st.form("settings"):
    values = {k: st.text_input(k, str(workspace.get_setting(conn, k))) for k in workspace.SETTINGS_DEFAULTS}
    if st.form_submit_button("Save settings"):
        with _ui.user_errors():
            for k, v in values.items():
                workspace.set_setting(conn, k, v)
            st.success("Saved.")
