"""Accounts, sign-in throttling and sessions (issue 13): each test is one finding of the security review."""
import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from tunelab import auth, db as dbmod
from tunelab.errors import UserError
from tests.conftest import REPO, run_cli

PW = "correct horse"


def age_failures(conn, seconds: float) -> None:
    """Move every recorded sign-in failure `seconds` into the past, as if that time had passed."""
    conn.execute("UPDATE sign_in_failures SET at = at - ?", [seconds])


def test_first_user_must_be_admin(workspace):
    conn, _ = workspace
    with pytest.raises(UserError, match="first user must have role 'admin'"):
        auth.add_user(conn, "ann", "annotator", PW)
    assert not auth.has_users(conn)
    auth.add_user(conn, "root", "admin", PW)
    assert auth.add_user(conn, "ann", "annotator", PW).role == "annotator"


@pytest.mark.parametrize("name", ["a\x07b", "a\nb", "a\tb", "a\u200bb", "a\u202eb", "a\u00a0b", "a\u2028b",
                                  "\u200b", "x" * 65])
def test_unprintable_or_long_names_refused(workspace, name):
    conn, _ = workspace
    with pytest.raises(UserError, match="user name"):
        auth.add_user(conn, name, "admin", PW)
    assert not auth.has_users(conn)


def test_printable_names_accepted(workspace):
    conn, _ = workspace
    assert auth.add_user(conn, "  José Núñez  ", "admin", PW).name == "José Núñez"
    assert auth.add_user(conn, "x" * 64, "viewer", PW).name == "x" * 64


def test_disable_enable_remove(workspace):
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", PW)
    ann = auth.add_user(conn, "ann", "annotator", PW)
    token = auth.create_session(conn, ann)
    auth.disable_user(conn, "ann")
    assert auth.session_user(conn, token) is None  # signed out everywhere
    assert auth.authenticate(conn, "ann", PW) is None  # no hint that the password was right
    assert [(u.name, u.disabled) for u in auth.list_users(conn)] == [("ann", True), ("root", False)]
    # Even a session row made after disabling is refused.
    assert auth.session_user(conn, auth.create_session(conn, ann)) is None
    auth.enable_user(conn, "ann")
    assert auth.authenticate(conn, "ann", PW) == ann

    token = auth.create_session(conn, ann)
    auth.remove_user(conn, "ann")
    assert auth.session_user(conn, token) is None
    assert [u.name for u in auth.list_users(conn)] == ["root"]
    with pytest.raises(UserError, match="no user named 'ann'"):
        auth.remove_user(conn, "ann")
    # A new user never gets the removed one's id, which votes and assignments still carry.
    assert auth.add_user(conn, "bob", "annotator", PW).id != ann.id


def test_last_admin_cannot_be_disabled_removed_or_demoted(workspace):
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", PW)
    auth.add_user(conn, "old", "admin", PW)
    auth.disable_user(conn, "old")  # a disabled admin does not count as one
    for act in (lambda: auth.disable_user(conn, "root"), lambda: auth.remove_user(conn, "root"),
                lambda: auth.set_role(conn, "root", "viewer")):
        with pytest.raises(UserError, match="last admin"):
            act()
    auth.set_role(conn, "old", "viewer")  # demoting a disabled admin leaves the enabled one
    auth.remove_user(conn, "old")


@contextmanager
def writer_busy(conn, seconds: float):
    """Hold the DB's write lock, as a long write elsewhere would, while racers start inside the block:
    all of them reach their check before any can write, so the race is run every time (without this
    it showed in 1 of 20 trials). Hold it well under the busy timeout (10 s)."""
    with dbmod.transaction(conn):
        yield
        time.sleep(seconds)


