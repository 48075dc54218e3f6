"""`[cookies]`: the Set-Cookie edit (pure), its config, and what reaches a client through coxp."""
from __future__ import annotations

import json
import textwrap

import pytest
from aiohttp import web

from harness import config_text, run_cli
from proxy.config import load_config_text
from proxy.cookies import edit_set_cookie
from proxy.errors import ConfigError
from proxy.model import CookiePolicy
from proxy.policy import apply_edits, decide, request_info

CROSS_SITE = CookiePolicy(samesite="None", secure=True, domain_strip=True, partitioned=False)
NOTHING = CookiePolicy(samesite=None, secure=False, domain_strip=False, partitioned=False)


@pytest.mark.parametrize("policy, value, edited", [
    # the usual legacy session cookie, made usable in cross-site credentialed requests
    (CROSS_SITE, "sid=abc123; Path=/; HttpOnly; Domain=backend.internal",
     "sid=abc123; Path=/; HttpOnly; SameSite=None; Secure"),
    # an existing SameSite keeps its place; Expires (with its comma), Max-Age, unknown attributes stay
    (CROSS_SITE, "a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; SameSite=Lax; Max-Age=60; Priority=High",
     "a=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; SameSite=None; Max-Age=60; Priority=High; Secure"),
    # attribute names are case-insensitive; the last of several SameSite would win, one is left
    (CROSS_SITE, "a=1;secure;samesite=strict;SAMESITE=lax;DOMAIN=x.test", "a=1; secure; SameSite=None"),
    # the name and value are never touched, not even their spaces or quotes
    (CROSS_SITE, 'q = "v w" ;path=/x', 'q = "v w" ; path=/x; SameSite=None; Secure'),
    (CookiePolicy("Strict", False, False, False), "a=1", "a=1; SameSite=Strict"),
    (CookiePolicy(None, True, False, True), "__Host-id=1; Path=/; Secure", "__Host-id=1; Path=/; Secure; Partitioned"),
    (CookiePolicy(None, False, True, False), "a=1; Domain=.example.test; Path=/", "a=1; Path=/"),
])
def test_the_named_attributes_change_and_nothing_else(policy, value, edited):
    assert edit_set_cookie(value, policy) == edited


@pytest.mark.parametrize("policy, value", [
    (CROSS_SITE, "sid=1; Path=/; SameSite=None; Secure"),
    (NOTHING, "sid=1; Domain=a.test; SameSite=Lax"),
    (CookiePolicy(None, True, False, True), "a=1; Secure; Partitioned"),
])
def test_a_cookie_that_already_complies_is_not_changed(policy, value):
    assert edit_set_cookie(value, policy) is None


def load(text: str):
    return load_config_text('[proxy]\nupstream = "http://127.0.0.1:3000"\n' + textwrap.dedent(text), source="c.toml")


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return [(p.key, p.message) for p in caught.value.problems]


@pytest.mark.parametrize("table, key, fragment", [
    ('samesite = "none"', "samesite", "needs secure = true"),
    ('samesite = "none"\nsecure = false', "samesite", "needs secure = true"),
    ("partitioned = true", "partitioned", "needs secure = true"),
    ('samesite = "None "', "samesite", "is not one of: none, lax, strict"),
    ('mode = "default"', "mode", "is not one of: set, pass"),
    ('domain = "remove"', "domain", "is not one of: strip, keep"),
    ("secure = 1", "secure", "expected a boolean"),
    ('same_site = "lax"', "same_site", 'did you mean "samesite"'),
])
def test_bad_cookie_tables_are_errors(table, key, fragment):
    for prefix, path in (('[[routes]]\nname = "r"\n[routes.cookies]\n', "routes[0].cookies"),
                         ("[defaults.cookies]\n", "defaults.cookies")):
        found = problems(prefix + table + "\n")
        assert any(k == f"{path}.{key}" and fragment in m for k, m in found), found


def test_samesite_none_with_secure_in_an_inherited_table_is_still_an_error():
    # `secure` must be in the same table: a route's table replaces the defaults' whole.
    found = problems('[defaults.cookies]\nsecure = true\n[[routes]]\nname = "r"\n[routes.cookies]\nsamesite = "none"\n')
    assert [k for k, _ in found] == ["routes[0].cookies.samesite"]


def set_cookies(config, *values: str, route_index: int | None = None):
    route = config.default_route if route_index is None else config.routes[route_index]
    decision = decide(route, request_info("GET", [], "http", "proxy.test"))
    return apply_edits(decision.edits, [("Set-Cookie", v) for v in values] + [("Content-Type", "text/plain")])


def test_routes_inherit_the_defaults_table_and_pass_opts_out():
    config = load('''
        [defaults.cookies]
        samesite = "none"
        secure = true
        [[routes]]
        name = "own"
        paths = ["/own/*"]
        [routes.cookies]
        domain = "strip"
        [[routes]]
        name = "legacy"
        paths = ["/legacy/*"]
        [routes.cookies]
        mode = "pass"
        [[routes]]
        name = "inherits"
        paths = ["/inherits/*"]
    ''')
    value = "a=1; Domain=b.test"
    assert set_cookies(config, value).headers[0] == ("Set-Cookie", "a=1; Domain=b.test; SameSite=None; Secure")
    assert set_cookies(config, value, route_index=0).headers[0] == ("Set-Cookie", "a=1")
    assert set_cookies(config, value, route_index=1).headers[0] == ("Set-Cookie", value)
    assert set_cookies(config, value, route_index=2).headers[0] == ("Set-Cookie", "a=1; Domain=b.test; SameSite=None; Secure")


