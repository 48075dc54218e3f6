"""proxy.routing: host and path matchers, and first-match-wins route selection."""
from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import load_config_text
from proxy.http1 import BadRequest
from proxy.paths import normalised_path
from proxy.routing import Router, compile_host_patterns, compile_path_globs, host_without_port

CONFIG = textwrap.dedent("""
    [proxy]
    upstream = "http://127.0.0.1:3000"

    [[routes]]
    name = "api-write"
    hosts = ["api.example.test", "*.api.example.test"]
    paths = ["/api/*"]
    methods = ["POST", "put", "PATCH"]

    [[routes]]
    name = "api"
    hosts = ["api.example.test", "*.api.example.test"]
    paths = ["/api/*", "/health"]

    [[routes]]
    name = "files"
    paths = ["/files/*/raw", "/download/*.zip", "/static/*"]

    [[routes]]
    name = "loopback"
    hosts = ["127.0.0.1", "[::1]", "localhost"]

    [[routes]]
    name = "exact-root"
    paths = ["/"]
""")


@pytest.fixture(scope="module")
def router():
    return Router(load_config_text(CONFIG))


ROUTING = [
    # host, path, method, expected route
    ("api.example.test", "/api/users", "POST", "api-write"),
    ("api.example.test", "/api/users", "PUT", "api-write"),  # "put" was upper-cased in the config
    ("api.example.test", "/api/users", "GET", "api"),  # first route's methods do not match
    ("api.example.test", "/api/users", "patch", "api"),  # methods are case-sensitive
    ("API.Example.Test:8443", "/api/", "GET", "api"),  # port stripped, case-insensitive; /api/* matches /api/
    ("eu.api.example.test", "/health", "GET", "api"),
    ("a.b.api.example.test", "/api/x", "DELETE", "api"),  # any depth
    ("example.test", "/api/x", "GET", "default"),
    ("api.example.test.evil", "/api/x", "GET", "default"),
    ("xapi.example.test", "/api/x", "GET", "default"),  # not a subdomain
    ("api.example.test", "/api", "GET", "default"),  # /api/* needs the slash
    ("api.example.test", "/API/x", "GET", "default"),  # paths are case-sensitive
    ("api.example.test", "/health/", "GET", "default"),  # exact
    ("api.example.test", "/api%2Fx", "GET", "default"),  # never decoded
    ("any.test", "/files/a/b/raw", "GET", "files"),  # "*" spans "/"
    ("any.test", "/files//raw", "GET", "files"),
    ("any.test", "/files/a/raw/more", "GET", "default"),
    ("any.test", "/download/v1.2/app.zip", "GET", "files"),
    ("any.test", "/download/app.zip.sig", "GET", "default"),
    ("any.test", "/static/", "HEAD", "files"),
    ("127.0.0.1:8080", "/x", "GET", "loopback"),
    ("[::1]:8080", "/x", "GET", "loopback"),
    ("[::1]", "/x", "GET", "loopback"),
    ("LOCALHOST", "/x", "GET", "loopback"),
    ("any.test", "/", "GET", "exact-root"),
    (None, "/", "GET", "exact-root"),  # no Host: routes with hosts cannot match
    (None, "/x", "GET", "default"),
    ("", "/api/x", "GET", "default"),
]


@pytest.mark.parametrize("host,path,method,expected", ROUTING)
def test_router_picks_the_first_matching_route(router, host, path, method, expected):
    assert router.match(host, path, method).name == expected


def test_unmatched_requests_get_the_default_route_object():
    config = load_config_text(CONFIG)
    assert Router(config).match("nowhere.test", "/nothing", "GET") is config.default_route


def test_route_without_criteria_matches_everything_and_hides_later_routes():
    config = load_config_text(textwrap.dedent("""
        [proxy]
        upstream = "http://127.0.0.1:3000"
        [[routes]]
        name = "all"
        [[routes]]
        name = "never"
        paths = ["/x"]
    """))
    router = Router(config)
    assert {router.match(h, p, m).name for h, p, m in [("a.test", "/x", "GET"), (None, "*", "OPTIONS")]} == {"all"}


