"""The HTTP side of the app: which hosts it answers, and sign-in with a server-set cookie.

`streamlit_app.py` hands these to `st.App`, so `streamlit run streamlit_app.py` serves them in front of
Streamlit's own routes:
- `HostGuard` refuses any request whose Host, or whose Origin when a browser sends one, names a host this
  server does not serve. That stops DNS rebinding (a hostile page whose name resolves to 127.0.0.1) and
  cross-site websockets, which would otherwise reach even a loopback-only app.
- `/tunelab/signin` is a plain HTML form. On a right password it sets the session cookie itself:
  HttpOnly (no page script can read it), SameSite=Strict, Secure behind TLS. The password never travels
  through Streamlit's websocket, and a page that is not signed in is sent here before Streamlit loads.
- `/tunelab/signout` ends the session and clears the cookie.
Everything else (who may open which page, re-checking on every rerun) is in pages/_ui.py.
"""
from __future__ import annotations

import html
import ipaddress
import logging
import os
import socket
import sqlite3
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, quote, urlsplit

from tunelab import auth, db as dbmod, workspace
from tunelab.errors import UserError

log = logging.getLogger("tunelab.web")

COOKIE = "tunelab_session"
SIGNIN_PATH = "/tunelab/signin"
SIGNOUT_PATH = "/tunelab/signout"
# Extra names the server answers to, e.g. the reverse proxy's public name: TUNELAB_ALLOWED_HOSTS=a.example,b
ALLOWED_HOSTS_ENV = "TUNELAB_ALLOWED_HOSTS"
MAX_FORM_BYTES = 8192          # a sign-in form is a few hundred bytes
# Paths that are Streamlit's own machinery rather than pages a person opens.
_NOT_PAGES = ("/_stcore/", "/static/", "/media/", "/component/", "/tunelab/", "/favicon", "/robots")


# ---------------------------------------------------------------- hosts

def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(value: str) -> str:
    """'example.com:8501' -> 'example.com'; '[::1]:8501' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _machine_names() -> set[str]:
    """This machine's own names and interface addresses: the hosts a LAN client may type."""
    import psutil
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                names.add(a.address.split("%")[0].lower())
    return names


class HostGuard:
    """ASGI middleware: answer only requests addressed to this server.

    `bind_address` is a callable returning the address the server listens on (Streamlit's
    server.address), read on first use. On loopback only loopback names count; bound to another
    address (serving a team), the machine's own names and addresses count too, and always the names
    in TUNELAB_ALLOWED_HOSTS.
    """

    def __init__(self, app, bind_address=lambda: "127.0.0.1"):
        self.app = app
        self.bind_address = bind_address
        self._names: set[str] | None = None
        self._names_at = 0.0

    def allowed(self, host: str) -> bool:
        if is_loopback(host):
            return True
        now = time.monotonic()
        if self._names is None or (host not in self._names and now - self._names_at > 5):
            extra = {h.strip().lower() for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()}
            bind = (self.bind_address() or "").lower()
            team = not is_loopback(bind) and not bind.startswith("unix://")
            self._names = extra | (_machine_names() | {bind} if team else set())
            self._names_at = now  # interfaces come and go: look again on a miss, at most every 5 s
        return host in self._names

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = _host_of(headers.get("host", ""))
        origin = headers.get("origin")
        origin_host = _host_of(urlsplit(origin).netloc) if origin and origin != "null" else None
        reason = None
        if not self.allowed(host):
            reason = f"host {host!r} is not served here"
        elif origin == "null" or (origin_host is not None and not self.allowed(origin_host)):
            reason = f"origin {origin!r} is not served here"
        if reason is None:
            return await self.app(scope, receive, send)
        log.warning("refused %s %s: %s", scope["type"], scope.get("path"), reason)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the handshake gets 403
            return
        await _respond(send, 403, b"Forbidden: this server does not answer to that name.\n", "text/plain")


async def _respond(send, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]] = ()):
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", f"{content_type}; charset=utf-8".encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- sign-in

