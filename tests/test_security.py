"""Attacks on the gap between how coxp reads a request and how an upstream does, end to end.

Every case writes raw bytes to a running coxp in front of a recording upstream, and asserts the
status, that the upstream saw nothing where it must see nothing, and that coxp keeps serving.
The upstream is `query_upstream`, shared by the session: each request carries a `unique()`
marker in its query (which routing ignores) so that the upstream's record can be searched.
"""
from __future__ import annotations

import pytest

from harness import Coxp, exchange, request_bytes, toml_table, unique, websocket_echo, websocket_handshake

ADMIN_ORIGIN = "https://admin.example.test"
EVIL_ORIGIN = "https://evil.example"

ROUTES = f"""
[[routes]]
name = "admin-host"
hosts = ["admin.example.test"]
[routes.cors]
allow_origins = ["{ADMIN_ORIGIN}"]
enforce = true

[[routes]]
name = "admin"
paths = ["/admin/*"]
[routes.cors]
allow_origins = ["{ADMIN_ORIGIN}"]
allow_credentials = true
enforce = true

[[routes]]
name = "public"
paths = ["/*"]
[routes.cors]
allow_origins = ["*"]
"""


def config(**proxy) -> str:
    """The routes above behind `{upstream}` (the pool fills it in), JSON log, a free port."""
    settings = {"listen": "127.0.0.1:0", "upstream": "{upstream}", **proxy}
    return toml_table("proxy", settings) + toml_table("log", {"format": "json"}) + ROUTES


@pytest.fixture
def proxy(coxp_pool) -> Coxp:
    return coxp_pool.get(config())


def refused(proxy: Coxp, upstream, raw: bytes, marker: str, status: int, reason: str) -> None:
    """`raw` gets `status` with `reason` in its one-line body, a `bad_request` event, the
    connection closed; the upstream never sees it; and coxp serves the next request."""
    mark = proxy.mark()
    response = exchange(proxy, raw)
    assert (response.status, response.body) == (status, f"{status} {reason}\n".encode())
    assert response.value("connection") == "close"
    event = proxy.wait_event("bad_request", start=mark, reason=reason)
    assert event["status"] == status
    assert proxy.events_named("request", start=mark, where=lambda e: marker in (e.get("path") or "")) == []
    still_serving(proxy, upstream)
    assert upstream.saw(marker) == []


def still_serving(proxy: Coxp, upstream) -> None:
    marker = unique()
    response = exchange(proxy, request_bytes("GET", f"/public/ok?{marker}"))
    assert response.status == 200
    assert len(upstream.saw(marker)) == 1


# --- item 1: routes cannot be borrowed through path tricks -------------------------------------

# Each spells /admin/x so that a decoding, normalising upstream (nginx, Apache, Tomcat...) serves
# admin content, while the raw path matches only the public route's "/*".
BORROWING = {
    "escaped-letter": "/%61dmin/x",
    "double-slash": "//admin/x",
    "escaped-slash": "/admin%2fx",
    "escaped-slash-upper": "/admin%2Fx",
    "dot-dot-escaped-slash": "/api/..%2fadmin/x",
    "escaped-dots": "/api/%2e%2e/admin/x",
    "plain-dot-dot": "/api/../admin/x",
    "dot-segment": "/./admin/x",
    "backslash": "/api/..\\admin/x",
    "params-before-dot-dot": "/api/..;/admin/x",
    "params-in-segment": "/admin;x=1/x",
}


@pytest.mark.parametrize("path", BORROWING.values(), ids=BORROWING.keys())
def test_a_path_whose_views_select_different_routes_is_400_and_never_forwarded(proxy, query_upstream, path):
    marker = unique()
    raw = request_bytes("GET", f"{path}?{marker}", [("Origin", EVIL_ORIGIN)])
    refused(proxy, query_upstream, raw, marker, 400, "ambiguous-path")


def test_a_credentialed_read_of_admin_content_through_a_public_spelling_is_refused(proxy, query_upstream):
    marker = unique()
    raw = request_bytes("GET", f"/api/..%2fadmin/secret?{marker}", [("Origin", EVIL_ORIGIN), ("Cookie", "session=1")])
    refused(proxy, query_upstream, raw, marker, 400, "ambiguous-path")


def test_the_admin_route_still_applies_to_its_own_spelling(proxy, query_upstream):
    marker = unique()
    response = exchange(proxy, request_bytes("GET", f"/admin/x?{marker}", [("Origin", EVIL_ORIGIN)]))
    assert response.status == 403  # enforce: the admin route's policy, not the public one
    assert query_upstream.saw(marker) == []
    response = exchange(proxy, request_bytes("GET", f"/admin/x?{marker}", [("Origin", ADMIN_ORIGIN)]))
    assert (response.status, response.value("access-control-allow-origin")) == (200, ADMIN_ORIGIN)
    assert response.value("access-control-allow-credentials") == "true"


