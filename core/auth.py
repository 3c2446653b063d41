"""Users, roles, password hashing, sign-in throttling and sessions.

Passwords are stored only as scrypt hashes with a per-user random salt. A sign-in creates a
session whose token lives in the browser's cookie; the DB keeps only the token's SHA-256.
With no users at all, the app runs as a local single-user admin.

Sign-in is throttled per user name and per client address: failures are rows in the DB, so every
server process sees them. Changes that must keep at least one admin (demote, disable, remove)
check and write inside one `db.transaction`, so two admins acting at once cannot both pass.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
import unicodedata
from dataclasses import dataclass

from tunelab import db as dbmod
from tunelab.errors import UserError

ROLES = ("admin", "engineer", "annotator", "viewer")
MAX_NAME_LENGTH = 64

# scrypt cost: OWASP's current recommendation for scrypt (N=2**17, r=8, p=1): 128 MiB and ~0.3 s
# per hash on these machines. Older hashes keep their parameters in the string and are re-hashed
# with these at the next successful sign-in.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1

SESSION_DAYS = 14             # absolute lifetime of a session
SESSION_IDLE_MINUTES = 120    # a session unused this long is over
SEEN_EVERY_S = 60             # refresh a session's last_seen_at at most this often (a write per rerun is waste)

# Throttling, per user name and per client: the first FREE_FAILURES failures within FAILURE_WINDOW_S
# cost nothing; each further one locks that name (or client) for FIRST_DELAY_S, doubling, capped at
# MAX_DELAY_S. The window is longer than the sum of the delays up to the cap, so they can grow.
FREE_FAILURES = 5
FIRST_DELAY_S = 30.0
MAX_DELAY_S = 15 * 60.0
FAILURE_WINDOW_S = 3600.0

# Which roles may open which page. Every page checks this itself (see pages/_ui.py).
PAGE_ROLES: dict[str, tuple[str, ...]] = {
    "home": ("admin", "engineer"),
    "datasets": ("admin", "engineer"),
    "launch": ("admin", "engineer"),
    "runs": ("admin", "engineer", "viewer"),
    "playground": ("admin", "engineer"),
    "models": ("admin", "engineer"),
    "labeling": ("admin", "engineer", "annotator"),
    "feedback": ("admin", "engineer"),
    "evaluate": ("admin", "engineer"),
    "leaderboard": ("admin", "engineer", "viewer"),
    "admin": ("admin",),
}


class Throttled(UserError):
    """Too many failed sign-ins for a name or from a client; `retry_after` is in seconds."""

    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"too many failed sign-ins for this name or from this address; "
                         f"try again in {_duration(retry_after)}")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    disabled: bool = False

    def can_open(self, page: str) -> bool:
        return not self.disabled and self.role in PAGE_ROLES.get(page, ())


LOCAL_ADMIN = User(id=0, name="local", role="admin")

_USER_COLUMNS = "id, name, role, disabled"


def _user(row) -> User:
    return User(row[0], row[1], row[2], bool(row[3]))


# ---------------------------------------------------------------- passwords

def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, 32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = _scrypt(password, _unb64(salt), int(n), int(r), int(p), len(_unb64(digest)))
    return hmac.compare_digest(candidate, _unb64(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # scrypt needs 128*n*r*p bytes; hashlib's default ceiling (32 MiB) is below OWASP's parameters.
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=2 * 128 * n * r * p)


def _weaker_than_current(stored: str) -> bool:
    _, n, r, p, *_ = stored.split("$")
    return (int(n), int(r), int(p)) < (SCRYPT_N, SCRYPT_R, SCRYPT_P)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


# ---------------------------------------------------------------- accounts

def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise UserError("password: must be at least 8 characters")


def _check_name(name: str) -> str:
    """A name shows in tables, votes and exports: only printable characters, spaces only inside."""
    name = name.strip()
    if not name:
        raise UserError("user name: must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"user name: at most {MAX_NAME_LENGTH} characters (got {len(name)})")
    for ch in name:
        category = unicodedata.category(ch)
        if category[0] in "CZ" and ch != " ":
            raise UserError(f"user name: character U+{ord(ch):04X} "
                            f"({unicodedata.name(ch, category)}) is not allowed; use printable characters")
    return name


def add_user(db, name: str, role: str, password: str) -> User:
    name = _check_name(name)
    _check_role(role)
    _check_password(password)
    password_hash = hash_password(password)  # slow; outside the write lock
    # Check and insert in one transaction: two `users add` of one name give one user and one UserError.
    with dbmod.transaction(db):
        if role != "admin" and not has_users(db):
            raise UserError(f"the first user must have role 'admin' (got {role!r}), "
                            "or nobody could open Admin")
        if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
            raise UserError(f"user {name!r} already exists")
        cur = db.execute("INSERT INTO users(name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                         [name, role, password_hash, time.time()])
    return User(cur.lastrowid, name, role)


def list_users(db) -> list[User]:
    return [_user(r) for r in db.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()]


def has_users(db) -> bool:
    """Any user row, disabled ones included: disabling everyone must not open local-admin mode."""
    return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def get_user(db, name: str) -> User:
    row = db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", [name]).fetchone()
    if not row:
        raise UserError(f"no user named {name!r}")
    return _user(row)


def _keep_an_admin(db, user: User, action: str) -> None:
    """Call inside a transaction, before a change that takes `user` out of the enabled admins."""
    if user.role != "admin" or user.disabled:
        return
    admins = db.execute("SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0").fetchone()[0]
    if admins <= 1:
        raise UserError(f"{user.name!r} is the last admin and cannot be {action}; make another admin first")


def set_role(db, name: str, role: str) -> None:
    _check_role(role)
    with dbmod.transaction(db):
        user = get_user(db, name)
        if role != "admin":
            _keep_an_admin(db, user, "demoted")
        db.execute("UPDATE users SET role = ? WHERE id = ?", [role, user.id])


def set_password(db, name: str, password: str) -> None:
    _check_password(password)
    password_hash = hash_password(password)
    with dbmod.transaction(db):
        user = get_user(db, name)
        db.execute("UPDATE users SET password_hash = ? WHERE id = ?", [password_hash, user.id])
        _end_sessions(db, user.id)  # a reset signs them out everywhere


def disable_user(db, name: str) -> None:
    """The user can no longer sign in, and is signed out everywhere; their votes stay."""
    with dbmod.transaction(db):
        user = get_user(db, name)
        _keep_an_admin(db, user, "disabled")
        db.execute("UPDATE users SET disabled = 1 WHERE id = ?", [user.id])
        _end_sessions(db, user.id)


def enable_user(db, name: str) -> None:
    with dbmod.transaction(db):
        db.execute("UPDATE users SET disabled = 0 WHERE id = ?", [get_user(db, name).id])


def remove_user(db, name: str) -> None:
    """Delete the account and its sessions. Votes keep the name; ids are never reused (AUTOINCREMENT)."""
    with dbmod.transaction(db):
        user = get_user(db, name)
        _keep_an_admin(db, user, "removed")
        _end_sessions(db, user.id)
        db.execute("DELETE FROM users WHERE id = ?", [user.id])


# ---------------------------------------------------------------- sign-in

def authenticate(db, name: str, password: str, client: str = "") -> User | None:
    """The user, or None for a wrong name or password (or a disabled user), in the same time either way.

    Raises Throttled, without checking the password, while this name or this client (an IP address,
    or "" for none) is locked after too many failures. The attempt is counted as a failure before the
    password is checked, so parallel guesses cannot all slip in before the first one is recorded;
    a success clears the name's failures.
    """
    now = time.time()
    key = name[:4 * MAX_NAME_LENGTH]  # any name may be tried; a huge one is still one key
    with dbmod.transaction(db):
        wait = max(_wait_left(db, "name", key, now), _wait_left(db, "client", client, now) if client else 0.0)
        if wait > 0:
            raise Throttled(wait)
        db.execute("DELETE FROM sign_in_failures WHERE at <= ?", [now - FAILURE_WINDOW_S])
        db.execute("INSERT INTO sign_in_failures(name, client, at) VALUES (?, ?, ?)", [key, client, now])
    row = db.execute(f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE name = ?", [name]).fetchone()
    if row is None:
        hash_password(password)  # spend the same time, so timing does not reveal which names exist
        return None
    if not verify_password(password, row[4]) or row[3]:
        return None
    new_hash = hash_password(password) if _weaker_than_current(row[4]) else None
    with dbmod.transaction(db):
        db.execute("DELETE FROM sign_in_failures WHERE name = ?", [key])
        if new_hash:  # upgrade at sign-in, unless the password was reset meanwhile
            db.execute("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                       [new_hash, row[0], row[4]])
    return _user(row)


def _wait_left(db, column: str, value: str, now: float) -> float:
    """Seconds until `column` = `value` may try again (0: now)."""
    count, last = db.execute(f"SELECT count(*), max(at) FROM sign_in_failures WHERE {column} = ? AND at > ?",
                             [value, now - FAILURE_WINDOW_S]).fetchone()
    if count < FREE_FAILURES:
        return 0.0
    delay = min(FIRST_DELAY_S * 2 ** min(count - FREE_FAILURES, 16), MAX_DELAY_S)
    return max(0.0, last + delay - now)


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    return f"{seconds} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"


# ---------------------------------------------------------------- sessions

def create_session(db, user: User) -> str:
    token = secrets.token_urlsafe(32)
    now = time.time()
    db.execute("DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?",
               [now, now - SESSION_IDLE_MINUTES * 60])  # over either way; keep the table small
    db.execute("INSERT INTO sessions(token_hash, user_id, created_at, expires_at, last_seen_at) "
               "VALUES (?, ?, ?, ?, ?)", [_token_hash(token), user.id, now, now + SESSION_DAYS * 86400, now])
    return token


def session_user(db, token: str | None) -> User | None:
    """The session's user; None if the session is unknown, expired, idle too long, or its user is
    disabled or removed. Refreshes last_seen_at at most once per SEEN_EVERY_S."""
    if not token:
        return None
    now = time.time()
    token_hash = _token_hash(token)
    row = db.execute(
        f"SELECT {', '.join('u.' + c for c in _USER_COLUMNS.split(', '))}, s.last_seen_at "
        "FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.token_hash = ? AND s.expires_at > ? AND s.last_seen_at > ? AND u.disabled = 0",
        [token_hash, now, now - SESSION_IDLE_MINUTES * 60]).fetchone()
    if row is None:
        return None
    if now - row[4] >= SEEN_EVERY_S:
        db.execute("UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?", [now, token_hash])
    return _user(row)


def end_session(db, token: str | None) -> None:
    if token:
        db.execute("DELETE FROM sessions WHERE token_hash = ?", [_token_hash(token)])


def _end_sessions(db, user_id: int) -> None:
    db.execute("DELETE FROM sessions WHERE user_id = ?", [user_id])


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
