"""Path views against a real normalising upstream: nginx (`merge_slashes on`, its default).

nginx decodes `%XX`, resolves dot segments and merges slashes before it picks a file, so each
attack below reaches its /admin/ content. The test first asks nginx directly (proof that the
attack is real), then through coxp: coxp must refuse it (`400 ambiguous-path`) with no CORS
header, and nginx's access log must show that nothing reached it from coxp.
"""
from __future__ import annotations

import pytest

from harness import Coxp, StaticNginx, config_text, exchange, request_bytes, send, start_coxp

ADMIN = "https://admin.example.test"
APP = "https://app.example.test"  # trusted with credentials on /api/*, never on /admin/*
EVIL = "https://evil.example"
ADMIN_SECRET = b"admin secret\n"

ROUTES = f"""
[[routes]]
name = "admin"
paths = ["/admin/*"]
[routes.cors]
allow_origins = ["{ADMIN}"]
allow_credentials = true
enforce = true

[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["{APP}"]
allow_credentials = true

[[routes]]
name = "public"
paths = ["/*"]
[routes.cors]
allow_origins = ["*"]
"""

ATTACKS = {
    "escaped-letter": ("/%61dmin/secret", EVIL),
    "double-slash": ("//admin/secret", EVIL),
    "escaped-slash": ("/admin%2fsecret", EVIL),
    "dot-dot-escaped-slash": ("/api/..%2fadmin/secret", EVIL),
    "escaped-dots": ("/public/%2e%2e/admin/secret", EVIL),
    # The review's credentialed read: /api/* trusts APP with credentials, /admin/* does not.
    "credentialed-read": ("/api/..%2fadmin/secret", APP),
}


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    root = tmp_path_factory.mktemp("nginx-root")
    for directory, content in (("admin", ADMIN_SECRET), ("public", b"public page\n"), ("api", b"api data\n")):
        (root / directory).mkdir()
        (root / directory / "secret").write_bytes(content)
    server = StaticNginx(root, tmp_path_factory.mktemp("nginx-work"), access_log=True)
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(nginx, tmp_path_factory):
    process = start_coxp(tmp_path_factory.mktemp("coxp-nginx"), config_text(nginx.url, extra=ROUTES))
    yield process
    process.stop()


def via_coxp(nginx: StaticNginx) -> list[str]:
    """The request lines nginx received from coxp (coxp adds X-Forwarded-For; direct requests have none)."""
    return [line for line, forwarded_for in nginx.requests() if forwarded_for != "-"]


def settle(proxy: Coxp, nginx: StaticNginx) -> None:
    """One ordinary request through coxp, waited for in nginx's log: what coxp forwarded before it is logged."""
    before = len(via_coxp(nginx))
    assert exchange(proxy, request_bytes("GET", "/public/secret")).body == b"public page\n"
    assert proxy.wait_for(lambda: len(via_coxp(nginx)) > before), "nginx never logged the settling request"


@pytest.mark.parametrize("path, origin", ATTACKS.values(), ids=ATTACKS.keys())
def test_nginx_serves_admin_content_for_the_attack_but_coxp_refuses_it(proxy, nginx, path, origin):
    direct = send(("127.0.0.1", nginx.port), request_bytes("GET", path, [("Origin", origin)]))
    assert (direct.status, direct.body) == (200, ADMIN_SECRET), "nginx should normalise this path to /admin/"

    settle(proxy, nginx)
    seen_before = via_coxp(nginx)
    mark = proxy.mark()
    response = exchange(proxy, request_bytes("GET", path, [("Origin", origin), ("Cookie", "session=s3cr3t")]))
    assert (response.status, response.body) == (400, b"400 ambiguous-path\n")
    assert not any(name.lower().startswith("access-control-") for name, _ in response.headers)
    assert proxy.wait_event("bad_request", start=mark)["reason"] == "ambiguous-path"
    settle(proxy, nginx)
    assert via_coxp(nginx) == seen_before + ["GET /public/secret HTTP/1.1"]


def test_admin_content_keeps_the_admin_policy_under_its_own_name(proxy, nginx):
    response = exchange(proxy, request_bytes("GET", "/admin/secret", [("Origin", ADMIN), ("Cookie", "session=1")]))
    assert (response.status, response.body) == (200, ADMIN_SECRET)
    assert (response.value("access-control-allow-origin"), response.value("access-control-allow-credentials")) == (ADMIN, "true")
    for origin in (EVIL, APP):  # enforce: refused by coxp, whatever the public or api routes allow
        assert exchange(proxy, request_bytes("GET", "/admin/secret", [("Origin", origin)])).status == 403


@pytest.mark.parametrize("path", ["/public//secret", "/public/./secret", "/public/%73ecret", "/admin//secret"])
def test_a_path_whose_views_agree_reaches_nginx_byte_for_byte(proxy, nginx, path):
    settle(proxy, nginx)
    before = via_coxp(nginx)
    response = exchange(proxy, request_bytes("GET", path, [("Origin", ADMIN)]))
    assert response.status == 200
    settle(proxy, nginx)
    assert via_coxp(nginx)[len(before)] == f"GET {path} HTTP/1.1"
