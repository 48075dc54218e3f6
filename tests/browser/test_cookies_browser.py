"""[routes.cookies] as Chromium judges it: a legacy session cookie made usable in cross-site
credentialed requests.

The page is https://app.example.test (site example.test); the API is https://api.other.test,
another site, served by coxp (TLS) in front of the recording API upstream, with CORS allowing
the page's origin and credentials. The upstream sets its session cookie the legacy way — no
SameSite (Chromium then treats it as Lax) and `Domain` naming the backend — in the response to a
credentialed cross-site `fetch`; the next credentialed `fetch` shows whether Chromium stored and
sent it. The twin differs only by the `[routes.cookies]` table.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from e2e_helpers import APP, diag, page_fetch, q

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

API_OTHER_SITE = "api.other.test"
LEGACY_COOKIE = "sid=s3cret; Path=/; HttpOnly; Domain=backend.internal"
# Partitioned (CHIPS): the cookie is kept for this top-level site only, so it works whether or
# not the browser blocks third-party cookies.
COOKIES = '[routes.cookies]\nsamesite = "none"\nsecure = true\ndomain = "strip"\npartitioned = true\n'


def api_route(app_origin: str, cookies: str) -> str:
    return "\n".join([
        "[[routes]]", 'name = "api"', f"hosts = {q([API_OTHER_SITE])}", "",
        "[routes.cors]", f"allow_origins = {q([app_origin])}", "allow_credentials = true", "", cookies,
    ])


def login_then_echo(page, proxy) -> tuple[dict, dict]:
    login = page_fetch(page, proxy.url(API_OTHER_SITE, "/login?h=" + quote(f"Set-Cookie:{LEGACY_COOKIE}")),
                       {"credentials": "include"})
    echo = page_fetch(page, proxy.url(API_OTHER_SITE, "/api/echo"), {"credentials": "include"})
    return login, echo


def test_the_edited_session_cookie_travels_in_cross_site_credentialed_requests(page, tls_pages, upstream, coxp):
    proxy = coxp(api_route(tls_pages.origin(APP), COOKIES), upstream=upstream.coxp_upstream, tls_on=True)
    page.goto(tls_pages.url(APP, "/"))
    login, echo = login_then_echo(page, proxy)
    assert login["ok"] and login["status"] == 200, diag(proxy, upstream, page, login)
    assert echo["ok"] and echo["status"] == 200, diag(proxy, upstream, page, echo)
    assert json.loads(echo["text"])["cookie"] == "sid=s3cret", diag(proxy, upstream, page, echo)
    [event] = proxy.wait_requests(path="/login")
    assert event["headers_set"].count("set-cookie") == 1, event


def test_twin_without_the_cookie_table_the_browser_drops_the_legacy_cookie(page, tls_pages, upstream, coxp):
    proxy = coxp(api_route(tls_pages.origin(APP), ""), upstream=upstream.coxp_upstream, tls_on=True)
    page.goto(tls_pages.url(APP, "/"))
    login, echo = login_then_echo(page, proxy)
    assert login["ok"] and echo["ok"], diag(proxy, upstream, page, echo)
    assert json.loads(echo["text"])["cookie"] is None, diag(proxy, upstream, page, echo)
