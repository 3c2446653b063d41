"""core/web.py without a server: where sign-in may send the browser, which hosts count as this server."""
from tunelab import web


def test_after_sign_in_the_browser_stays_on_this_server():
    for hostile in ("//evil.example", "/\t/evil.example", "/\\evil.example", "https://evil.example/", "/\n/evil",
                    "evil.example", "", None, "/ /evil.example"):
        assert web._safe_next(hostile) == "/", hostile
    assert web._safe_next("/runs?run=r2") == "/runs?run=r2"


def test_host_check_on_loopback_and_in_team_mode(monkeypatch):
    monkeypatch.delenv(web.ALLOWED_HOSTS_ENV, raising=False)
    local = web.HostGuard(app=None, bind_address=lambda: "127.0.0.1")
    assert local.allowed("127.0.0.1") and local.allowed("localhost") and local.allowed("::1")
    assert not local.allowed("evil.example")
    names = web._machine_names()
    lan = sorted(n for n in names if not web.is_loopback(n) and n[0].isdigit())
    if lan:  # on loopback, even this machine's own LAN address is not served
        assert not local.allowed(lan[0])
    team = web.HostGuard(app=None, bind_address=lambda: "0.0.0.0")
    assert all(team.allowed(n) for n in names)
    assert not team.allowed("evil.example")
    monkeypatch.setenv(web.ALLOWED_HOSTS_ENV, "tunelab.example.com, other.example")
    proxied = web.HostGuard(app=None, bind_address=lambda: "127.0.0.1")
    assert proxied.allowed("tunelab.example.com") and proxied.allowed("other.example")
    assert not proxied.allowed("evil.example")


def test_host_header_forms():
    assert web._host_of("Example.com:8501") == "example.com"
    assert web._host_of("[::1]:8501") == "::1"
    assert web._host_of("::1") == "::1"


def test_only_unrelayed_loopback_clients_are_local():
    here = {"host": "127.0.0.1:8501"}
    assert web.client_is_local(None, here)          # Streamlit reports loopback as None
    assert web.client_is_local("127.0.0.5", {"host": "localhost:8501"})
    assert not web.client_is_local("10.1.2.3", here)
    assert not web.client_is_local(None, {**here, "x-forwarded-for": "10.1.2.3"})
    assert not web.client_is_local("127.0.0.1", {**here, "forwarded": "for=10.1.2.3"})
    # An unknown peer (a unix socket behind a proxy) asking for a public name is not this machine's owner.
    assert not web.client_is_local(None, {"host": "tunelab.example.com"})