def test_last_admin_survives_a_race(workspace):
    """Two admins, each in their own thread and connection, demote, disable or remove the other at once."""
    conn, ws = workspace
    auth.add_user(conn, "amy", "admin", PW)
    auth.add_user(conn, "bea", "admin", PW)
    conns = [dbmod.connect(ws.db_path) for _ in range(2)]
    acts = [lambda c, who: auth.set_role(c, who, "viewer"), auth.disable_user, auth.remove_user]
    for trial in range(21):
        refused = []

        def demote(c, who, act=acts[trial % 3]):
            try:
                act(c, who)
            except UserError:
                refused.append(who)

        threads = [threading.Thread(target=demote, args=(c, who)) for c, who in zip(conns, ["amy", "bea"])]
        with writer_busy(conn, 0.2):
            for t in threads:
                t.start()
        for t in threads:
            t.join()
        admins = [u.name for u in auth.list_users(conn) if u.role == "admin" and not u.disabled]
        assert len(admins) == 1 and len(refused) == 1, (trial, admins, refused)
        for name in {"amy", "bea"} - {u.name for u in auth.list_users(conn)}:  # removed: back again
            auth.add_user(conn, name, "admin", PW)
        conn.execute("UPDATE users SET role = 'admin', disabled = 0")
    for c in conns:
        c.close()


@pytest.mark.process
@pytest.mark.timeout(120)
def test_cli_users_add_racing_itself_exits_2(tmp_path):
    """Three `users add` of one name at once: one adds it, the others exit 2 (not 1 with IntegrityError)."""
    home = tmp_path / "home"
    assert run_cli("users", "list", env_home=home).returncode == 0  # the DB exists before the race
    conn = dbmod.connect(home / "tunelab.db")
    password_file = tmp_path / "password"
    password_file.write_text(PW + "\n")
    env = dict(os.environ, TUNELAB_HOME=str(home))
    for name in ("amy", "bea"):
        procs = []
        with writer_busy(conn, 2.0):  # a CLI start takes ~0.2 s
            for _ in range(3):
                with password_file.open() as stdin:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "tunelab.cli", "users", "add", name, "--role", "admin",
                         "--password-stdin"],
                        cwd=REPO, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=60)]]
        assert sorted(rc for rc, _ in results) == [0, 2, 2], results
        assert all("already exists" in err for rc, err in results if rc == 2)
    conn.close()


@pytest.mark.process
@pytest.mark.timeout(120)
def test_cli_disable_enable_remove_and_last_admin(tmp_path):
    home = tmp_path / "home"
    for name, role in (("root", "admin"), ("ann", "annotator")):
        assert run_cli("users", "add", name, "--role", role, "--password-stdin", env_home=home,
                       stdin=PW + "\n").returncode == 0
    assert run_cli("users", "disable", "ann", env_home=home).returncode == 0
    listed = json.loads(run_cli("users", "list", "--json", env_home=home).stdout)
    assert {u["name"]: u["disabled"] for u in listed} == {"ann": True, "root": False}
    assert run_cli("users", "enable", "ann", env_home=home).returncode == 0
    for action in ("disable", "remove"):
        done = run_cli("users", action, "root", env_home=home)
        assert done.returncode == 2 and "last admin" in done.stderr and done.stdout == ""
    done = run_cli("users", "remove", "nobody", env_home=home)
    assert done.returncode == 2 and "nobody" in done.stderr
    assert run_cli("users", "remove", "ann", env_home=home).returncode == 0
    assert [u["name"] for u in json.loads(run_cli("users", "list", "--json", env_home=home).stdout)] == ["root"]


def test_200_wrong_passwords_then_right_is_refused_per_name(workspace):
    """Each guess from a new address, so only the per-name limit stands in the way."""
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", PW)
    for i in range(auth.FREE_FAILURES):
        assert auth.authenticate(conn, "root", f"guess {i}", client=f"10.0.0.{i}") is None
    started = time.monotonic()
    for i in range(auth.FREE_FAILURES, 200):
        with pytest.raises(auth.Throttled):
            auth.authenticate(conn, "root", f"guess {i}", client=f"10.0.{i}.1")
    assert time.monotonic() - started < 5  # refused without hashing: the password was not checked
    with pytest.raises(auth.Throttled) as locked:
        auth.authenticate(conn, "root", PW, client="10.1.1.1")
    assert isinstance(locked.value, UserError) and "try again in" in str(locked.value)
    assert 0 < locked.value.retry_after <= auth.FIRST_DELAY_S
    age_failures(conn, auth.FIRST_DELAY_S)
    assert auth.authenticate(conn, "root", PW, client="10.1.1.1").name == "root"
    # The success cleared the name's failures: the next mistake is a free one again.
    assert auth.authenticate(conn, "root", "guess", client="10.1.1.1") is None
    assert auth.authenticate(conn, "root", PW, client="10.1.1.1") is not None