def client_is_local(peer: str | None, headers) -> bool:
    """A client on this machine, not relayed: local-admin mode answers only these. Streamlit reports a
    loopback peer as None, but also a peer it does not know (a unix socket behind a proxy), so the request
    must also be addressed to a loopback name."""
    relayed = any(h in headers for h in ("forwarded", "x-forwarded-for", "x-real-ip"))
    addressed_here = is_loopback(_host_of(headers.get("host", "")))
    return not relayed and addressed_here and (peer is None or is_loopback(peer))


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site. Browsers drop tabs and
    newlines from URLs and read a backslash as a slash, so '/<tab>/evil.example' is '//evil.example'."""
    if (not value or not value.startswith("/") or any(c in value for c in "\\\t\r\n ")
            or value.startswith("//") or urlsplit(value).netloc):
        return "/"
    return value


def _session_cookie(token: str, secure: bool, max_age: int) -> bytes:
    c = SimpleCookie()
    c[COOKIE] = token
    c[COOKIE].update({"path": "/", "httponly": True, "samesite": "Strict", "max-age": max_age})
    if secure:
        c[COOKIE]["secure"] = True
    return c.output(header="").strip().encode()


def _is_https(request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunelab · sign in</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f6f7f9; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: .75rem;
        box-shadow: 0 1px 4px rgba(0,0,0,.12); }}
h1 {{ margin: 0 0 1.25rem; font-size: 1.6rem; }}
label {{ display: block; margin: .8rem 0 .3rem; font-size: .9rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .55rem; font-size: 1rem; border: 1px solid #bbb;
         border-radius: .4rem; }}
button {{ margin-top: 1.25rem; width: 100%; padding: .6rem; font-size: 1rem; border: 0; border-radius: .4rem;
          background: #ff4b4b; color: #fff; cursor: pointer; }}
.msg {{ margin: .5rem 0 0; padding: .6rem; border-radius: .4rem; background: #fdecea; color: #8a1c1c; }}
.info {{ background: #e8f1fb; color: #174a7c; }}
</style></head>
<body><main>
<h1>tunelab</h1>
{message}
<form method="post" action="{action}">
<label for="name">User name</label>
<input id="name" name="name" autocomplete="username" value="{name}" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form>
</main></body></html>
"""
_PAGE_HEADERS = [(b"content-security-policy",
                  b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
                 (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin")]


def _page(next_path: str, name: str = "", message: str = "", info: bool = False) -> bytes:
    box = f'<p class="msg{" info" if info else ""}" role="alert">{html.escape(message)}</p>' if message else ""
    return _PAGE.format(message=box, name=html.escape(name), next=html.escape(next_path),
                        action=html.escape(SIGNIN_PATH)).encode()


def _open_db():
    return dbmod.connect(workspace.current().db_path)


def _try_sign_in(name: str, password: str, client: str) -> tuple[str | None, int, str]:
    """(session token, 303, '') on success, else (None, HTTP status, message). Runs in a worker thread:
    scrypt is slow on purpose, and the event loop must keep serving everyone else meanwhile."""
    try:
        conn = _open_db()
    except UserError as exc:  # e.g. a damaged database: say so, without a traceback
        return None, 503, str(exc)
    try:
        user = auth.authenticate(conn, name, password, client=client)
        if user is None:
            return None, 401, "Wrong user name or password."
        return auth.create_session(conn, user), 303, ""
    except auth.Throttled as exc:
        return None, 429, str(exc)
    finally:
        conn.close()


async def signin(request):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    next_path = _safe_next(request.query_params.get("next"))
    if request.method != "POST":
        message = "You were signed out." if request.query_params.get("out") else ""
        # A stale cookie from an ended session goes away here.
        headers = {"set-cookie": _session_cookie("", _is_https(request), 0).decode()} if request.cookies.get(COOKIE) else {}
        resp = Response(_page(next_path, message=message, info=True), media_type="text/html", headers=headers)
        resp.headers.update({k.decode(): v.decode() for k, v in _PAGE_HEADERS})
        return resp
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return Response("Form too large.\n", status_code=413, media_type="text/plain")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    name, password = form.get("name", "").strip(), form.get("password", "")
    next_path = _safe_next(form.get("next"))
    client = request.client.host if request.client else "unknown"
    token, status, message = await run_in_threadpool(_try_sign_in, name, password, client)
    if token is None:
        resp = Response(_page(next_path, name=name, message=message), status_code=status, media_type="text/html")
        resp.headers.update({k.decode(): v.decode() for k, v in _PAGE_HEADERS})
        return resp
    resp = Response(status_code=303, headers={"location": next_path, "cache-control": "no-store"})
    resp.headers.append("set-cookie", _session_cookie(token, _is_https(request), auth.SESSION_DAYS * 86400).decode())
    return resp


async def signout(request):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    token = request.cookies.get(COOKIE)
    if token:
        def end():
            conn = _open_db()
            try:
                auth.end_session(conn, token)
            finally:
                conn.close()
        await run_in_threadpool(end)
    resp = Response(status_code=303, headers={"location": f"{SIGNIN_PATH}?out=1", "cache-control": "no-store"})
    resp.headers.append("set-cookie", _session_cookie("", _is_https(request), 0).decode())
    return resp


class SignInFirst:
    """ASGI middleware: a page opened without a valid session goes to the sign-in form first.

    Only for HTML page loads, and only once users exist (with none, the app is the local admin's, which
    pages/_ui.py allows for this machine's own clients alone). Pages check the session again on every
    rerun; this only saves a visitor from loading the app to be told to sign in.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET" or scope["path"].startswith(_NOT_PAGES):
            return await self.app(scope, receive, send)
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        request = Request(scope)
        if "text/html" not in request.headers.get("accept", ""):
            return await self.app(scope, receive, send)
        token = request.cookies.get(COOKIE)

        def signed_in_or_open() -> bool:
            try:
                conn = _open_db()
            except (UserError, sqlite3.DatabaseError):
                return True  # the app itself tells the visitor, without a traceback
            try:
                return not auth.has_users(conn) or auth.session_user(conn, token) is not None
            finally:
                conn.close()

        if await run_in_threadpool(signed_in_or_open):
            return await self.app(scope, receive, send)
        target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        location = f"{SIGNIN_PATH}?next={quote(target, safe='/')}".encode()
        await _respond(send, 303, b"", "text/plain", [(b"location", location)])


def routes():
    from starlette.routing import Route
    return [Route(SIGNIN_PATH, signin, methods=["GET", "POST"]), Route(SIGNOUT_PATH, signout, methods=["GET", "POST"])]


def middleware(bind_address):
    """Outermost first: refuse foreign hosts before anything else looks at the request."""
    from starlette.middleware import Middleware
    return [Middleware(HostGuard, bind_address=bind_address), Middleware(SignInFirst)]
