"""COOP, COEP and CORP through coxp, as Chromium enforces them (issue 4, scenarios 6-9).

Documents that need a policy are served *through* coxp (route for app.example.test in front of
the page server); the page server itself sends no policy header unless a test asks it to with
``?h=Name:value`` (to show that coxp removes or overrides the upstream's value).
Plain-http ``*.example.test`` / ``*.other.test`` origins are secure contexts in this browser
(``--unsafely-treat-insecure-origin-as-secure``); scenario 6 also runs over coxp's own TLS.
"""

from __future__ import annotations

import pytest

from e2e_helpers import API, APP, EVIL, IMG_OTHER_SITE, diag, isolation_state, load_img, q

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


def page_route(pages_upstream: str, coop: str | None = None, coep: str | None = None, mode: str = "set") -> str:
    """The route serving documents of app.example.test through coxp, with optional COOP/COEP."""
    lines = [
        "[[routes]]",
        'name = "app"',
        f"hosts = {q([APP])}",
        'paths = ["/page*"]',
        f"upstream = {q(pages_upstream)}",
    ]
    if coop or mode != "set":
        lines += ["", "[routes.coop]", f"mode = {q(mode)}"] + ([f"policy = {q(coop)}"] if coop else [])
    if coep or mode != "set":
        lines += ["", "[routes.coep]", f"mode = {q(mode)}"] + ([f"policy = {q(coep)}"] if coep else [])
    return "\n".join(lines)


def image_route(name: str, prefix: str, corp: str | None, mode: str = "set") -> str:
    lines = ["[[routes]]", f"name = {q(name)}", f"paths = {q([prefix + '*'])}"]
    if corp or mode != "set":
        lines += ["", "[routes.corp]", f"mode = {q(mode)}"] + ([f"policy = {q(corp)}"] if corp else [])
    return "\n".join(lines)


# --- 6. cross-origin isolation ---------------------------------------------------------------

@pytest.mark.parametrize("tls_on", [False, True], ids=["http", "coxp-tls"])
@pytest.mark.parametrize("coep", ["require-corp", "credentialless"])
def test_6_coop_coep_make_the_page_cross_origin_isolated(page, pages, coxp, tls_on, coep):
    proxy = coxp(page_route(pages.origin_for_coxp, coop="same-origin", coep=coep), tls_on=tls_on)
    resp = page.goto(proxy.url(APP, "/page"))
    assert resp is not None and resp.status == 200, diag(proxy)
    assert resp.headers.get("cross-origin-opener-policy") == "same-origin", resp.headers
    assert resp.headers.get("cross-origin-embedder-policy") == coep, resp.headers
    state = isolation_state(page)
    assert state == {"isSecureContext": True, "crossOriginIsolated": True, "sharedArrayBuffer": "function"}, (
        state,
        diag(proxy, page=page),
    )


@pytest.mark.parametrize("tls_on", [False, True], ids=["http", "coxp-tls"])
def test_6_twin_without_policies_not_isolated(page, pages, coxp, tls_on):
    proxy = coxp(page_route(pages.origin_for_coxp), tls_on=tls_on)
    resp = page.goto(proxy.url(APP, "/page"))
    assert resp is not None and resp.status == 200, diag(proxy)
    state = isolation_state(page)
    assert state == {"isSecureContext": True, "crossOriginIsolated": False, "sharedArrayBuffer": "undefined"}, state


@pytest.mark.parametrize("tls_on", [False, True], ids=["http", "coxp-tls"])
def test_6_twin_coxp_removes_upstream_policies_not_isolated(page, pages, coxp, tls_on):
    """The upstream sends COOP+COEP itself; ``mode = "remove"`` strips them, so no isolation."""
    proxy = coxp(page_route(pages.origin_for_coxp, mode="remove"), tls_on=tls_on)
    upstream_sends = "?h=Cross-Origin-Opener-Policy:same-origin&h=Cross-Origin-Embedder-Policy:require-corp"
    resp = page.goto(proxy.url(APP, "/page" + upstream_sends))
    assert resp is not None and resp.status == 200, diag(proxy)
    assert "cross-origin-opener-policy" not in resp.headers, resp.headers
    assert "cross-origin-embedder-policy" not in resp.headers, resp.headers
    assert isolation_state(page)["crossOriginIsolated"] is False


def test_6_twin_coop_alone_is_not_enough(page, pages, coxp):
    proxy = coxp(page_route(pages.origin_for_coxp, coop="same-origin"))
    page.goto(proxy.url(APP, "/page"))
    assert isolation_state(page)["crossOriginIsolated"] is False


# --- 7. CORP on an <img> from another origin / another site -----------------------------------

CORP_ROUTES = "\n\n".join(
    [
        image_route("corp-same-origin", "/so/", "same-origin"),
        image_route("corp-same-site", "/ss/", "same-site"),
        image_route("corp-cross-origin", "/co/", "cross-origin"),
        image_route("no-corp", "/none/", None),
    ]
)

# (image host, path prefix) -> loads? The page is http://app.example.test:<pages>.
# api.example.test is the same site (example.test) but another origin; img.other.test is another site.
CORP_CASES = [
    (API, "/so/", False),
    (API, "/ss/", True),
    (API, "/co/", True),
    (API, "/none/", True),
    (IMG_OTHER_SITE, "/so/", False),
    (IMG_OTHER_SITE, "/ss/", False),
    (IMG_OTHER_SITE, "/co/", True),
    (IMG_OTHER_SITE, "/none/", True),
]


