"""CORS through coxp, as Chromium enforces it (issue 4, scenarios 1-5 and 10).

Layout of every test: the page is a blank document served directly by the page server on
``http://app.example.test:<pages>`` (or ``evil.other.test`` for the "other origin" twins); the API
is ``http://api.example.test:<coxp>``, i.e. coxp in front of the recording API upstream.
Each positive test has a negative twin whose only difference is the coxp configuration.
"""

from __future__ import annotations

import json

import pytest

from e2e_helpers import API, APP, EVIL, diag, free_port, page_fetch, q

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


def api_route(app_origin: str, **cors) -> str:
    """One route for api.example.test with a CORS table built from ``cors`` (TOML literals)."""
    lines = [
        "[[routes]]",
        'name = "api"',
        f"hosts = {q([API])}",
        "",
        "[routes.cors]",
        'mode = "set"',
        f"allow_origins = {q([app_origin])}",
    ]
    for key, value in cors.items():
        lines.append(f"{key} = {value if isinstance(value, str) else json.dumps(value)}")
    return "\n".join(lines)


# --- 1. cross-origin fetch of JSON ---------------------------------------------------------

def test_1_allowed_origin_reads_json(page, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP)), upstream=upstream.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/data"))
    assert res["ok"] and res["status"] == 200, diag(proxy, upstream, page, res)
    assert json.loads(res["text"]) == {"hello": "world", "n": 42}
    assert upstream.seen("GET", "/api/data")


def test_1_twin_other_origin_gets_typeerror(page, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP)), upstream=upstream.coxp_upstream)
    page.goto(pages.url(EVIL, "/"))
    res = page_fetch(page, proxy.url(API, "/api/data"))
    assert not res["ok"] and res["error"] == "TypeError", diag(proxy, upstream, page, res)
    # CORS hides the answer; it does not stop the request (enforce is off).
    assert upstream.seen("GET", "/api/data"), diag(proxy, upstream)
    assert proxy.wait_requests(path="/api/data", cors="denied", reason="origin-not-allowed"), diag(proxy)


def test_1_twin_without_coxp_the_upstream_alone_is_unreadable(page, pages, upstream):
    """The upstream sends no CORS headers itself: what the page can read comes from coxp."""
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, upstream.server.url(API, "/api/data"))
    assert not res["ok"] and res["error"] == "TypeError", res


# --- 2. credentials: "include" with a cookie --------------------------------------------------

def _set_api_cookie(context):
    context.add_cookies([{"name": "sid", "value": "s3cret", "domain": API, "path": "/"}])


def test_2_credentials_with_exact_origin(page, context, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP), allow_credentials=True), upstream=upstream.coxp_upstream)
    _set_api_cookie(context)
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/echo"), {"credentials": "include"})
    assert res["ok"] and res["status"] == 200, diag(proxy, upstream, page, res)
    assert "sid=s3cret" in (json.loads(res["text"])["cookie"] or "")


def test_2_twin_credentials_off_fails(page, context, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP), allow_credentials=False), upstream=upstream.coxp_upstream)
    _set_api_cookie(context)
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/echo"), {"credentials": "include"})
    assert not res["ok"] and res["error"] == "TypeError", diag(proxy, upstream, page, res)
    # The cookie did travel (the request is simple); only the answer is withheld from the page.
    seen = upstream.seen("GET", "/api/echo")
    assert seen and "sid=s3cret" in seen[0].headers.get("cookie", ""), diag(proxy, upstream)
    # Same config, same page, without credentials: readable, so credentials are the difference.
    res = page_fetch(page, proxy.url(API, "/api/echo"), {"credentials": "omit"})
    assert res["ok"] and res["status"] == 200, diag(proxy, upstream, page, res)


# --- 3. preflighted PUT answered by coxp ------------------------------------------------------

PUT_INIT = {
    "method": "PUT",
    "headers": {"Content-Type": "application/json", "X-Custom": "yes"},
    "body": json.dumps({"item": 7, "name": "widget"}),
}


def test_3_preflight_answered_by_coxp_then_put_succeeds(page, pages, upstream, coxp):
    proxy = coxp(
        api_route(pages.origin(APP), allow_methods=["PUT"], allow_headers=["Content-Type", "X-Custom"]),
        upstream=upstream.coxp_upstream,
    )
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/echo"), PUT_INIT)
    assert res["ok"] and res["status"] == 200, diag(proxy, upstream, page, res)
    echoed = json.loads(res["text"])
    assert echoed["method"] == "PUT"
    assert echoed["headers"].get("x-custom") == "yes"
    assert json.loads(echoed["body"]) == {"item": 7, "name": "widget"}
    # The browser did send a preflight (coxp logged it) but the upstream never saw an OPTIONS.
    assert upstream.methods() == ["PUT"], diag(proxy, upstream)
    assert proxy.wait_requests(method="OPTIONS", cors="preflight-allowed"), diag(proxy, upstream)