@pytest.mark.parametrize("value,expected", [
    ("example.test", "example.test"),
    ("example.test:80", "example.test"),
    ("[::1]:8080", "::1"),
    ("[::1]", "::1"),
    ("", ""),
    (None, ""),
    # One trailing dot is the same fully qualified name; two are not.
    ("example.test.", "example.test"),
    ("example.test.:8080", "example.test"),
    ("example.test..", "example.test."),
])
def test_host_without_port(value, expected):
    assert host_without_port(value) == expected


@pytest.mark.parametrize("patterns,host,expected", [
    (["a.test"], "a.test", True),
    (["a.test"], "A.TEST", True),
    (["a.test"], "b.a.test", False),
    (["*.a.test"], "a.test", False),
    (["*.a.test"], "b.a.test", True),
    (["*.a.test"], "c.b.a.test", True),
    (["*.a.test"], "ba.test", False),
    (["*.a.test", "x.test"], "x.test", True),
    ([], "a.test", False),
])
def test_host_patterns(patterns, host, expected):
    assert compile_host_patterns(patterns)(host) is expected


@pytest.mark.parametrize("globs,path,expected", [
    (["/api/*"], "/api/", True),
    (["/api/*"], "/api", False),
    (["/api/*"], "/api/a/b?c", True),  # callers strip the query; the glob does not care
    (["/health"], "/health", True),
    (["/health"], "/health/", False),
    (["/*"], "/", True),
    (["/a/*/c"], "/a/b/c", True),
    (["/a/*/c"], "/a/c", False),
    (["/a/*/c"], "/a//c", True),
    (["/a*b*c"], "/aXbYc", True),
    (["/a*b*c"], "/acb", False),
    (["/v1.0/*"], "/v1x0/a", False),  # "." is literal, not a regex
    (["/(x)/*"], "/(x)/a", True),
    (["/a/*", "/b", "/c/*/d"], "/c/1/d", True),
    (["/a/*", "/b", "/c/*/d"], "/b", True),
    ([], "/", False),
])
def test_path_globs(globs, path, expected):
    assert compile_path_globs(globs)(path) is expected


GLOB_ALPHABET = st.sampled_from(list("/*ab.?()[]\\^$+|{}%\n\x00é"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(GLOB_ALPHABET, max_size=12).map(lambda chars: "/" + "".join(chars)), max_size=5),
       st.text(max_size=30))
def test_random_globs_and_paths_never_raise(globs, path):
    result = compile_path_globs(globs)(path)
    assert isinstance(result, bool)
    if path in globs:
        assert result


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=5), st.text(max_size=20))
def test_random_host_patterns_and_hosts_never_raise(patterns, host):
    assert isinstance(compile_host_patterns(patterns)(host), bool)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=20)), st.text(max_size=20), st.text(max_size=8))
def test_router_never_raises(host, path, method):
    router = Router(load_config_text(CONFIG))
    assert router.match(host, path, method) is not None


# --- the two path views ---------------------------------------------------------------------------

@pytest.mark.parametrize("host,path,method,expected", [
    ("api.example.test", "/api/a%2Fb", "GET", "api"),  # both views under /api/*
    ("api.example.test", "/api//x/../y", "GET", "api"),
    ("any.test", "/static/%7e", "GET", "files"),
    ("any.test", "/x/%2e%2e/y", "GET", "default"),
    ("api.example.test.", "/api/x", "GET", "api"),  # the trailing dot is ignored
    ("api.example.test", "/api/../api/x", "POST", "api-write"),
])
def test_views_that_agree_select_their_route(router, host, path, method, expected):
    assert router.match(host, path, method, normalised_path(path)).name == expected


@pytest.mark.parametrize("host,path,method", [
    ("api.example.test", "/api/..%2fother", "GET"),  # raw: api, normalised /other: default
    ("api.example.test", "/x/..%2fapi/x", "GET"),  # raw: default, normalised /api/x: api
    ("api.example.test", "//api/x", "GET"),
    ("any.test", "/static/..%2fother", "GET"),  # raw: files, normalised /other: default
    ("any.test", "/%66iles/a/raw", "GET"),  # raw: default, normalised: files
])
def test_views_that_disagree_are_ambiguous(router, host, path, method):
    raw_route, normal_route = router.routes_of_views(host, path, method, normalised_path(path))
    assert raw_route is not normal_route
    with pytest.raises(BadRequest) as refused:
        router.match(host, path, method, normalised_path(path))
    assert (refused.value.status, refused.value.reason) == (400, "ambiguous-path")
