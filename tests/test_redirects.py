"""`rewrite_location`: URLs pointing at the upstream are pointed at the request's own origin."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from harness import config_text, run_cli, unique
from proxy.model import Upstream
from proxy.redirects import rewrite_refresh, rewrite_url

PLAIN = Upstream("http://backend.internal:8080", "http", "backend.internal", 8080, "backend.internal:8080")
TLS = Upstream("https://backend.internal", "https", "backend.internal", 443, "backend.internal")
V6 = Upstream("http://[::1]:3000", "http", "::1", 3000, "[::1]:3000")
OWN = "https://app.example.test:8443"


@pytest.mark.parametrize("upstream, url, rewritten", [
    (PLAIN, "http://backend.internal:8080/login?next=/a#top", "https://app.example.test:8443/login?next=/a#top"),
    (PLAIN, "http://backend.internal:8080", "https://app.example.test:8443"),
    (PLAIN, "HTTP://Backend.Internal:8080/x", "https://app.example.test:8443/x"),  # case-insensitive
    (PLAIN, "//backend.internal:8080/x", "//app.example.test:8443/x"),  # a network-path reference stays one
    (TLS, "https://backend.internal:443/x", "https://app.example.test:8443/x"),  # default port written out
    (TLS, "https://backend.internal/x", "https://app.example.test:8443/x"),
    (TLS, "https://backend.internal:/x", "https://app.example.test:8443/x"),  # empty port = default
    (V6, "http://[::1]:3000/x", "https://app.example.test:8443/x"),
])
def test_urls_at_the_upstream_are_rewritten(upstream, url, rewritten):
    assert rewrite_url(url, upstream, OWN) == rewritten


@pytest.mark.parametrize("upstream, url", [
    (PLAIN, "/relative/path"),
    (PLAIN, "other/relative"),
    (PLAIN, "http://backend.internal/x"),  # port 80, not 8080
    (PLAIN, "https://backend.internal:8080/x"),  # another scheme
    (PLAIN, "http://backend.internal.evil.test:8080/x"),
    (PLAIN, "http://user@backend.internal:8080/x"),  # userinfo: not rewritten
    (PLAIN, "http://backend.internal:8080@evil.test/x"),
    (TLS, "http://backend.internal/x"),
    (TLS, "//backend.internal:80/x"),
    (PLAIN, "mailto:someone@backend.internal"),
])
def test_other_urls_are_left_alone(upstream, url):
    assert rewrite_url(url, upstream, OWN) is None


@pytest.mark.parametrize("value, rewritten", [
    ("0; url=http://backend.internal:8080/next", "0; url=https://app.example.test:8443/next"),
    ("5;URL='http://backend.internal:8080/q'", "5;URL='https://app.example.test:8443/q'"),
    ('3, url = "//backend.internal:8080/r" ', '3, url = "//app.example.test:8443/r" '),
    ("1.5 http://backend.internal:8080/bare", "1.5 https://app.example.test:8443/bare"),
])
def test_the_url_of_a_refresh_is_rewritten(value, rewritten):
    assert rewrite_refresh(value, PLAIN, OWN) == rewritten


@pytest.mark.parametrize("value", ["5", "0; url=/local", "soon; url=http://backend.internal:8080/"])
def test_a_refresh_without_an_upstream_url_is_left_alone(value):
    assert rewrite_refresh(value, PLAIN, OWN) is None


# --- through the proxy ------------------------------------------------------------------------


def redirect_to(url: str, header: str = "Location", status: int = 302) -> str:
    return f"/r?status={status}&h={quote(header + ':' + url, safe=':/')}&{unique()}"


def test_a_redirect_to_the_upstream_points_at_the_host_the_client_called(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config_text("{upstream}"))
    for header in ("Location", "Content-Location"):
        response = proxy.request("GET", redirect_to(f"{query_upstream.url}/next?a=1", header), host="proxy.test:8080")
        assert (response.status, response.value(header)) == (302, "http://proxy.test:8080/next?a=1")
        assert response.event["headers_set"] == [header.lower()]
    response = proxy.request("GET", redirect_to(f"0; url={query_upstream.url}/later", "Refresh", 200), host="proxy.test")
    assert response.value("refresh") == "0; url=http://proxy.test/later"


def test_other_redirects_are_passed_as_sent(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config_text("{upstream}"))
    for url in ("https://elsewhere.test/x", "/relative", f"https://127.0.0.1:{query_upstream.port}/other-scheme"):
        response = proxy.request("GET", redirect_to(url), host="proxy.test")
        assert response.value("location") == url
        assert response.event["headers_set"] == []


def test_a_trusted_load_balancer_defines_the_origin_redirects_point_at(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config_text("{upstream}", {"trusted_proxies": ["127.0.0.1"]}))
    response = proxy.request("GET", redirect_to(f"{query_upstream.url}/next"), host="internal:8080",
                             headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.example.test")])
    assert response.value("location") == "https://app.example.test/next"


def test_an_untrusted_peer_cannot_choose_where_redirects_point(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config_text("{upstream}"))
    response = proxy.request("GET", redirect_to(f"{query_upstream.url}/next"), host="proxy.test",
                             headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.test")])
    assert response.value("location") == "http://proxy.test/next"


def test_with_preserve_host_redirects_to_the_upstream_are_still_rewritten(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config_text("{upstream}", {"preserve_host": True}))
    response = proxy.request("GET", redirect_to(f"{query_upstream.url}/next"), host="proxy.test:81")
    assert response.value("location") == "http://proxy.test:81/next"


def test_rewrite_location_false_passes_redirects_as_sent(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config_text("{upstream}", {"rewrite_location": False}))
    url = f"{query_upstream.url}/next"
    assert proxy.request("GET", redirect_to(url), host="proxy.test").value("location") == url


def test_each_route_compares_with_its_own_upstream(coxp_pool, query_upstream):
    # Route "other" sends to the same server under another name (localhost): a URL naming
    # 127.0.0.1 is not its upstream's, while the default route's upstream is 127.0.0.1.
    other = f"http://localhost:{query_upstream.port}"
    proxy = coxp_pool.get(config_text("{upstream}", extra=f'[[routes]]\nname = "other"\npaths = ["/r"]\nupstream = "{other}"\n'))
    by_number = f"{query_upstream.url}/n"
    response = proxy.request("GET", redirect_to(by_number), host="proxy.test")
    assert (response.event["route"], response.value("location")) == ("other", by_number)
    response = proxy.request("GET", redirect_to(f"{other}/n"), host="proxy.test")
    assert response.value("location") == "http://proxy.test/n"


def test_explain_shows_the_rewrite(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:3000"\n')
    result = run_cli("explain", "-c", str(path), "--upstream-header", "Location: http://127.0.0.1:3000/login?next=/a",
                     "--upstream-header", "Refresh: 5; url=http://elsewhere.test/", "https://app.example.test/x")
    assert result.returncode == 0, result.stderr
    assert "  Location: https://app.example.test/login?next=/a" in result.stdout.splitlines()
    assert "  Refresh: 5; url=http://elsewhere.test/" in result.stdout.splitlines()


# --- properties -------------------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SCHEMES = st.sampled_from(["http", "https", "HTTP", "Https", "ftp", None])  # None: scheme-relative
HOSTS = st.sampled_from(["backend.internal", "BACKEND.internal", "backend.internal.", "other.test", "[::1]", "127.0.0.1"])
PORTS = st.sampled_from([None, "", "80", "443", "8080", "08080"])
RESTS = st.sampled_from(["", "/", "/a/b?c=1#f", "?q", "#frag", "/x y"])


@given(SCHEMES, HOSTS, PORTS, RESTS, st.sampled_from([PLAIN, TLS]))
def test_a_url_is_rewritten_exactly_when_it_names_the_upstream(scheme, host, port, rest, upstream):
    url = ("" if scheme is None else f"{scheme}:") + "//" + host + ("" if port is None else f":{port}") + rest
    effective_scheme = (scheme or upstream.scheme).lower()
    default = {"http": 80, "https": 443}.get(effective_scheme)
    same = (effective_scheme == upstream.scheme and host.lower() == upstream.host
            and (int(port) if port else default) == upstream.port)
    rewritten = rewrite_url(url, upstream, OWN)
    if not same:
        assert rewritten is None
    elif scheme is None:
        assert rewritten == "//app.example.test:8443" + rest
    else:
        assert rewritten == OWN + rest