def test_3_twin_header_not_allowed_fails(page, pages, upstream, coxp):
    proxy = coxp(
        api_route(pages.origin(APP), allow_methods=["PUT"], allow_headers=["Content-Type"]),
        upstream=upstream.coxp_upstream,
    )
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/echo"), PUT_INIT)
    assert not res["ok"] and res["error"] == "TypeError", diag(proxy, upstream, page, res)
    # The preflight was denied by coxp: the browser never sent the PUT, the upstream saw nothing.
    assert upstream.methods() == [], diag(proxy, upstream)
    assert proxy.wait_requests(method="OPTIONS", cors="preflight-denied", reason="header-not-allowed"), diag(proxy)


def test_3_twin_method_not_allowed_fails(page, pages, upstream, coxp):
    proxy = coxp(
        api_route(pages.origin(APP), allow_headers=["Content-Type", "X-Custom"]),
        upstream=upstream.coxp_upstream,
    )
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/echo"), PUT_INIT)
    assert not res["ok"] and res["error"] == "TypeError", diag(proxy, upstream, page, res)
    assert upstream.methods() == [], diag(proxy, upstream)
    assert proxy.wait_requests(method="OPTIONS", cors="preflight-denied", reason="method-not-allowed"), diag(proxy)


# --- 4. Authorization with allow_headers = ["*"] ----------------------------------------------

AUTH_INIT = {"headers": {"Authorization": "Bearer t0k3n"}}


def test_4_authorization_with_star_allow_headers(page, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP), allow_headers=["*"]), upstream=upstream.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/echo"), AUTH_INIT)
    assert res["ok"] and res["status"] == 200, diag(proxy, upstream, page, res)
    assert json.loads(res["text"])["headers"].get("authorization") == "Bearer t0k3n"
    assert upstream.methods() == ["GET"], diag(proxy, upstream)


def test_4_twin_authorization_not_allowed_fails(page, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP), allow_headers=["X-Other"]), upstream=upstream.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/echo"), AUTH_INIT)
    assert not res["ok"] and res["error"] == "TypeError", diag(proxy, upstream, page, res)
    assert upstream.methods() == [], diag(proxy, upstream)
    assert proxy.wait_requests(method="OPTIONS", cors="preflight-denied", reason="header-not-allowed"), diag(proxy)


# --- 5. expose_headers ------------------------------------------------------------------------

def test_5_exposed_header_is_readable(page, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP), expose_headers=["X-Request-Id"]), upstream=upstream.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/reqid"))
    assert res["ok"] and res["status"] == 200, diag(proxy, upstream, page, res)
    assert res["headers"].get("x-request-id") == "req-4711", diag(proxy, upstream, page, res)


def test_5_twin_unexposed_header_is_hidden(page, pages, upstream, coxp):
    proxy = coxp(api_route(pages.origin(APP)), upstream=upstream.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/reqid"))
    assert res["ok"] and res["status"] == 200, diag(proxy, upstream, page, res)
    # The upstream did send it; the browser hides it from script.
    assert "x-request-id" not in res["headers"], diag(proxy, upstream, page, res)


# --- 10. upstream down: a readable 502 -------------------------------------------------------

def _dead_upstream() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_10_upstream_down_gives_readable_502(page, pages, coxp):
    proxy = coxp(api_route(pages.origin(APP)), upstream=_dead_upstream())
    page.goto(pages.url(APP, "/"))
    res = page_fetch(page, proxy.url(API, "/api/data"))
    assert res["ok"], diag(proxy, None, page, res)
    assert res["status"] == 502, diag(proxy, None, page, res)
    assert res["text"].strip(), "the 502 should carry a short text body"


def test_10_twin_502_for_other_origin_is_a_typeerror(page, pages, coxp):
    proxy = coxp(api_route(pages.origin(APP)), upstream=_dead_upstream())
    page.goto(pages.url(EVIL, "/"))
    res = page_fetch(page, proxy.url(API, "/api/data"))
    assert not res["ok"] and res["error"] == "TypeError", diag(proxy, None, page, res)
