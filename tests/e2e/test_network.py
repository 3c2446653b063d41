"""The app as a network server: who can reach it, which hosts it answers, how the session cookie is set,
and sign-in throttling, all against a real `streamlit run streamlit_app.py`.

The clients on another address run in a network namespace joined to this one by a veth pair that the
tests create and remove (root only, as CI runs): a real non-loopback client, never the machine's LAN.
"""
from __future__ import annotations

import base64
import os
import random
import socket
import subprocess
import urllib.error
import urllib.request

import pytest

from tunelab import auth
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, App, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.process]
PASSWORD = "correct horse battery"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def netns():
    """A network namespace with its own address, joined to this one by a veth pair: (name, host ip, ns ip)."""
    if os.geteuid() != 0:
        pytest.fail("these tests create a network namespace and need root (CI runs as root)")
    tag = f"{os.getpid() % 10000}{random.randint(0, 99)}"
    name, host_if, ns_if = f"tl{tag}", f"tlh{tag}", f"tln{tag}"
    net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    host_ip, ns_ip = f"{net}.1", f"{net}.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/24", "dev", ns_if)
        _ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _from_ns(ns: str, url: str) -> str:
    """An HTTP GET from inside the namespace: the status code, or 'refused'."""
    out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          url], capture_output=True, text=True, timeout=30)
    return out.stdout if out.returncode == 0 else "refused"


@pytest.fixture
def server(tmp_path, request):
    """Start an App with the given kwargs (the test's `server_args` marker), stopped afterwards."""
    started = []

    def start(**kwargs) -> App:
        home = tmp_path / f"home{len(started)}"
        home.mkdir()
        started.append(App(home, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.mark.timeout(120)
def test_readme_command_listens_on_loopback_only(server, netns):
    ns, host_ip, _ = netns
    app = server(address=None)  # no --server.address: what `streamlit run streamlit_app.py` does
    assert urllib.request.urlopen(f"{app.url}/_stcore/health", timeout=5).read() == b"ok"
    assert _from_ns(ns, f"http://{host_ip}:{app.port}/_stcore/health") == "refused"


@pytest.mark.timeout(240)
def test_team_setting_gives_a_remote_client_no_local_admin(server, netns, browser, tmp_path):
    ns, host_ip, _ = netns
    app = server(address="0.0.0.0")  # the one setting that serves a team (SECURITY.md)
    remote_url = f"http://{host_ip}:{app.port}"
    assert _from_ns(ns, f"{remote_url}/_stcore/health") == "200"

    # The same browser binary, started inside the namespace: its connection comes from ns_ip.
    wrapper = tmp_path / "chromium-in-ns"
    wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} \"$@\"\n")
    wrapper.chmod(0o755)
    remote = browser.browser_type.launch(executable_path=str(wrapper), headless=True, args=CHROMIUM_ARGS)
    try:
        page = remote.new_page()
        page.goto(remote_url)
        page.get_by_text("Ask the owner").wait_for(timeout=60_000)
        assert page.get_by_text("local admin").count() == 0
        assert page.locator('[data-testid="stSidebarNav"]').count() == 0
        page.goto(f"{remote_url}/admin")
        page.get_by_text("Ask the owner").wait_for(timeout=60_000)
        assert page.get_by_role("heading", name="Admin").count() == 0
    finally:
        remote.close()
    # On the machine itself, the same server still gives the owner the local-admin mode.
    page = browser.new_page()
    page.goto(app.url)
    page.get_by_text("you are the local admin").wait_for(timeout=60_000)
    page.close()


def _status(url: str, headers: dict) -> int:
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def _websocket_handshake(port: int, host: str, origin: str) -> str:
    """The status line a websocket upgrade gets, sent by hand so that Host and Origin can be anything."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Protocol: streamlit\r\n\r\n").encode())
        return s.recv(4096).decode("latin-1").split("\r\n", 1)[0]


@pytest.mark.timeout(120)
def test_foreign_host_and_origin_are_refused(app):
    here = f"127.0.0.1:{app.port}"
    assert _status(f"{app.url}/", {}) == 200
    # DNS rebinding: a hostile name that resolves to this machine.
    assert _status(f"{app.url}/", {"Host": f"evil.example:{app.port}"}) == 403
    assert _status(f"{app.url}/_stcore/health", {"Host": "rebind.attacker.test"}) == 403
    assert " 101 " in _websocket_handshake(app.port, here, f"http://{here}")
    assert " 101 " not in _websocket_handshake(app.port, f"evil.example:{app.port}", f"http://evil.example:{app.port}")
    # Cross-site websocket from a page on another site, Host left as this server's.
    assert " 101 " not in _websocket_handshake(app.port, here, "http://evil.example")
    assert " 101 " not in _websocket_handshake(app.port, here, "null")


@pytest.mark.timeout(180)
def test_session_cookie_is_httponly_and_set_by_the_server(app, page):
    auth.add_user(app.db(), "root", "admin", PASSWORD)
    sign_in(page, app, "root", PASSWORD)
    cookie = next(c for c in page.context.cookies() if c["name"] == "tunelab_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert "tunelab_session" not in page.evaluate("document.cookie")  # no page script can read it
    # The cookie carries the session to another URL; signing out ends it on the server.
    page.goto(f"{app.url}/runs")
    page.get_by_role("heading", name="Runs").wait_for()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_text("You were signed out").wait_for()
    conn = app.db()
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    page.goto(f"{app.url}/runs")
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.get_by_role("heading", name="Runs").count() == 0


@pytest.mark.timeout(240)
def test_sign_in_is_throttled_and_the_page_says_so(app, page):
    auth.add_user(app.db(), "root", "admin", PASSWORD)
    page.goto(app.url)
    for _ in range(6):
        page.get_by_label("User name").fill("root")
        page.get_by_label("Password", exact=True).fill("wrong password")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("alert").wait_for()
    assert "try again" in page.get_by_role("alert").inner_text().lower()
    # While locked, even the right password does not get in.
    page.get_by_label("User name").fill("root")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").wait_for()
    assert "try again" in page.get_by_role("alert").inner_text().lower()
    assert page.get_by_text("Signed in as").count() == 0
    assert not any(c["name"] == "tunelab_session" for c in page.context.cookies())


@pytest.mark.timeout(120)
def test_signed_out_visitor_sees_no_traceback(app, page):
    """A damaged database: the visitor gets one line, the details stay in the server's log."""
    conn = app.db()
    auth.add_user(conn, "root", "admin", PASSWORD)
    conn.close()  # else its close, whenever it came, would checkpoint the WAL over the damage below
    page.goto(app.url)
    page.get_by_role("button", name="Sign in").wait_for()
    (app.home / "tunelab.db").write_bytes(b"this is not a database" * 100)
    for f in ("tunelab.db-wal", "tunelab.db-shm"):
        (app.home / f).unlink(missing_ok=True)
    page.goto(app.url)
    page.get_by_text("Something went wrong").wait_for(timeout=60_000)
    body = page.inner_text("body")
    assert "Traceback" not in body and 'File "' not in body and "sqlite3" not in body
