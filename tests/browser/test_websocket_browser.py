"""A WebSocket from the page through coxp to an echo upstream (issue 4, scenario 11).

CORS headers do not apply to WebSocket upgrades, but ``enforce`` does: the negative twin is
an enforcing route whose origins do not include the page, so coxp refuses the upgrade and the
echo server never sees a connection.
"""

from __future__ import annotations

import pytest

from e2e_helpers import API, APP, diag, q, ws_roundtrip

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


def ws_route(origin: str, enforce: bool = False) -> str:
    return "\n".join(
        [
            "[[routes]]",
            'name = "ws"',
            f"hosts = {q([API])}",
            'paths = ["/ws"]',
            "",
            "[routes.cors]",
            f"allow_origins = {q([origin])}",
            f"enforce = {'true' if enforce else 'false'}",
        ]
    )


def ws_url(proxy, path: str = "/ws") -> str:
    return proxy.url(API, path).replace("http", "ws", 1)  # http->ws, https->wss


@pytest.mark.parametrize("tls_on", [False, True], ids=["ws", "wss-coxp-tls"])
def test_11_websocket_echo_through_coxp(page, pages, ws_echo, coxp, tls_on):
    proxy = coxp(ws_route(pages.origin(APP)), upstream=ws_echo.coxp_upstream, tls_on=tls_on)
    page.goto(pages.url(APP, "/"))
    res = ws_roundtrip(page, ws_url(proxy))
    assert res.get("opened") and res.get("reply") == "echo:ping-42", diag(proxy, page=page, result=res)
    assert ws_echo.messages == ["ping-42"]
    assert ws_echo.connections and ws_echo.connections[0].get("origin") == pages.origin(APP)


def test_11_twin_enforce_refuses_other_origin(page, pages, ws_echo, coxp):
    proxy = coxp(ws_route("http://allowed.example.test", enforce=True), upstream=ws_echo.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = ws_roundtrip(page, ws_url(proxy))
    assert not res.get("opened"), diag(proxy, page=page, result=res)
    assert ws_echo.connections == [], diag(proxy)


def test_11_twin_same_config_allowed_origin_connects(page, pages, ws_echo, coxp):
    """The enforcing route of the twin, with the page's origin listed: the upgrade goes through."""
    proxy = coxp(ws_route(pages.origin(APP), enforce=True), upstream=ws_echo.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = ws_roundtrip(page, ws_url(proxy))
    assert res.get("opened") and res.get("reply") == "echo:ping-42", diag(proxy, page=page, result=res)
