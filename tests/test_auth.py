import pytest

from tunelab import auth
from tunelab.errors import UserError
from tests.conftest import run_cli


def test_password_stored_only_as_salted_scrypt(workspace):
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", "root password")  # the first user must be an admin
    auth.add_user(conn, "ann", "annotator", "correct horse")
    auth.add_user(conn, "bob", "viewer", "correct horse")
    hashes = [r[0] for r in conn.execute("SELECT password_hash FROM users WHERE name != 'root' ORDER BY name")]
    assert all(h.startswith("scrypt$") and "correct horse" not in h for h in hashes)
    assert hashes[0] != hashes[1]  # same password, different salt


def test_authenticate(workspace):
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", "root password")  # the first user must be an admin
    auth.add_user(conn, "ann", "annotator", "correct horse")
    assert auth.authenticate(conn, "ann", "correct horse").role == "annotator"
    assert auth.authenticate(conn, "ann", "wrong horse") is None
    assert auth.authenticate(conn, "nobody", "correct horse") is None


def test_sessions_and_reset_signs_out(workspace):
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", "root password")  # the first user must be an admin
    user = auth.add_user(conn, "ann", "engineer", "correct horse")
    token = auth.create_session(conn, user)
    assert auth.session_user(conn, token) == user
    assert conn.execute("SELECT count(*) FROM sessions WHERE token_hash = ?", [token]).fetchone()[0] == 0
    auth.set_password(conn, "ann", "another horse")
    assert auth.session_user(conn, token) is None


def test_roles_see_only_their_pages():
    annotator = auth.User(1, "a", "annotator")
    viewer = auth.User(2, "v", "viewer")
    engineer = auth.User(3, "e", "engineer")
    assert [p for p in auth.PAGE_ROLES if annotator.can_open(p)] == ["labeling"]
    assert sorted(p for p in auth.PAGE_ROLES if viewer.can_open(p)) == ["leaderboard", "runs"]
    assert [p for p in auth.PAGE_ROLES if not engineer.can_open(p)] == ["admin"]
    assert all(auth.LOCAL_ADMIN.can_open(p) for p in auth.PAGE_ROLES)


def test_bad_role_and_last_admin(workspace):
    conn, _ = workspace
    with pytest.raises(UserError, match="role"):
        auth.add_user(conn, "x", "boss", "correct horse")
    auth.add_user(conn, "root", "admin", "correct horse")
    with pytest.raises(UserError, match="last admin"):
        auth.set_role(conn, "root", "viewer")


@pytest.mark.process
@pytest.mark.timeout(120)
def test_cli_users_add_reads_password_stdin(tmp_path):
    home = tmp_path / "home"
    first = run_cli("users", "add", "root", "--role", "admin", "--password-stdin", env_home=home,
                    stdin="root password\n")  # the first user must be an admin
    assert first.returncode == 0, first.stderr
    done = run_cli("users", "add", "ann", "--role", "annotator", "--password-stdin", env_home=home,
                   stdin="correct horse\n")
    assert done.returncode == 0, done.stderr
    listed = run_cli("users", "list", "--json", env_home=home)
    import json
    assert json.loads(listed.stdout) == [{"name": "ann", "role": "annotator", "disabled": False},
                                         {"name": "root", "role": "admin", "disabled": False}]
    bad = run_cli("users", "add", "bob", "--role", "boss", "--password-stdin", env_home=home, stdin="x" * 9)
    assert bad.returncode == 2 and "role" in bad.stderr and bad.stdout == ""