@pytest.mark.parametrize("path", ["/public/%7euser", "/public//a/./b", "/public/a;v=1", "/admin/%7e/x", "/admin//x",
                                  "/%2e%2e/%2e%2e/etc", "/a%25zz"])
def test_a_path_whose_views_agree_is_forwarded_byte_for_byte(proxy, query_upstream, path):
    marker = unique()
    response = exchange(proxy, request_bytes("GET", f"{path}?{marker}", [("Origin", ADMIN_ORIGIN)]))
    assert response.status == 200
    [seen] = query_upstream.saw(marker)
    assert seen.raw_path == f"{path}?{marker}"


@pytest.mark.parametrize("path", ["/a%zz", "/admin/%2", "/%", "/a%%61"])
def test_a_malformed_escape_in_the_path_is_400(proxy, query_upstream, path):
    marker = unique()
    refused(proxy, query_upstream, request_bytes("GET", f"{path}?{marker}"), marker, 400, "bad-escape")


def test_a_malformed_escape_in_the_query_is_forwarded(proxy, query_upstream):
    marker = unique()
    response = exchange(proxy, request_bytes("GET", f"/public/q?x=%zz&{marker}"))
    assert response.status == 200
    assert query_upstream.saw(marker)[0].raw_path == f"/public/q?x=%zz&{marker}"


# --- item 2: hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["admin.example.test", "admin.example.test.", "ADMIN.example.test.:8080"])
def test_a_trailing_dot_does_not_escape_a_host_routed_enforce_route(proxy, query_upstream, host):
    marker = unique()
    response = exchange(proxy, request_bytes("GET", f"/public/x?{marker}", [("Origin", EVIL_ORIGIN)], host=host))
    assert response.status == 403
    assert query_upstream.saw(marker) == []
    still_serving(proxy, query_upstream)


INVALID_HOSTS = ["x@a.test", "a.test,b.test", "a.test, evil.example", "a b", "", "a.test:", "a.test:8o",
                 "[::1", "a/b", "a%2eb", "caf\xe9.test", "a.test\\b"]


@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_a_host_that_is_not_host_port_is_400(proxy, query_upstream, host):
    marker = unique()
    refused(proxy, query_upstream, request_bytes("GET", f"/public/x?{marker}", host=host), marker, 400, "invalid-host")


# --- item 3: framing with no leniency ----------------------------------------------------------

FRAMING = {
    "cl-nbsp-after": ([("Content-Length", "5\xa0")], b"hello", "malformed-content-length"),
    "cl-nbsp-before": ([("Content-Length", "\xa05")], b"hello", "malformed-content-length"),
    "cl-nel-after": ([("Content-Length", "5\x85")], b"hello", "malformed-content-length"),
    "cl-empty": ([("Content-Length", "")], b"hello", "malformed-content-length"),
    "te-nbsp-chunked": ([("Transfer-Encoding", "\xa0chunked")], b"0\r\n\r\n", "transfer-encoding-not-chunked"),
    "te-comma": ([("Transfer-Encoding", ",")], b"0\r\n\r\n", "transfer-encoding-without-coding"),
    "te-empty": ([("Transfer-Encoding", "")], b"0\r\n\r\n", "transfer-encoding-without-coding"),
    "te-comma-with-cl": ([("Transfer-Encoding", ","), ("Content-Length", "5")], b"hello", "transfer-encoding-without-coding"),
    "te-empty-with-cl": ([("Content-Length", "5"), ("Transfer-Encoding", "")], b"hello", "transfer-encoding-without-coding"),
}


@pytest.mark.parametrize("headers, body, reason", FRAMING.values(), ids=FRAMING.keys())
def test_framing_values_are_not_read_leniently(proxy, query_upstream, headers, body, reason):
    marker = unique()
    refused(proxy, query_upstream, request_bytes("POST", f"/public/f?{marker}", headers, body), marker, 400, reason)


def test_empty_transfer_encoding_list_elements_are_ignored(proxy, query_upstream):
    marker = unique()
    raw = request_bytes("POST", f"/public/f?{marker}", [("Transfer-Encoding", ", chunked")], b"5\r\nhello\r\n0\r\n\r\n")
    assert exchange(proxy, raw).status == 200
    [seen] = query_upstream.saw(marker)
    assert seen.body == b"hello"


@pytest.mark.parametrize("chunk", [b"5;a\x00\r\nhello\r\n0\r\n\r\n", b"5;a=\"\x00\"\r\nhello\r\n0\r\n\r\n",
                                   b"5;\x01\r\nhello\r\n0\r\n\r\n", b"5 \r\nhello\r\n0\r\n\r\n"])
