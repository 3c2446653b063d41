"""Users, roles, password hashing and sign-in sessions.

Passwords are stored only as scrypt hashes with a per-user random salt. A sign-in creates a
session whose token lives in the browser's cookie; the DB keeps only the token's SHA-256.
With no users at all, the app runs as a local single-user admin.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from core.errors import UserError

ROLES = ("admin", "engineer", "annotator", "viewer")

# scrypt cost: n=2**14, r=8 takes ~50 ms and 16 MiB, OWASP's floor for interactive sign-in.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_DAYS = 14

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


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    def can_open(self, page: str) -> bool:
        return self.role in PAGE_ROLES.get(page, ())


LOCAL_ADMIN = User(id=0, name="local", role="admin")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                               dklen=len(_unb64(digest)))
    return hmac.compare_digest(candidate, _unb64(digest))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise UserError("password: must be at least 8 characters")


def add_user(db, name: str, role: str, password: str) -> User:
    name = name.strip()
    if not name:
        raise UserError("user name: must not be empty")
    _check_role(role)
    _check_password(password)
    if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
        raise UserError(f"user {name!r} already exists")
    cur = db.execute("INSERT INTO users(name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                     [name, role, hash_password(password), time.time()])
    return User(cur.lastrowid, name, role)


def list_users(db) -> list[User]:
    return [User(*r) for r in db.execute("SELECT id, name, role FROM users ORDER BY name").fetchall()]


def has_users(db) -> bool:
    return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def get_user(db, name: str) -> User:
    row = db.execute("SELECT id, name, role FROM users WHERE name = ?", [name]).fetchone()
    if not row:
        raise UserError(f"no user named {name!r}")
    return User(*row)


def set_role(db, name: str, role: str) -> None:
    _check_role(role)
    user = get_user(db, name)
    if user.role == "admin" and role != "admin" and _admin_count(db) == 1:
        raise UserError(f"{name!r} is the last admin; make another admin first")
    db.execute("UPDATE users SET role = ? WHERE id = ?", [role, user.id])


def set_password(db, name: str, password: str) -> None:
    _check_password(password)
    user = get_user(db, name)
    db.execute("UPDATE users SET password_hash = ? WHERE id = ?", [hash_password(password), user.id])
    db.execute("DELETE FROM sessions WHERE user_id = ?", [user.id])  # a reset signs them out everywhere


def _admin_count(db) -> int:
    return db.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()[0]


def authenticate(db, name: str, password: str) -> User | None:
    row = db.execute("SELECT id, name, role, password_hash FROM users WHERE name = ?", [name]).fetchone()
    if row is None:
        hash_password(password)  # spend the same time, so timing does not reveal which names exist
        return None
    return User(row[0], row[1], row[2]) if verify_password(password, row[3]) else None


def create_session(db, user: User) -> str:
    token = secrets.token_urlsafe(32)
    now = time.time()
    db.execute("INSERT INTO sessions(token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
               [_token_hash(token), user.id, now, now + SESSION_DAYS * 86400])
    return token


def session_user(db, token: str | None) -> User | None:
    if not token:
        return None
    row = db.execute(
        "SELECT u.id, u.name, u.role FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.token_hash = ? AND s.expires_at > ?", [_token_hash(token), time.time()]).fetchone()
    return User(*row) if row else None


def end_session(db, token: str | None) -> None:
    if token:
        db.execute("DELETE FROM sessions WHERE token_hash = ?", [_token_hash(token)])


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