def test_set_cookie_is_in_headers_set_only_when_a_cookie_changed():
    config = load('[defaults.cookies]\nsamesite = "lax"\n')
    edited = set_cookies(config, "a=1; SameSite=Lax", "b=2")
    assert edited.headers[:2] == [("Set-Cookie", "a=1; SameSite=Lax"), ("Set-Cookie", "b=2; SameSite=Lax")]
    assert (edited.set_names, edited.removed_names) == (["set-cookie"], [])
    assert set_cookies(config, "a=1; SameSite=Lax").set_names == []
    assert set_cookies(load('[defaults.cookies]\n'), "a=1; Domain=x").set_names == []  # an empty table changes nothing


def test_check_summarises_the_cookie_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:3000"\n'
                    '[defaults.cookies]\nsamesite = "none"\nsecure = true\ndomain = "strip"\n')
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "cookies=set(samesite=None, secure, strip domain)" in result.stdout


def test_explain_shows_the_cookie_edit(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[proxy]\nupstream = "http://127.0.0.1:3000"\n[defaults.cookies]\nsamesite = "none"\nsecure = true\n')
    result = run_cli("explain", "-c", str(path), "--json", "--upstream-header", "Set-Cookie: sid=1; Path=/; SameSite=Lax",
                     "--upstream-header", "Set-Cookie: theme=dark", "http://proxy.test/")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [v for n, v in shown["headers"] if n == "Set-Cookie"] == ["sid=1; Path=/; SameSite=None; Secure",
                                                                     "theme=dark; SameSite=None; Secure"]
    assert shown["headers_set"] == ["set-cookie"]


async def several_cookies(request):
    response = web.Response(text="ok")
    for value in ("sid=abc; Path=/; HttpOnly; Domain=127.0.0.1", "theme=dark; Max-Age=3600; SameSite=Lax",
                  "done=1; Secure; SameSite=None"):
        response.headers.add("Set-Cookie", value)
    return response


def test_every_set_cookie_of_a_response_is_edited_through_the_proxy(coxp, upstream):
    upstream.handler = several_cookies
    proxy = coxp(config_text(upstream.url, extra='[defaults.cookies]\nsamesite = "none"\nsecure = true\ndomain = "strip"\n'))
    response = proxy.request("GET", "/login")
    assert response.values("set-cookie") == [
        "sid=abc; Path=/; HttpOnly; SameSite=None; Secure",
        "theme=dark; Max-Age=3600; SameSite=None; Secure",
        "done=1; Secure; SameSite=None",
    ]
    assert response.event["headers_set"] == ["set-cookie"]


# --- properties over arbitrary Set-Cookie values --------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

POLICIES = st.builds(CookiePolicy, st.sampled_from([None, "None", "Lax", "Strict"]), st.booleans(), st.booleans(),
                     st.booleans())
ATTRIBUTE = st.one_of(
    st.sampled_from(["Secure", "HttpOnly", "Partitioned", "SameSite=Lax", "samesite=none", "SameSite=Strict",
                     "Domain=a.test", "domain=.b.test", "Path=/", "Max-Age=0", "Expires=Wed, 21 Oct 2037 07:28:00 GMT",
                     "", " ", "Priority=High"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";"), max_size=12),
)
VALUE = st.builds(lambda pair, attrs: ";".join([pair, *attrs]),
                  st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";"), max_size=16),
                  st.lists(ATTRIBUTE, max_size=6))


def names(value: str) -> list[str]:
    return [a.partition("=")[0].strip(" \t").lower() for a in value.split(";")[1:] if a.strip(" \t")]


@given(POLICIES, VALUE)
def test_any_cookie_edit_keeps_the_pair_and_is_stable(policy, value):
    edited = edit_set_cookie(value, policy)
    result = value if edited is None else edited
    assert result.split(";")[0] == value.split(";")[0]  # name and value byte for byte
    assert edit_set_cookie(result, policy) is None  # editing again changes nothing
    attributes = names(result)
    if policy.samesite:
        assert attributes.count("samesite") == 1
        assert f"SameSite={policy.samesite}" in [a.strip(" \t") for a in result.split(";")[1:]]
    if policy.secure:
        assert "secure" in attributes
    if policy.partitioned:
        assert "partitioned" in attributes
    if policy.domain_strip:
        assert "domain" not in attributes
    # Every other attribute is kept as sent, in order; only Secure and Partitioned are added.
    touched = {"samesite", "domain"} if policy.domain_strip else {"samesite"}

    def others(text: str) -> list[str]:
        kept = (a.strip(" \t") for a in text.split(";")[1:])
        return [a for a in kept if a and a.partition("=")[0].strip(" \t").lower() not in touched]

    before, after = others(value), others(result)
    assert after[:len(before)] == before and set(after[len(before):]) <= {"Secure", "Partitioned"}