def test_chunk_extensions_with_control_characters_are_400(proxy, query_upstream, chunk):
    marker = unique()
    response = exchange(proxy, request_bytes("POST", f"/public/c?{marker}", [("Transfer-Encoding", "chunked")], chunk))
    assert (response.status, response.body) == (400, b"bad-chunk-framing\n")
    # The head may have left already (bodies are streamed), never a whole request: the upstream
    # handler reads the body to its end before it answers, and it never got one.
    assert all(seen.body == b"" for seen in query_upstream.saw(marker))
    still_serving(proxy, query_upstream)


# --- item 4: header hygiene --------------------------------------------------------------------

FROM_PROXIES = [("Forwarded", "for=1.2.3.4;host=evil"), ("X-Real-IP", "1.2.3.4"), ("X-Forwarded-Port", "1"),
                ("X-Forwarded-Prefix", "/evil"), ("X-Original-URL", "/admin/x"), ("X-Rewrite-URL", "/admin/x")]
UNDERSCORED = [("X_Forwarded_Host", "evil.example"), ("Api_Key", "k"), ("_", "x")]


def forwarded_headers(proxy: Coxp, upstream, headers) -> list[tuple[str, str]]:
    marker = unique()
    response = exchange(proxy, request_bytes("GET", f"/public/h?{marker}", [*headers, ("X-Kept", "1")]))
    assert response.status == 200
    [seen] = upstream.saw(marker)
    assert seen.value("x-kept") == "1"
    return seen.headers


def names(headers) -> set[str]:
    return {n.lower() for n, _ in headers}


def test_headers_only_a_proxy_may_set_are_removed_from_an_untrusted_peer(proxy, query_upstream):
    seen = forwarded_headers(proxy, query_upstream, FROM_PROXIES)
    assert names(seen).isdisjoint(names(FROM_PROXIES))


def test_header_names_with_underscores_are_dropped(proxy, query_upstream):
    seen = forwarded_headers(proxy, query_upstream, UNDERSCORED)
    assert not any("_" in n for n, _ in seen)
    assert dict((n.lower(), v) for n, v in seen)["x-forwarded-host"] == "example.test"


def test_underscores_allowed_by_config_are_forwarded(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config(allow_underscores_in_headers=True))
    seen = forwarded_headers(proxy, query_upstream, UNDERSCORED)
    assert [h for h in seen if "_" in h[0]] == UNDERSCORED


def test_from_a_trusted_peer_the_proxy_headers_are_kept(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config(trusted_proxies=["127.0.0.1"]))
    seen = forwarded_headers(proxy, query_upstream, FROM_PROXIES + UNDERSCORED)
    assert [h for h in seen if h[0].lower() in names(FROM_PROXIES)] == FROM_PROXIES
    assert not any("_" in n for n, _ in seen)  # the "_" rule does not depend on trust


def test_with_forwarded_headers_off_no_forwarding_header_is_added_or_removed(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config(forwarded_headers=False))
    x_forwarded = [("X-Forwarded-For", "9.9.9.9"), ("X-Forwarded-Proto", "gopher"), ("X-Forwarded-Host", "h.test")]
    seen = forwarded_headers(proxy, query_upstream, FROM_PROXIES + x_forwarded + UNDERSCORED)
    assert [h for h in seen if h[0].lower() in names(FROM_PROXIES + x_forwarded)] == FROM_PROXIES + x_forwarded
    assert not any("_" in n for n, _ in seen)  # independent of forwarded_headers


def test_a_preflight_is_routed_on_both_views_too(proxy, query_upstream):
    marker = unique()
    raw = request_bytes("OPTIONS", f"/api/..%2fadmin/x?{marker}",
                        [("Origin", EVIL_ORIGIN), ("Access-Control-Request-Method", "PUT")])
    refused(proxy, query_upstream, raw, marker, 400, "ambiguous-path")


def test_a_websocket_handshake_gets_the_same_header_hygiene(proxy, query_upstream):
    marker = unique()
    status, _, sock = websocket_handshake(proxy.port, f"/public/ws?{marker}", FROM_PROXIES + UNDERSCORED,
                                          host="example.test")
    with sock:
        assert status == 101
        assert websocket_echo(sock, "hi") == "echo hi"
    [seen] = query_upstream.saw(marker)
    assert names(seen.headers).isdisjoint(names(FROM_PROXIES + UNDERSCORED))
    assert seen.value("upgrade") == "websocket"


def test_a_websocket_handshake_on_an_ambiguous_path_is_refused(proxy, query_upstream):
    marker = unique()
    raw = request_bytes("GET", f"//admin/ws?{marker}", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                                         ("Sec-WebSocket-Version", "13"), ("Origin", EVIL_ORIGIN)])
    refused(proxy, query_upstream, raw, marker, 400, "ambiguous-path")
