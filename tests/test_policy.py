"""The policy engine, as tables: config snippet -> request -> outcome + the exact response headers.

Every case runs the same code the server runs: `request_info` -> `decide` -> `plan` -> either
the proxy's own answer (`answer_response`) or the upstream's response edited by `apply_edits`.
The expected header list is compared whole (order aside): an unexpected extra header fails.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import load_config_text
from proxy.memo import MAX_KEY_CHARS
from proxy.model import DECISION_CACHE_SIZE, Config, Route
from proxy.plan import Answer, answer_response, plan
from proxy.policy import (
    Decision,
    EditResult,
    apply_edits,
    decide,
    proxy_response_headers,
    request_info,
    routing_method,
)

TEXT = "text/plain; charset=utf-8"
SELF = ("https", "proxy.test")  # the request's own origin: https://proxy.test


@functools.cache
def loaded(snippet: str) -> Config:
    """A config whose first route's policy tables are `snippet`."""
    text = f'[proxy]\nupstream = "http://127.0.0.1:3000"\n\n[[routes]]\nname = "r"\n{snippet}'
    return load_config_text(text)


def route(snippet: str) -> Route:
    """The first route of a config made of `snippet`."""
    return loaded(snippet).routes[0]


class Facts(NamedTuple):
    """The request facts `plan` reads (the server passes its parsed `RequestHead`)."""

    target: str = "/"
    websocket: bool = False
    content_length: int | None = None


def respond(snippet: str, method: str, headers, upstream, websocket: bool = False) -> tuple[Decision, EditResult]:
    """The decision and the response headers the server would send: the proxy's own answer, or
    the upstream's `upstream` headers edited."""
    config = loaded(snippet)
    decision = decide(config.routes[0], request_info(method, headers, *SELF), websocket=websocket)
    action = plan(config, config.routes[0], decision, Facts(websocket=websocket))
    if isinstance(action, Answer):
        return decision, answer_response(decision, action)[0]
    return decision, apply_edits(decision.edits, upstream)


def H(*lines: str) -> list[tuple[str, str]]:
    """Headers written as 'Name: value' lines."""
    out = []
    for line in lines:
        name, _, value = line.partition(":")
        out.append((name.strip(), value.strip()))
    return out


@dataclass
class Case:
    id: str
    config: str
    request: list[tuple[str, str]]
    outcome: str  # the log's `cors` value
    headers: list[tuple[str, str]]  # the whole response header list expected
    method: str = "GET"
    reason: str | None = None
    status: int | None = None  # the proxy's own answer; None = forwarded
    upstream: list[tuple[str, str]] = field(default_factory=list)  # the upstream response's headers
    websocket: bool = False
    set_names: list[str] | None = None
    removed_names: list[str] | None = None


def run(case: Case) -> tuple[Decision, EditResult]:
    return respond(case.config, case.method, case.request, case.upstream, case.websocket)