@pytest.mark.parametrize(
    "host,prefix,loads",
    CORP_CASES,
    ids=[f"{'same-site' if h == API else 'cross-site'}-{p.strip('/')}" for h, p, _ in CORP_CASES],
)
def test_7_corp_on_img(page, pages, upstream, coxp, host, prefix, loads):
    proxy = coxp(CORP_ROUTES, upstream=upstream.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    res = load_img(page, proxy.url(host, prefix + "pic.png"))
    # The request reached the upstream either way: CORP blocks the response in the browser.
    assert upstream.seen("GET", prefix + "pic.png"), diag(proxy, upstream, page, res)
    if loads:
        assert res == {"loaded": True, "width": 7, "height": 5}, diag(proxy, upstream, page, res)
    else:
        assert res["loaded"] is False and res["why"] == "error", diag(proxy, upstream, page, res)


def test_7_corp_same_origin_loads_for_the_same_origin(page, pages, upstream, coxp):
    """``same-origin`` is not simply "block": the page's own origin may embed the image."""
    proxy = coxp(page_route(pages.origin_for_coxp) + "\n\n" + CORP_ROUTES, upstream=upstream.coxp_upstream)
    page.goto(proxy.url(APP, "/page"))
    res = load_img(page, proxy.url(APP, "/so/pic.png"))
    assert res == {"loaded": True, "width": 7, "height": 5}, diag(proxy, upstream, page, res)


def test_7_twin_coxp_overrides_upstream_corp(page, pages, upstream, coxp):
    """The upstream says same-origin; coxp (``set``) replaces it with cross-origin: the image loads."""
    proxy = coxp(image_route("corp-co", "/co/", "cross-origin"), upstream=upstream.coxp_upstream)
    page.goto(pages.url(APP, "/"))
    direct = load_img(page, upstream.server.url(IMG_OTHER_SITE, "/co/pic.png?h=Cross-Origin-Resource-Policy:same-origin"))
    assert direct["loaded"] is False, direct
    res = load_img(page, proxy.url(IMG_OTHER_SITE, "/co/pic.png?h=Cross-Origin-Resource-Policy:same-origin"))
    assert res == {"loaded": True, "width": 7, "height": 5}, diag(proxy, upstream, page, res)


# --- 8. a COEP page embedding a cross-origin image --------------------------------------------

COEP_IMAGE_ROUTES = "\n\n".join(
    [
        image_route("plain", "/plain/", None),
        image_route("corp", "/corp/", "cross-origin"),
        image_route("stripped", "/stripped/", None, mode="remove"),
    ]
)


def _coep_page(page, pages, upstream, coxp, coep: str):
    proxy = coxp(
        page_route(pages.origin_for_coxp, coop="same-origin", coep=coep) + "\n\n" + COEP_IMAGE_ROUTES,
        upstream=upstream.coxp_upstream,
    )
    page.goto(proxy.url(APP, "/page"))
    assert isolation_state(page)["crossOriginIsolated"] is True, diag(proxy, page=page)
    return proxy


def test_8_coep_page_loads_image_when_coxp_adds_corp(page, pages, upstream, coxp):
    proxy = _coep_page(page, pages, upstream, coxp, "require-corp")
    res = load_img(page, proxy.url(IMG_OTHER_SITE, "/corp/pic.png"))
    assert res == {"loaded": True, "width": 7, "height": 5}, diag(proxy, upstream, page, res)


def test_8_twin_coep_page_blocks_image_without_corp(page, pages, upstream, coxp):
    proxy = _coep_page(page, pages, upstream, coxp, "require-corp")
    res = load_img(page, proxy.url(IMG_OTHER_SITE, "/plain/pic.png"))
    assert res["loaded"] is False and res["why"] == "error", diag(proxy, upstream, page, res)
    assert upstream.seen("GET", "/plain/pic.png"), diag(proxy, upstream)


def test_8_twin_coep_page_blocks_image_when_coxp_removes_corp(page, pages, upstream, coxp):
    """The upstream sends CORP cross-origin itself; ``mode = "remove"`` strips it: blocked."""
    proxy = _coep_page(page, pages, upstream, coxp, "require-corp")
    res = load_img(page, proxy.url(IMG_OTHER_SITE, "/stripped/pic.png?h=Cross-Origin-Resource-Policy:cross-origin"))
    assert res["loaded"] is False and res["why"] == "error", diag(proxy, upstream, page, res)


def test_8_credentialless_page_loads_image_without_corp(page, pages, upstream, coxp):
    """With COEP credentialless, a no-cors image needs no CORP (it is fetched without cookies)."""
    proxy = _coep_page(page, pages, upstream, coxp, "credentialless")
    res = load_img(page, proxy.url(IMG_OTHER_SITE, "/plain/pic.png"))
    assert res == {"loaded": True, "width": 7, "height": 5}, diag(proxy, upstream, page, res)


# --- 9. COOP and window.opener ----------------------------------------------------------------

OPEN_JS = """
(url) => {
  window.__popup = window.open(url, "_blank");
  return window.__popup !== null;
}
"""


@pytest.mark.parametrize("coop,severed", [("same-origin", True), ("unsafe-none", False)])
def test_9_coop_and_cross_origin_opener(page, context, pages, coxp, coop, severed):
    proxy = coxp(page_route(pages.origin_for_coxp, coop=coop))
    # The opener is another origin and another site: http://evil.other.test:<pages>.
    page.goto(pages.url(EVIL, "/opener"))
    with context.expect_page() as info:
        assert page.evaluate(OPEN_JS, proxy.url(APP, "/page-popup")) is True
    popup = info.value
    popup.wait_for_load_state("load")
    assert popup.url == proxy.url(APP, "/page-popup")
    assert popup.evaluate("window.opener === null") is severed, diag(proxy, page=popup)
    # From the opener's side a severed browsing context looks closed.
    page.wait_for_function("(severed) => window.__popup.closed === severed", arg=severed, timeout=5000)