def test_throttled_per_client(workspace):
    """One address trying many names is locked out, for every name; other addresses are not."""
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", PW)
    for i in range(auth.FREE_FAILURES):
        assert auth.authenticate(conn, f"nobody{i}", PW, client="203.0.113.9") is None
    with pytest.raises(auth.Throttled):
        auth.authenticate(conn, "root", PW, client="203.0.113.9")
    assert auth.authenticate(conn, "root", PW, client="198.51.100.7").name == "root"


def test_throttle_delays_grow_and_are_capped(workspace):
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", PW)
    for i in range(auth.FREE_FAILURES):
        auth.authenticate(conn, "root", "guess", client="cli")
    waits = []
    for _ in range(3):
        with pytest.raises(auth.Throttled) as locked:
            auth.authenticate(conn, "root", PW, client="cli")
        waits.append(locked.value.retry_after)
        age_failures(conn, locked.value.retry_after + 0.01)
        assert auth.authenticate(conn, "root", "guess", client="cli") is None  # a wrong one, once allowed
    # Less than the full delay by the time a wrong guess took to check (a failure counts from its start).
    assert waits == pytest.approx([auth.FIRST_DELAY_S, 2 * auth.FIRST_DELAY_S, 4 * auth.FIRST_DELAY_S], abs=10)
    now = time.time()
    conn.execute("INSERT INTO sign_in_failures(name, client, at) VALUES " + ", ".join(["('root', 'cli', ?)"] * 50),
                 [now] * 50)
    with pytest.raises(auth.Throttled, match="15 min") as locked:
        auth.authenticate(conn, "root", PW, client="cli")
    assert locked.value.retry_after == pytest.approx(auth.MAX_DELAY_S, abs=10)


def test_current_scrypt_parameters(workspace):
    """OWASP: N=2**17, r=8, p=1. One hash takes about 0.3 s here (measured, not mocked)."""
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", PW)
    stored = conn.execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith(f"scrypt${2**17}$8$1$")
    started = time.monotonic()
    assert auth.verify_password(PW, stored)
    assert time.monotonic() - started < 5


def test_old_parameter_hash_upgraded_at_sign_in(workspace):
    conn, _ = workspace
    auth.add_user(conn, "root", "admin", PW)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(PW.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    old = f"scrypt${2**14}$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    conn.execute("UPDATE users SET password_hash = ?", [old])
    assert auth.authenticate(conn, "root", "wrong horse") is None
    assert conn.execute("SELECT password_hash FROM users").fetchone()[0] == old  # no upgrade on failure
    assert auth.authenticate(conn, "root", PW).name == "root"
    upgraded = conn.execute("SELECT password_hash FROM users").fetchone()[0]
    assert upgraded.startswith(f"scrypt${2**17}$8$1$") and auth.verify_password(PW, upgraded)
    assert auth.authenticate(conn, "root", PW).name == "root"


def test_session_idle_timeout_and_sparse_refresh(workspace):
    conn, _ = workspace
    root = auth.add_user(conn, "root", "admin", PW)
    token = auth.create_session(conn, root)

    def seen(minutes_ago: float | None = None) -> float:
        if minutes_ago is not None:
            conn.execute("UPDATE sessions SET last_seen_at = ?", [time.time() - minutes_ago * 60])
        return conn.execute("SELECT last_seen_at FROM sessions").fetchone()[0]

    before = seen()
    changes = conn.conn.total_changes
    assert auth.session_user(conn, token) == root
    assert conn.conn.total_changes == changes and seen() == before  # used within the minute: no write
    seen(auth.SESSION_IDLE_MINUTES - 1)
    assert auth.session_user(conn, token) == root
    assert seen() == pytest.approx(time.time(), abs=5)  # refreshed
    seen(auth.SESSION_IDLE_MINUTES + 1)
    assert auth.session_user(conn, token) is None