def norm(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((n.lower(), v) for n, v in headers)


# ---------------------------------------------------------------------------------------------
# Configs

EXACT = """
[routes.cors]
allow_origins = ["https://app.test"]
"""
EXACT_PORT = """
[routes.cors]
allow_origins = ["https://app.test:8443"]
"""
WILDCARD = """
[routes.cors]
allow_origins = ["https://*.example.test"]
"""
WILDCARD_PORT = """
[routes.cors]
allow_origins = ["https://*.example.test:8443"]
"""
ANY_PORT = """
[routes.cors]
allow_origins = ["http://localhost:*"]
"""
SUB_ANY_PORT = """
[routes.cors]
allow_origins = ["http://*.localhost:*"]
"""
NULL = """
[routes.cors]
allow_origins = ["null", "https://app.test"]
"""
REGEX = r"""
[routes.cors]
allow_origin_regex = ['https://[a-z]+\.regex\.test', '.*']
"""
IPV6 = """
[routes.cors]
allow_origins = ["http://[::1]:8080"]
"""
STAR = """
[routes.cors]
allow_origins = ["*"]
expose_headers = ["X-Total"]
"""
STAR_ANY = """
[routes.cors]
allow_origins = ["*"]
allow_methods = ["*"]
allow_headers = ["*"]
"""
FULL = """
[routes.cors]
allow_origins = ["https://app.test"]
allow_methods = ["PUT", "delete", "PATCH", "purge"]
allow_headers = ["X-Foo", "content-type"]
expose_headers = ["X-Total", "ETag"]
allow_credentials = true
max_age = 600
"""
CREDS_ANY = """
[routes.cors]
allow_origins = ["https://app.test"]
allow_methods = ["*"]
allow_headers = ["*"]
allow_credentials = true
"""
PNA = """
[routes.cors]
allow_origins = ["https://app.test"]
allow_private_network = true
"""
ENFORCE = """
[routes.cors]
allow_origins = ["https://app.test"]
enforce = true
"""
MAX_AGE_0 = """
[routes.cors]
allow_origins = ["https://app.test"]
max_age = 0
"""
DEFAULT = """
[routes.cors]
mode = "default"
allow_origins = ["https://app.test"]
allow_credentials = true
"""
REMOVE = """
[routes.cors]
mode = "remove"
"""
PASS = """
[routes.cors]
mode = "pass"
"""
NO_CORS = """
[routes.corp]
policy = "same-site"
"""
UPSTREAM_PF = """
[routes.cors]
allow_origins = ["https://app.test"]
allow_methods = ["PUT"]
preflight = "upstream"
"""
UPSTREAM_PF_ENFORCE = """
[routes.cors]
allow_origins = ["https://app.test"]
preflight = "upstream"
enforce = true
"""
UPSTREAM_PF_DEFAULT = """
[routes.cors]
mode = "default"
allow_origins = ["https://app.test"]
allow_methods = ["PUT"]
preflight = "upstream"
"""
WITH_COOP = """
[routes.cors]
allow_origins = ["https://app.test"]
[routes.coop]
policy = "same-origin"
"""
STAR_COOP = """
[routes.cors]
allow_origins = ["*"]
[routes.coop]
policy = "same-origin"
"""


def header_policy(table: str, mode: str, body: str) -> str:
    return f'\n[routes.{table}]\nmode = "{mode}"\n{body}\n'


CORP_SET = header_policy("corp", "set", 'policy = "same-site"')
CORP_DEFAULT = header_policy("corp", "default", 'policy = "same-site"')
CORP_REMOVE = header_policy("corp", "remove", "")
CORP_PASS = header_policy("corp", "pass", "")
COOP_SET = header_policy("coop", "set", 'policy = "same-origin"\nreport_to = "default"')
COOP_DEFAULT = header_policy("coop", "default", 'policy = "same-origin"')
COOP_REMOVE = header_policy("coop", "remove", "")
COOP_PASS = header_policy("coop", "pass", "")
COEP_SET = header_policy("coep", "set", 'policy = "require-corp"\nreport_only = true')
COEP_DEFAULT = header_policy("coep", "default", 'policy = "credentialless"')
COEP_REMOVE = header_policy("coep", "remove", "")
COEP_PASS = header_policy("coep", "pass", "")
REP_SET = header_policy("reporting", "set", 'endpoints = { default = "https://reports.example.test/r", csp = "https://r.test/c" }')
REP_DEFAULT = header_policy("reporting", "default", 'endpoints = { default = "https://reports.example.test/r" }')
REP_REMOVE = header_policy("reporting", "remove", "")
REP_PASS = header_policy("reporting", "pass", "")

APP = ("Origin", "https://app.test")
V_ORIGIN = "Vary: Origin"
V_PREFLIGHT = "Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
V_PREFLIGHT_STAR = "Vary: Access-Control-Request-Method, Access-Control-Request-Headers"


def origin(value: str) -> list[tuple[str, str]]:
    return [("Origin", value)]


def allowed(value: str, *extra: str) -> list[tuple[str, str]]:
    return H(f"Access-Control-Allow-Origin: {value}", *extra, V_ORIGIN)


DENIED = H(V_ORIGIN)


def preflight(origin_value: str = "https://app.test", method: str = "PUT", *extra: tuple[str, str]):
    return [("Origin", origin_value), ("Access-Control-Request-Method", method), *extra]


def denied_403(reason: str, vary: str = V_PREFLIGHT, *extra: str) -> list[tuple[str, str]]:
    body = f"{reason}: CORS preflight denied\n"
    return H(f"Content-Type: {TEXT}", f"Content-Length: {len(body)}", vary, *extra)


def enforce_403(*extra: str) -> list[tuple[str, str]]:
    body = "origin-not-allowed: CORS request denied\n"
    return H(f"Content-Type: {TEXT}", f"Content-Length: {len(body)}", V_ORIGIN, *extra)


ORIGIN_FORMS = [
    # exact
    Case("exact-allowed", EXACT, origin("https://app.test"), "allowed", allowed("https://app.test")),
    Case("exact-case-insensitive-echoed-byte-for-byte", EXACT, origin("HTTPS://APP.Test"), "allowed",
         allowed("HTTPS://APP.Test")),
    Case("exact-default-port-in-request", EXACT, origin("https://app.test:443"), "allowed",
         allowed("https://app.test:443")),
    Case("exact-other-port-denied", EXACT, origin("https://app.test:8443"), "denied", DENIED,
         reason="origin-not-allowed"),
    Case("exact-other-scheme-denied", EXACT, origin("http://app.test"), "denied", DENIED, reason="origin-not-allowed"),
    Case("exact-subdomain-denied", EXACT, origin("https://a.app.test"), "denied", DENIED, reason="origin-not-allowed"),
    Case("exact-suffix-trick-denied", EXACT, origin("https://app.test.evil.test"), "denied", DENIED,
         reason="origin-not-allowed"),
    Case("exact-port-allowed", EXACT_PORT, origin("https://app.test:8443"), "allowed", allowed("https://app.test:8443")),
    Case("exact-port-needs-port", EXACT_PORT, origin("https://app.test"), "denied", DENIED, reason="origin-not-allowed"),
    # subdomain wildcard
    Case("wildcard-one-level", WILDCARD, origin("https://a.example.test"), "allowed", allowed("https://a.example.test")),
    Case("wildcard-any-depth", WILDCARD, origin("https://a.b.c.example.test"), "allowed",
         allowed("https://a.b.c.example.test")),
    Case("wildcard-never-apex", WILDCARD, origin("https://example.test"), "denied", DENIED, reason="origin-not-allowed"),
    Case("wildcard-label-boundary", WILDCARD, origin("https://evilexample.test"), "denied", DENIED,
         reason="origin-not-allowed"),
    Case("wildcard-scheme", WILDCARD, origin("http://a.example.test"), "denied", DENIED, reason="origin-not-allowed"),
    Case("wildcard-default-port-only", WILDCARD, origin("https://a.example.test:8443"), "denied", DENIED,
         reason="origin-not-allowed"),
    Case("wildcard-port-allowed", WILDCARD_PORT, origin("https://a.example.test:8443"), "allowed",
         allowed("https://a.example.test:8443")),
    Case("wildcard-port-needs-port", WILDCARD_PORT, origin("https://a.example.test"), "denied", DENIED,
         reason="origin-not-allowed"),
    # port wildcard
    Case("any-port-no-port", ANY_PORT, origin("http://localhost"), "allowed", allowed("http://localhost")),
    Case("any-port-some-port", ANY_PORT, origin("http://localhost:5173"), "allowed", allowed("http://localhost:5173")),
    Case("any-port-scheme", ANY_PORT, origin("https://localhost:5173"), "denied", DENIED, reason="origin-not-allowed"),
    Case("any-port-not-subdomain", ANY_PORT, origin("http://a.localhost:5173"), "denied", DENIED,
         reason="origin-not-allowed"),
    Case("sub-any-port", SUB_ANY_PORT, origin("http://a.b.localhost:3000"), "allowed",
         allowed("http://a.b.localhost:3000")),
    Case("sub-any-port-never-apex", SUB_ANY_PORT, origin("http://localhost:3000"), "denied", DENIED,
         reason="origin-not-allowed"),
    # null
    Case("null-listed", NULL, origin("null"), "allowed", allowed("null")),
    Case("null-not-listed", EXACT, origin("null"), "denied", DENIED, reason="origin-not-allowed"),
    Case("null-never-by-regex", REGEX, origin("null"), "denied", DENIED, reason="origin-not-allowed"),
    # regex
    Case("regex-full-match", REGEX, origin("https://foo.regex.test"), "allowed", allowed("https://foo.regex.test")),
    Case("regex-sees-normalised", REGEX, origin("https://FOO.regex.test:443"), "allowed",
         allowed("https://FOO.regex.test:443")),
    Case("regex-any-well-formed", REGEX, origin("http://other.test"), "allowed", allowed("http://other.test")),
    Case("regex-never-malformed", REGEX, origin("https://foo.regex.test/"), "denied", DENIED,
         reason="origin-not-allowed"),
    # IPv6
    Case("ipv6-allowed", IPV6, origin("http://[::1]:8080"), "allowed", allowed("http://[::1]:8080")),
    Case("ipv6-non-canonical-request", IPV6, origin("http://[0:0::1]:8080"), "allowed", allowed("http://[0:0::1]:8080")),
    # malformed Origin values match nothing
    Case("malformed-trailing-slash", EXACT, origin("https://app.test/"), "denied", DENIED, reason="origin-not-allowed"),
    Case("malformed-path", EXACT, origin("https://app.test/x"), "denied", DENIED, reason="origin-not-allowed"),
    Case("malformed-userinfo", EXACT, origin("https://u@app.test"), "denied", DENIED, reason="origin-not-allowed"),
    Case("malformed-space", EXACT, origin("https://app .test"), "denied", DENIED, reason="origin-not-allowed"),
    Case("malformed-empty", EXACT, origin(""), "denied", DENIED, reason="origin-not-allowed"),
    Case("malformed-list", EXACT, origin("https://app.test, https://b.test"), "denied", DENIED,
         reason="origin-not-allowed"),
    Case("malformed-two-lines", EXACT, [APP, APP], "denied", DENIED, reason="origin-not-allowed"),
    Case("malformed-port-leading-zero", EXACT, origin("https://app.test:0443"), "denied", DENIED,
         reason="origin-not-allowed"),
]

CLASSIFICATION = [
    Case("not-cors-no-acao-but-vary", EXACT, [], "not-cors", H(V_ORIGIN)),
    Case("not-cors-set-removes-upstream", EXACT, [], "not-cors", H("Content-Type: text/html", V_ORIGIN),
         upstream=H("Content-Type: text/html", "Access-Control-Allow-Origin: *"),
         set_names=["vary"], removed_names=["access-control-allow-origin"]),
    Case("same-origin", EXACT, origin("https://proxy.test"), "same-origin", H(V_ORIGIN)),
    Case("same-origin-normalised", EXACT, origin("HTTPS://proxy.test:443"), "same-origin", H(V_ORIGIN)),
    Case("same-origin-preflight-looking-is-same-origin", EXACT,
         preflight("https://proxy.test"), "same-origin", H(V_ORIGIN), method="OPTIONS"),
    Case("other-scheme-is-cross-origin", EXACT, origin("http://proxy.test"), "denied", DENIED,
         reason="origin-not-allowed"),
    Case("options-without-acrm-is-actual", EXACT, [APP], "allowed", allowed("https://app.test"), method="OPTIONS"),
    Case("post-with-acrm-is-actual", EXACT, [APP, ("Access-Control-Request-Method", "PUT")], "allowed",
         allowed("https://app.test"), method="POST"),
    Case("no-cors-table-off", NO_CORS, [APP], "off", H("Access-Control-Allow-Origin: *", "Cross-Origin-Resource-Policy: same-site"),
         upstream=H("Access-Control-Allow-Origin: *")),
    Case("no-cors-table-preflight-forwarded", NO_CORS, preflight(), "off",
         H("Cross-Origin-Resource-Policy: same-site"), method="OPTIONS"),
]

ACTUAL = [
    Case("credentials-and-expose", FULL, [APP], "allowed",
         allowed("https://app.test", "Access-Control-Allow-Credentials: true", "Access-Control-Expose-Headers: x-total, etag")),
    Case("actual-not-checked-against-methods", FULL, [APP], "allowed",
         allowed("https://app.test", "Access-Control-Allow-Credentials: true", "Access-Control-Expose-Headers: x-total, etag"),
         method="CONNECTX"),
    Case("denied-no-credentials-header", FULL, origin("https://evil.test"), "denied", DENIED, reason="origin-not-allowed"),
    Case("set-replaces-upstream", FULL, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Expose-Headers: x-total, etag", "Vary: Accept-Encoding, Origin"),
         upstream=H("access-control-allow-origin: *", "Access-Control-Max-Age: 5", "ACCESS-CONTROL-EXPOSE-HEADERS: a",
                    "Vary: Accept-Encoding"),
         set_names=["access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers", "vary"],
         removed_names=["access-control-allow-origin", "access-control-max-age", "access-control-expose-headers"]),
    Case("denied-set-removes-upstream-acao", EXACT, origin("https://evil.test"), "denied", DENIED,
         reason="origin-not-allowed", upstream=H("Access-Control-Allow-Origin: https://evil.test")),
    Case("enforce-denied-403", ENFORCE, origin("https://evil.test"), "denied", enforce_403(),
         reason="origin-not-allowed", status=403),
    Case("enforce-allowed-forwarded", ENFORCE, [APP], "allowed", allowed("https://app.test")),
    Case("enforce-never-same-origin", ENFORCE, origin("https://proxy.test"), "same-origin", H(V_ORIGIN)),
    Case("enforce-never-not-cors", ENFORCE, [], "not-cors", H(V_ORIGIN)),
    Case("enforce-malformed-403", ENFORCE, origin("https://app.test/"), "denied", enforce_403(),
         reason="origin-not-allowed", status=403),
    Case("coop-applies-to-enforce-403", ENFORCE + COOP_SET, origin("https://evil.test"), "denied",
         enforce_403('Cross-Origin-Opener-Policy: same-origin; report-to="default"'),
         reason="origin-not-allowed", status=403),
]

PREFLIGHTS = [
    Case("preflight-allowed-full", FULL, preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "x-foo")),
         "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT, DELETE, PATCH, purge", "Access-Control-Allow-Headers: x-foo, content-type",
           "Access-Control-Max-Age: 600", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("preflight-safelisted-method-no-config", EXACT, preflight(method="GET"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", V_PREFLIGHT), method="OPTIONS", status=204),
    Case("preflight-post-always", EXACT, preflight(method="POST"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", V_PREFLIGHT), method="OPTIONS", status=204),
    Case("preflight-head-always", EXACT, preflight(method="HEAD"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", V_PREFLIGHT), method="OPTIONS", status=204),
    Case("preflight-origin-denied", FULL, preflight("https://evil.test"), "preflight-denied",
         denied_403("origin-not-allowed"), method="OPTIONS", status=403, reason="origin-not-allowed"),
    Case("preflight-origin-malformed", FULL, preflight(""), "preflight-denied",
         denied_403("origin-not-allowed"), method="OPTIONS", status=403, reason="origin-not-allowed"),
    Case("method-not-listed", EXACT, preflight(method="PUT"), "preflight-denied", denied_403("method-not-allowed"),
         method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("method-case-sensitive-patch", FULL, preflight(method="patch"), "preflight-denied",
         denied_403("method-not-allowed"), method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("method-six-upper-cased-in-config", FULL, preflight(method="DELETE"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT, DELETE, PATCH, purge", "Access-Control-Allow-Headers: x-foo, content-type",
           "Access-Control-Max-Age: 600", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("method-lower-delete-denied", FULL, preflight(method="delete"), "preflight-denied",
         denied_403("method-not-allowed"), method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("method-custom-kept-as-written", FULL, preflight(method="purge"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT, DELETE, PATCH, purge", "Access-Control-Allow-Headers: x-foo, content-type",
           "Access-Control-Max-Age: 600", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("method-get-lower-denied", EXACT, preflight(method="get"), "preflight-denied", denied_403("method-not-allowed"),
         method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("method-list-is-not-a-token", CREDS_ANY, preflight(method="GET, DELETE"), "preflight-denied",
         denied_403("method-not-allowed"), method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("method-two-lines-denied", CREDS_ANY,
         preflight(method="GET") + [("Access-Control-Request-Method", "GET")], "preflight-denied",
         denied_403("method-not-allowed"), method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("method-empty-denied", EXACT, preflight(method=""), "preflight-denied", denied_403("method-not-allowed"),
         method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("method-star-echoes", CREDS_ANY, preflight(method="PROPFIND"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PROPFIND", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("headers-not-listed", FULL, preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "x-bar")),
         "preflight-denied", denied_403("header-not-allowed"), method="OPTIONS", status=403, reason="header-not-allowed"),
    Case("headers-case-insensitive", FULL,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "X-FOO,Content-Type")),
         "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT, DELETE, PATCH, purge", "Access-Control-Allow-Headers: x-foo, content-type",
           "Access-Control-Max-Age: 600", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("headers-whitespace-and-empty-elements", FULL,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", " x-foo ,\t, ,content-type ,")),
         "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT, DELETE, PATCH, purge", "Access-Control-Allow-Headers: x-foo, content-type",
           "Access-Control-Max-Age: 600", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("headers-several-lines-combined-allowed", FULL,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "x-foo"),
                   ("Access-Control-Request-Headers", "content-type")),
         "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT, DELETE, PATCH, purge", "Access-Control-Allow-Headers: x-foo, content-type",
           "Access-Control-Max-Age: 600", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("headers-several-lines-one-bad", FULL,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "x-foo"),
                   ("Access-Control-Request-Headers", "x-bar")),
         "preflight-denied", denied_403("header-not-allowed"), method="OPTIONS", status=403, reason="header-not-allowed"),
    Case("headers-authorization-needs-listing", FULL,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "authorization")),
         "preflight-denied", denied_403("header-not-allowed"), method="OPTIONS", status=403, reason="header-not-allowed"),
    Case("headers-star-echoes-incl-authorization", CREDS_ANY,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "authorization,x-foo")),
         "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT", "Access-Control-Allow-Headers: authorization,x-foo", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("headers-star-echo-cleaned-up", CREDS_ANY,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "x-a,, x-b"),
                   ("Access-Control-Request-Headers", "x-c")),
         "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT", "Access-Control-Allow-Headers: x-a, x-b, x-c", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("headers-star-nothing-requested", CREDS_ANY, preflight("https://app.test", "PUT"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Credentials: true",
           "Access-Control-Allow-Methods: PUT", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("headers-not-a-token-denied-even-with-star", CREDS_ANY,
         preflight("https://app.test", "PUT", ("Access-Control-Request-Headers", "x foo")),
         "preflight-denied", denied_403("header-not-allowed"), method="OPTIONS", status=403, reason="header-not-allowed"),
    Case("method-checked-before-headers", FULL,
         preflight("https://app.test", "MOVE", ("Access-Control-Request-Headers", "x-bar")),
         "preflight-denied", denied_403("method-not-allowed"), method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("max-age-zero-sent", MAX_AGE_0, preflight(method="GET"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Max-Age: 0", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("coop-on-synthesized-preflight", WITH_COOP, preflight(method="GET"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Cross-Origin-Opener-Policy: same-origin", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("coop-on-denied-preflight", WITH_COOP, preflight(method="PUT"), "preflight-denied",
         denied_403("method-not-allowed", V_PREFLIGHT, "Cross-Origin-Opener-Policy: same-origin"),
         method="OPTIONS", status=403, reason="method-not-allowed"),
]

PRIVATE_NETWORK = [
    Case("pna-allowed", PNA, preflight("https://app.test", "GET", ("Access-Control-Request-Private-Network", "true")),
         "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Private-Network: true", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("pna-not-asked-no-header", PNA, preflight("https://app.test", "GET"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", V_PREFLIGHT), method="OPTIONS", status=204),
    Case("pna-denied", EXACT, preflight("https://app.test", "GET", ("Access-Control-Request-Private-Network", "true")),
         "preflight-denied", denied_403("private-network-not-allowed"), method="OPTIONS", status=403,
         reason="private-network-not-allowed"),
    Case("pna-false-is-not-asking", EXACT,
         preflight("https://app.test", "GET", ("Access-Control-Request-Private-Network", "false")),
         "preflight-allowed", H("Access-Control-Allow-Origin: https://app.test", V_PREFLIGHT),
         method="OPTIONS", status=204),
    Case("pna-after-headers", EXACT,
         preflight("https://app.test", "GET", ("Access-Control-Request-Private-Network", "true"),
                   ("Access-Control-Request-Headers", "x-nope")),
         "preflight-denied", denied_403("header-not-allowed"), method="OPTIONS", status=403, reason="header-not-allowed"),
]

STAR_ROUTES = [
    Case("star-not-cors-gets-star", STAR, [], "not-cors",
         H("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: x-total")),
    Case("star-same-origin-gets-star", STAR, origin("https://proxy.test"), "same-origin",
         H("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: x-total")),
    Case("star-actual", STAR, origin("https://any.test"), "allowed",
         H("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: x-total")),
    Case("star-null", STAR, origin("null"), "allowed",
         H("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: x-total")),
    Case("star-malformed-passes", STAR, origin("https://x.test/path"), "allowed",
         H("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: x-total")),
    Case("star-empty-passes", STAR, origin(""), "allowed",
         H("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: x-total")),
    Case("star-keeps-upstream-vary", STAR, origin("https://any.test"), "allowed",
         H("Access-Control-Allow-Origin: *", "Access-Control-Expose-Headers: x-total", "Vary: Accept"),
         upstream=H("Vary: Accept"), set_names=["access-control-allow-origin", "access-control-expose-headers"]),
    Case("star-preflight-allowed", STAR_ANY,
         preflight("https://any.test", "PATCH", ("Access-Control-Request-Headers", "x-a")), "preflight-allowed",
         H("Access-Control-Allow-Origin: *", "Access-Control-Allow-Methods: PATCH",
           "Access-Control-Allow-Headers: x-a", V_PREFLIGHT_STAR),
         method="OPTIONS", status=204),
    Case("star-preflight-denied-no-acao", STAR, preflight("https://any.test", "PATCH"), "preflight-denied",
         denied_403("method-not-allowed", V_PREFLIGHT_STAR), method="OPTIONS", status=403, reason="method-not-allowed"),
    Case("star-websocket-101-untouched", STAR_COOP, origin("https://any.test"), "allowed",
         H("Upgrade: websocket", "Cross-Origin-Opener-Policy: same-origin"), upstream=H("Upgrade: websocket"),
         websocket=True),
    Case("star-websocket-not-cors-untouched", STAR, [], "not-cors", H("Upgrade: websocket"),
         upstream=H("Upgrade: websocket"), websocket=True),
]

WEBSOCKET = [
    Case("ws-allowed-no-cors-headers", WITH_COOP, [APP], "allowed", H("Cross-Origin-Opener-Policy: same-origin"),
         websocket=True),
    Case("ws-denied-forwarded", EXACT, origin("https://evil.test"), "denied", [], reason="origin-not-allowed",
         websocket=True),
    Case("ws-enforce-403", ENFORCE, origin("https://evil.test"), "denied", enforce_403(), reason="origin-not-allowed",
         status=403, websocket=True),
    Case("ws-upstream-cors-headers-left-alone", EXACT, [APP], "allowed", H("Access-Control-Allow-Origin: *"),
         upstream=H("Access-Control-Allow-Origin: *"), websocket=True),
]

MODES = [
    Case("default-keeps-upstream-acao", DEFAULT, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://up.test", "Access-Control-Max-Age: 5", "Vary: Accept"),
         upstream=H("Access-Control-Allow-Origin: https://up.test", "Access-Control-Max-Age: 5", "Vary: Accept"),
         set_names=[], removed_names=[]),
    Case("default-keeps-upstream-on-denied", DEFAULT, origin("https://evil.test"), "denied",
         H("ACCESS-CONTROL-ALLOW-ORIGIN: *"), reason="origin-not-allowed", upstream=H("ACCESS-CONTROL-ALLOW-ORIGIN: *")),
    Case("default-without-acao-acts-as-set", DEFAULT, [APP], "allowed",
         allowed("https://app.test", "Access-Control-Allow-Credentials: true"),
         upstream=H("Access-Control-Allow-Credentials: false", "Access-Control-Expose-Headers: x"),
         removed_names=["access-control-allow-credentials", "access-control-expose-headers"]),
    Case("default-not-cors-vary", DEFAULT, [], "not-cors", H(V_ORIGIN)),
    Case("remove-strips-all-cors", REMOVE, [APP], "off", H("Content-Type: text/html", "Vary: Accept"),
         upstream=H("Access-Control-Allow-Origin: *", "Access-Control-Allow-Methods: GET",
                    "Access-Control-Expose-Headers: a", "Access-Control-Max-Age: 1", "Content-Type: text/html",
                    "Vary: Accept"),
         set_names=[], removed_names=["access-control-allow-origin", "access-control-allow-methods",
                                      "access-control-expose-headers", "access-control-max-age"]),
    Case("remove-preflight-forwarded", REMOVE, preflight(), "off", [], method="OPTIONS",
         upstream=H("Access-Control-Allow-Origin: *")),
    Case("pass-touches-nothing", PASS, [APP], "off", H("Access-Control-Allow-Origin: *"),
         upstream=H("Access-Control-Allow-Origin: *"), set_names=[], removed_names=[]),
    # CORP
    Case("corp-set", CORP_SET, [], "off", H("Cross-Origin-Resource-Policy: same-site"),
         upstream=H("Cross-Origin-Resource-Policy: cross-origin"),
         set_names=["cross-origin-resource-policy"], removed_names=["cross-origin-resource-policy"]),
    Case("corp-default-keeps", CORP_DEFAULT, [], "off", H("Cross-Origin-Resource-Policy: cross-origin"),
         upstream=H("Cross-Origin-Resource-Policy: cross-origin"), set_names=[], removed_names=[]),
    Case("corp-default-adds", CORP_DEFAULT, [], "off", H("Cross-Origin-Resource-Policy: same-site")),
    Case("corp-remove", CORP_REMOVE, [], "off", [], upstream=H("cross-origin-resource-policy: same-origin"),
         removed_names=["cross-origin-resource-policy"]),
    Case("corp-pass", CORP_PASS, [], "off", H("Cross-Origin-Resource-Policy: same-origin"),
         upstream=H("Cross-Origin-Resource-Policy: same-origin")),
    # COOP
    Case("coop-set-report-to", COOP_SET, [], "off", H('Cross-Origin-Opener-Policy: same-origin; report-to="default"'),
         upstream=H("Cross-Origin-Opener-Policy-Report-Only: unsafe-none"),
         removed_names=["cross-origin-opener-policy-report-only"]),
    Case("coop-default-keeps-report-only", COOP_DEFAULT, [], "off", H("Cross-Origin-Opener-Policy-Report-Only: same-origin"),
         upstream=H("Cross-Origin-Opener-Policy-Report-Only: same-origin")),
    Case("coop-default-adds", COOP_DEFAULT, [], "off", H("Cross-Origin-Opener-Policy: same-origin")),
    Case("coop-remove", COOP_REMOVE, [], "off", [],
         upstream=H("Cross-Origin-Opener-Policy: same-origin", "Cross-Origin-Opener-Policy-Report-Only: same-origin")),
    Case("coop-pass", COOP_PASS, [], "off", H("Cross-Origin-Opener-Policy: unsafe-none"),
         upstream=H("Cross-Origin-Opener-Policy: unsafe-none")),
    # COEP
    Case("coep-set-report-only", COEP_SET, [], "off", H("Cross-Origin-Embedder-Policy-Report-Only: require-corp"),
         upstream=H("Cross-Origin-Embedder-Policy: unsafe-none")),
    Case("coep-default-keeps", COEP_DEFAULT, [], "off", H("Cross-Origin-Embedder-Policy: require-corp"),
         upstream=H("Cross-Origin-Embedder-Policy: require-corp")),
    Case("coep-default-adds", COEP_DEFAULT, [], "off", H("Cross-Origin-Embedder-Policy: credentialless")),
    Case("coep-remove", COEP_REMOVE, [], "off", [], upstream=H("Cross-Origin-Embedder-Policy: require-corp")),
    Case("coep-pass", COEP_PASS, [], "off", H("Cross-Origin-Embedder-Policy: require-corp"),
         upstream=H("Cross-Origin-Embedder-Policy: require-corp")),
    # Reporting
    Case("reporting-set", REP_SET, [], "off",
         H('Reporting-Endpoints: default="https://reports.example.test/r", csp="https://r.test/c"'),
         upstream=H('Reporting-Endpoints: x="https://x.test/"')),
    Case("reporting-default-keeps", REP_DEFAULT, [], "off", H('Reporting-Endpoints: x="https://x.test/"'),
         upstream=H('Reporting-Endpoints: x="https://x.test/"')),
    Case("reporting-default-adds", REP_DEFAULT, [], "off", H('Reporting-Endpoints: default="https://reports.example.test/r"')),
    Case("reporting-remove", REP_REMOVE, [], "off", [], upstream=H('Reporting-Endpoints: x="https://x.test/"')),
    Case("reporting-pass", REP_PASS, [], "off", H('Reporting-Endpoints: x="https://x.test/"'),
         upstream=H('Reporting-Endpoints: x="https://x.test/"')),
    # all together on one CORS response
    Case("all-tables-together", EXACT + CORP_SET + COOP_SET + COEP_DEFAULT + REP_SET, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Cross-Origin-Resource-Policy: same-site",
           'Cross-Origin-Opener-Policy: same-origin; report-to="default"', "Cross-Origin-Embedder-Policy: unsafe-none",
           'Reporting-Endpoints: default="https://reports.example.test/r", csp="https://r.test/c"', V_ORIGIN),
         upstream=H("Cross-Origin-Embedder-Policy: unsafe-none")),
]

VARY = [
    Case("vary-appended-to-upstream", EXACT, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Vary: Accept-Encoding, Origin"),
         upstream=H("Vary: Accept-Encoding")),
    Case("vary-already-has-origin-any-case", EXACT, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Vary: accept, ORIGIN"),
         upstream=H("Vary: accept, ORIGIN"), set_names=["access-control-allow-origin"], removed_names=[]),
    Case("vary-star-untouched", EXACT, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Vary: *"), upstream=H("Vary: *"),
         set_names=["access-control-allow-origin"]),
    Case("vary-several-lines-combined", EXACT, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Vary: Accept, Cookie, Origin"),
         upstream=H("Vary: Accept", "vary: Cookie")),
    Case("vary-empty-upstream-value", EXACT, [APP], "allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Vary: Origin"), upstream=H("Vary: ")),
    Case("vary-preflight-upstream-merges-missing", UPSTREAM_PF, preflight(method="GET"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Methods: PUT",
           "Vary: origin, Accept, Access-Control-Request-Method, Access-Control-Request-Headers"),
         method="OPTIONS", upstream=H("Vary: origin, Accept")),
    Case("vary-not-touched-in-pass", PASS, [APP], "off", H("Vary: Accept"), upstream=H("Vary: Accept")),
]

UPSTREAM_PREFLIGHT = [
    Case("upstream-pf-allowed-replaced", UPSTREAM_PF, preflight(method="PUT"), "preflight-allowed",
         H("Content-Length: 0", "Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Methods: PUT",
           V_PREFLIGHT),
         method="OPTIONS",
         upstream=H("Content-Length: 0", "Access-Control-Allow-Origin: *", "Access-Control-Allow-Methods: GET, PUT, DELETE",
                    "Access-Control-Allow-Headers: *", "Access-Control-Request-Method: PUT"),
         removed_names=["access-control-allow-origin", "access-control-allow-methods", "access-control-allow-headers",
                        "access-control-request-method"]),
    Case("upstream-pf-denied-stripped", UPSTREAM_PF, preflight(method="DELETE"), "preflight-denied",
         H("Content-Length: 0", V_PREFLIGHT), method="OPTIONS", reason="method-not-allowed",
         upstream=H("Content-Length: 0", "Access-Control-Allow-Origin: *", "Access-Control-Allow-Methods: DELETE")),
    Case("upstream-pf-origin-denied-forwarded", UPSTREAM_PF, preflight("https://evil.test"), "preflight-denied",
         H(V_PREFLIGHT), method="OPTIONS", reason="origin-not-allowed",
         upstream=H("Access-Control-Allow-Origin: https://evil.test")),
    Case("upstream-pf-enforce-origin-denied-403", UPSTREAM_PF_ENFORCE, preflight("https://evil.test", "GET"),
         "preflight-denied", denied_403("origin-not-allowed"), method="OPTIONS", status=403, reason="origin-not-allowed"),
    Case("upstream-pf-enforce-method-denied-forwarded", UPSTREAM_PF_ENFORCE, preflight("https://app.test", "PUT"),
         "preflight-denied", H(V_PREFLIGHT), method="OPTIONS", reason="method-not-allowed",
         upstream=H("Access-Control-Allow-Methods: PUT")),
    Case("upstream-pf-default-keeps", UPSTREAM_PF_DEFAULT, preflight(method="PUT"), "preflight-allowed",
         H("Access-Control-Allow-Origin: *", "Access-Control-Allow-Methods: *"), method="OPTIONS",
         upstream=H("Access-Control-Allow-Origin: *", "Access-Control-Allow-Methods: *")),
    Case("upstream-pf-default-no-acao-acts-as-set", UPSTREAM_PF_DEFAULT, preflight(method="PUT"), "preflight-allowed",
         H("Access-Control-Allow-Origin: https://app.test", "Access-Control-Allow-Methods: PUT", V_PREFLIGHT),
         method="OPTIONS", upstream=H("Access-Control-Allow-Methods: *")),
]

CASES = ORIGIN_FORMS + CLASSIFICATION + ACTUAL + PREFLIGHTS + PRIVATE_NETWORK + STAR_ROUTES + WEBSOCKET + MODES + VARY + UPSTREAM_PREFLIGHT


def test_there_are_enough_cases():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_engine(case: Case) -> None:
    decision, result = run(case)
    assert decision.cors == case.outcome
    assert decision.reason == case.reason
    assert (decision.answer.status if decision.answer else None) == case.status
    assert norm(result.headers) == norm(case.headers)
    if case.set_names is not None:
        assert sorted(result.set_names) == sorted(case.set_names)
    if case.removed_names is not None:
        assert sorted(result.removed_names) == sorted(case.removed_names)
    if decision.answer is not None and decision.answer.status == 403:
        assert decision.reason in decision.answer.body and "\n" not in decision.answer.body
    if decision.answer is not None and decision.answer.status == 204:
        assert decision.answer.body == ""


# ---------------------------------------------------------------------------------------------
# Single behaviours


def test_routing_method_of_a_preflight_is_the_requested_one():
    info = request_info("OPTIONS", preflight(method="DELETE"), *SELF)
    assert routing_method(info) == "DELETE"
    assert routing_method(request_info("OPTIONS", [APP], *SELF)) == "OPTIONS"
    assert routing_method(request_info("OPTIONS", [("Access-Control-Request-Method", "PUT")], *SELF)) == "OPTIONS"


def test_request_info_collects_every_value():
    info = request_info("OPTIONS", [("origin", "https://a.test"), ("ORIGIN", "https://b.test"),
                                    ("Access-Control-Request-Headers", "a"), ("access-control-request-headers", "b"),
                                    ("Access-Control-Request-Private-Network", "true")], "https", "proxy.test:8443")
    assert info.origin == "https://a.test, https://b.test" and info.origin_lines == 2
    assert info.request_headers == "a, b"
    assert info.private_network
    assert info.own_origin == "https://proxy.test:8443"


def test_own_origin_from_trusted_forwarded_values():
    # the server passes X-Forwarded-Proto/-Host of a trusted proxy as scheme and host
    info = request_info("GET", origin("https://public.test"), "https", "public.test")
    assert decide(route(EXACT), info).cors == "same-origin"
    info = request_info("GET", origin("https://public.test"), "http", "public.test")
    assert decide(route(EXACT), info).cors == "denied"


def test_the_log_sees_the_origin_as_received():
    decision = decide(route(EXACT), request_info("GET", origin("HTTPS://APP.test"), *SELF))
    assert decision.origin == "HTTPS://APP.test" and decision.route == "r"
    assert decide(route(EXACT), request_info("GET", [], *SELF)).origin is None


def test_proxy_made_502_carries_cors_when_allowed():
    decision = decide(route(FULL), request_info("GET", [APP], *SELF))
    result = proxy_response_headers(decision, TEXT, 23)
    assert norm(result.headers) == norm(H(
        f"Content-Type: {TEXT}", "Content-Length: 23", "Access-Control-Allow-Origin: https://app.test",
        "Access-Control-Allow-Credentials: true", "Access-Control-Expose-Headers: x-total, etag", V_ORIGIN))
    assert result.removed_names == []
    assert {"content-type", "content-length", "access-control-allow-origin", "vary"} <= set(result.set_names)


def test_proxy_made_502_without_cors_when_denied():
    decision = decide(route(FULL), request_info("GET", origin("https://evil.test"), *SELF))
    result = proxy_response_headers(decision, TEXT, 10)
    assert norm(result.headers) == norm(H(f"Content-Type: {TEXT}", "Content-Length: 10", V_ORIGIN))


def test_synthesized_204_has_no_content_headers():
    decision = decide(route(EXACT), request_info("OPTIONS", preflight(method="GET"), *SELF))
    assert decision.answer is not None and decision.answer.status == 204
    names = {n.lower() for n, _ in proxy_response_headers(decision, None, 0).headers}
    assert "content-length" not in names and "content-type" not in names


def test_apply_edits_does_not_mutate_its_input():
    upstream = H("Access-Control-Allow-Origin: *", "Vary: Accept")
    copy = list(upstream)
    decision = decide(route(EXACT), request_info("GET", [APP], *SELF))
    apply_edits(decision.edits, upstream)
    assert upstream == copy


def test_repeated_upstream_headers_survive():
    decision = decide(route(EXACT), request_info("GET", [APP], *SELF))
    result = apply_edits(decision.edits, H("Set-Cookie: a=1", "Set-Cookie: b=2"))
    assert [v for n, v in result.headers if n == "Set-Cookie"] == ["a=1", "b=2"]


def test_edits_are_precomputed_once_per_policies():
    r = route(EXACT)
    first = decide(r, request_info("GET", [], *SELF)).edits
    second = decide(r, request_info("GET", [], *SELF)).edits
    assert first is second  # the fixed tuple, not rebuilt per request


# ---------------------------------------------------------------------------------------------
# Properties

CONFIGS = [EXACT, WILDCARD, ANY_PORT, SUB_ANY_PORT, NULL, REGEX, STAR, STAR_ANY, FULL, CREDS_ANY, PNA, ENFORCE,
           DEFAULT, REMOVE, PASS, NO_CORS, UPSTREAM_PF, UPSTREAM_PF_ENFORCE, UPSTREAM_PF_DEFAULT, WITH_COOP,
           EXACT + CORP_SET + COOP_SET + COEP_DEFAULT + REP_SET]
SETTING_CONFIGS = [c for c in CONFIGS if c not in (DEFAULT, REMOVE, PASS, NO_CORS, UPSTREAM_PF_DEFAULT)]

header_names = st.sampled_from([
    "Origin", "origin", "Access-Control-Request-Method", "access-control-request-headers",
    "Access-Control-Request-Private-Network", "Host", "Accept", "X-Forwarded-Host",
])
header_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["https://app.test", "null", "", "https://a.example.test", "http://localhost:5173", "GET",
                     "PUT", "x-foo, content-type", "true", "https://app.test/", "*"]),
)
requests = st.lists(st.tuples(header_names, header_values), max_size=6)
methods = st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "get", "OPTIONS"]) | st.text(min_size=1, max_size=8)
response_names = st.sampled_from([
    "Access-Control-Allow-Origin", "access-control-allow-credentials", "Access-Control-Allow-Methods",
    "Access-Control-Expose-Headers", "Access-Control-Max-Age", "Vary", "vary", "Content-Type",
    "Cross-Origin-Opener-Policy", "Cross-Origin-Resource-Policy", "Reporting-Endpoints", "Set-Cookie",
])
responses = st.lists(st.tuples(response_names, header_values), max_size=6)
fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _values(result: EditResult, name: str) -> list[str]:
    return [v for n, v in result.headers if n.lower() == name]


@fast
@given(config=st.sampled_from(SETTING_CONFIGS), method=methods, headers=requests, upstream=responses,
       websocket=st.booleans())
def test_denied_origin_never_receives_acao(config, method, headers, upstream, websocket):
    decision, result = respond(config, method, headers, upstream, websocket)
    if decision.cors in ("denied", "preflight-denied") and not websocket:
        assert _values(result, "access-control-allow-origin") == []
        assert not any(n.lower().startswith("access-control-allow-") for n, _ in result.headers)


@fast
@given(config=st.sampled_from(CONFIGS), method=methods, headers=requests, upstream=responses)
def test_star_and_credentials_never_together_from_the_proxy(config, method, headers, upstream):
    # The upstream's own headers pass through in default/pass mode; the property is about ours.
    clean = [(n, v) for n, v in upstream if not n.lower().startswith("access-control-")]
    decision, result = respond(config, method, headers, clean)
    if "*" in _values(result, "access-control-allow-origin"):
        assert _values(result, "access-control-allow-credentials") == []


def _tokens(values: list[str]) -> set[str]:
    return {t.strip(" \t").lower() for v in values for t in v.split(",") if t.strip(" \t")}


@fast
@given(config=st.sampled_from(CONFIGS), method=methods, headers=requests, upstream=responses,
       vary=st.lists(st.text(max_size=20) | st.sampled_from(["Origin", "accept", "*", "ORIGIN, Cookie"]), max_size=3))
def test_vary_never_loses_an_upstream_token(config, method, headers, upstream, vary):
    upstream = upstream + [("Vary", v) for v in vary]
    decision = decide(route(config), request_info(method, headers, *SELF))
    result = apply_edits(decision.edits, upstream)
    before = _tokens([v for n, v in upstream if n.lower() == "vary"])
    after = _tokens(_values(result, "vary"))
    assert before <= after
    assert ("vary" in result.set_names) == (after != before)


@fast
@given(config=st.sampled_from(CONFIGS), method=methods, scheme=st.sampled_from(["http", "https", "HTTP", ""]),
       host=st.none() | st.text(max_size=20), headers=st.lists(st.tuples(st.text(min_size=1, max_size=30),
                                                                        st.text(max_size=60)), max_size=8) | requests,
       upstream=st.lists(st.tuples(st.text(min_size=1, max_size=30), st.text(max_size=60)), max_size=8) | responses,
       websocket=st.booleans())
def test_random_requests_never_crash(config, method, scheme, host, headers, upstream, websocket):
    info = request_info(method, headers, scheme, host)
    routing_method(info)
    decision = decide(route(config), info, websocket=websocket)
    apply_edits(decision.edits, upstream)
    proxy_response_headers(decision, TEXT, 10)
    proxy_response_headers(decision, None, 0)


# --- the decision cache ------------------------------------------------------------------------------


def test_a_repeated_request_gets_the_same_decision_and_another_origin_its_own():
    r = route(FULL)
    first = decide(r, request_info("OPTIONS", preflight(), *SELF))
    assert decide(r, request_info("OPTIONS", preflight(), *SELF)) is first
    other = decide(r, request_info("OPTIONS", preflight("https://evil.test"), *SELF))
    assert (first.cors, other.cors) == ("preflight-allowed", "preflight-denied")
    assert decide(r, request_info("OPTIONS", preflight(), *SELF)) is first


def test_the_decision_cache_is_bounded_and_skips_long_client_strings():
    r = route(FULL)
    cache = r.compiled.decisions
    for i in range(DECISION_CACHE_SIZE + 100):
        decide(r, request_info("GET", origin(f"https://{i}.evil.test"), *SELF))
    assert len(cache) == DECISION_CACHE_SIZE
    long_origin = "https://" + "a" * MAX_KEY_CHARS + ".test"
    before = decide(r, request_info("GET", origin(long_origin), *SELF))
    again = decide(r, request_info("GET", origin(long_origin), *SELF))
    assert before == again and before is not again  # recomputed, not remembered
