"""The policy engine end to end (README, "Configuration walk-through"): a real coxp process in front of a real upstream.

Each case is one row: the config (a name in CONFIGS), the request, what the upstream answers,
and the expected status, the *exact* set of non-transport response headers (anything extra
fails), whether the upstream saw the request, and the decision-log classification. For answers
the proxy makes itself, the body and `Content-Type` are checked too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest

from harness import norm, unique

ORIGIN = "https://app.example.test"
TEXT = "text/plain; charset=utf-8"

VARY_O = ("Vary", "Origin")
VARY_PF = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
VARY_PF_STAR = ("Vary", "Access-Control-Request-Method, Access-Control-Request-Headers")

HEAD = """
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
read_timeout = 1.0
[log]
format = "json"
"""

CONFIGS = {
    # Every CORS behaviour, one route per path prefix.
    "cors": HEAD + """
[[routes]]
name = "creds"
paths = ["/creds/*"]
[routes.cors]
allow_origins = ["https://app.example.test", "https://*.example.test", "http://localhost:*"]
allow_methods = ["PUT", "DELETE", "patch"]
allow_headers = ["X-Custom", "Content-Type"]
expose_headers = ["X-Total", "X-Request-Id"]
allow_credentials = true
max_age = 600

[[routes]]
name = "star"
paths = ["/star/*"]
[routes.cors]
allow_origins = ["*"]
allow_methods = ["PUT"]
expose_headers = ["X-Total"]

[[routes]]
name = "enforce"
paths = ["/enforce/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
enforce = true

[[routes]]
name = "pna"
paths = ["/pna/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_private_network = true

[[routes]]
name = "anything"
paths = ["/any/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["*"]
allow_headers = ["*"]
max_age = 0

[[routes]]
name = "dflt"
paths = ["/default/*"]
[routes.cors]
mode = "default"
allow_origins = ["https://app.example.test"]
expose_headers = ["X-Total"]

[[routes]]
name = "remove"
paths = ["/remove/*"]
[routes.cors]
mode = "remove"

[[routes]]
name = "pass"
paths = ["/pass/*"]
[routes.cors]
mode = "pass"

[[routes]]
name = "up-pf"
paths = ["/uppf/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["PUT"]
preflight = "upstream"

[[routes]]
name = "up-pf-default"
paths = ["/uppfd/*"]
[routes.cors]
mode = "default"
allow_origins = ["https://app.example.test"]
allow_methods = ["PUT"]
preflight = "upstream"

[[routes]]
name = "up-pf-enforce"
paths = ["/uppfe/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
preflight = "upstream"
enforce = true

[[routes]]
name = "delete-only"
paths = ["/m/*"]
methods = ["DELETE"]
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["DELETE"]

[[routes]]
name = "m-other"
paths = ["/m/*"]

[[routes]]
name = "plain"
paths = ["/plain/*"]
""",
    # CORP/COOP/COEP/Reporting with [defaults] inheritance, overrides and every mode.
    "isolation": HEAD + """
[defaults.cors]
allow_origins = ["https://app.example.test"]
[defaults.corp]
policy = "same-site"
[defaults.coop]
policy = "same-origin"
[defaults.coep]
policy = "require-corp"
report_to = "default"
[defaults.reporting]
endpoints = { default = "https://reports.example.test/r" }

[[routes]]
name = "inherit"
paths = ["/inherit/*"]

[[routes]]
name = "override"
paths = ["/override/*"]
[routes.cors]
mode = "pass"
[routes.corp]
mode = "pass"
[routes.coop]
policy = "same-origin-allow-popups"
report_to = "coop"
report_only = true
[routes.coep]
mode = "remove"
[routes.reporting]
endpoints = { default = "https://reports.example.test/a", coop = "https://reports.example.test/b" }

[[routes]]
name = "dflt"
paths = ["/dflt/*"]
[routes.corp]
mode = "default"
policy = "cross-origin"
[routes.coop]
mode = "default"
policy = "noopener-allow-popups"
[routes.coep]
mode = "default"
policy = "credentialless"
report_only = true
[routes.reporting]
mode = "remove"
""",
    # No [proxy].upstream: unmatched requests are the proxy's 404 of route `default`.
    "no-upstream": """
[proxy]
listen = "127.0.0.1:0"
[log]
format = "json"
[defaults.cors]
allow_origins = ["https://app.example.test"]
[defaults.coop]
policy = "same-origin"

[[routes]]
name = "api"
paths = ["/api/*"]
upstream = "{upstream}"
""",
    # Upstream failures: a closed port (502) and a slow upstream (504), with policies; and
    # bodies over [limits] max_body_bytes (413, answered before the upstream is contacted).
    "failures": HEAD.replace("read_timeout = 1.0", "read_timeout = 0.5\nconnect_timeout = 2.0") + """
[limits]
max_body_bytes = 10
[defaults.corp]
policy = "same-origin"
[defaults.coop]
policy = "same-origin"
[defaults.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["PUT"]

[[routes]]
name = "dead"
paths = ["/dead/*"]
upstream = "http://127.0.0.1:{closed}"

[[routes]]
name = "slow"
paths = ["/slow/*"]

[[routes]]
name = "enf"
paths = ["/enf/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
enforce = true
""",
    # Origin forms beyond the basics: regex, literal null, expose "*", same-origin normalisation.
    "more": HEAD + """
[[routes]]
name = "regex"
paths = ["/regex/*"]
[routes.cors]
allow_origin_regex = ['https://pr-[0-9]+\\.preview\\.test']

[[routes]]
name = "null"
paths = ["/null/*"]
[routes.cors]
allow_origins = ["null", "https://app.example.test"]
expose_headers = ["*"]

[[routes]]
name = "star-default"
paths = ["/stard/*"]
[routes.cors]
mode = "default"
allow_origins = ["*"]

[[routes]]
name = "ports"
paths = ["/ports/*"]
[routes.cors]
allow_origins = ["https://app.example.test:8443", "http://*.localhost:*"]
""",
    # Behind a trusted load balancer: X-Forwarded-Proto/-Host define the request's own origin.
    "trusted": HEAD.replace("read_timeout = 1.0", 'trusted_proxies = ["127.0.0.1"]') + """
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["https://app.example.test"]
""",
    "untrusted": HEAD.replace("read_timeout = 1.0", 'trusted_proxies = ["10.0.0.0/8"]') + """
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["https://app.example.test"]
""",
}


def _closed_port() -> int:
    from harness import free_port

    return free_port()  # bound then released: nothing listens there


CLOSED = _closed_port()


@dataclass
class Case:
    id: str
    config: str
    method: str
    path: str
    headers: list = field(default_factory=list)
    upstream: list = field(default_factory=list)  # headers the upstream adds to its answer
    status: int = 200
    expect: list = field(default_factory=list)  # exact non-transport response headers
    forwarded: bool = True
    cors: str | None = None
    reason: str | None = None
    route: str | None = None
    body: str | None = None  # proxy-made answers: the exact body
    host: str | None = None  # the Host header (default 127.0.0.1:PORT)
    query: str = ""  # extra query for the upstream (e.g. sleep=2)


def O(origin=ORIGIN):  # noqa: E743 - reads as a header in the tables
    return ("Origin", origin)


def PF(method, headers=None, origin=ORIGIN):  # noqa: N802
    out = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if headers is not None:
        out.append(("Access-Control-Request-Headers", headers))
    return out


CREDS = [("Access-Control-Allow-Credentials", "true"), ("Access-Control-Expose-Headers", "x-total, x-request-id")]
UP_CORS = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Credentials", "false"),
           ("Access-Control-Expose-Headers", "X-Secret"), ("Access-Control-Max-Age", "5"),
           ("Access-Control-Allow-Methods", "GET")]
CREDS_PF = [("Access-Control-Allow-Credentials", "true"), ("Access-Control-Allow-Methods", "PUT, DELETE, patch"),
            ("Access-Control-Allow-Headers", "x-custom, content-type"), ("Access-Control-Max-Age", "600")]

CORS_CASES = [
    # --- actual requests, credentials route ------------------------------------------------
    Case("allowed-exact", "cors", "GET", "/creds/a", [O()], cors="allowed", route="creds",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS, VARY_O]),
    Case("allowed-subdomain-any-depth", "cors", "POST", "/creds/a", [O("https://x.y.example.test")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "https://x.y.example.test"), *CREDS, VARY_O]),
    Case("echo-byte-for-byte", "cors", "GET", "/creds/a", [O("HTTPS://App.Example.TEST:443")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "HTTPS://App.Example.TEST:443"), *CREDS, VARY_O]),
    Case("port-wildcard", "cors", "GET", "/creds/a", [O("http://localhost:5173")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "http://localhost:5173"), *CREDS, VARY_O]),
    Case("port-wildcard-no-port", "cors", "GET", "/creds/a", [O("http://localhost")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "http://localhost"), *CREDS, VARY_O]),
    Case("upstream-cors-replaced", "cors", "GET", "/creds/a", [O()], upstream=UP_CORS, cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS, VARY_O]),
    Case("denied-apex", "cors", "GET", "/creds/a", [O("https://example.test")], cors="denied",
         reason="origin-not-allowed", expect=[VARY_O]),
    Case("denied-upstream-cors-removed", "cors", "GET", "/creds/a", [O("https://evil.test")], upstream=UP_CORS,
         cors="denied", reason="origin-not-allowed", expect=[VARY_O]),
    Case("denied-trailing-slash", "cors", "GET", "/creds/a", [O(ORIGIN + "/")], cors="denied",
         reason="origin-not-allowed", expect=[VARY_O]),
    Case("denied-null-not-listed", "cors", "GET", "/creds/a", [O("null")], cors="denied",
         reason="origin-not-allowed", expect=[VARY_O]),
    Case("denied-empty-origin", "cors", "GET", "/creds/a", [O("")], cors="denied",
         reason="origin-not-allowed", expect=[VARY_O]),
    Case("denied-two-origin-lines", "cors", "GET", "/creds/a", [O(), O()], cors="denied",
         reason="origin-not-allowed", expect=[VARY_O]),
    Case("not-cors-no-acao", "cors", "GET", "/creds/a", [], upstream=UP_CORS, cors="not-cors", expect=[VARY_O]),
    Case("same-origin-no-acao", "cors", "GET", "/creds/a", [O("http://app.example.test")],
         host="app.example.test", cors="same-origin", expect=[VARY_O]),
    Case("options-without-acrm-is-actual", "cors", "OPTIONS", "/creds/a", [O()], cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS, VARY_O]),
    Case("actual-method-not-checked", "cors", "PROPFIND", "/creds/a", [O()], cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS, VARY_O]),
    # --- Vary merging ------------------------------------------------------------------------
    Case("vary-appended", "cors", "GET", "/creds/a", [O()], upstream=[("Vary", "Accept-Encoding")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS, ("Vary", "Accept-Encoding, Origin")]),
    Case("vary-no-duplicate", "cors", "GET", "/creds/a", [O()], upstream=[("Vary", "accept, origin")],
         cors="allowed", expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS, ("Vary", "accept, origin")]),
    Case("vary-lines-combined", "cors", "GET", "/creds/a", [], upstream=[("Vary", "Accept"), ("Vary", "Cookie")],
         cors="not-cors", expect=[("Vary", "Accept, Cookie, Origin")]),
    Case("vary-star-kept", "cors", "GET", "/creds/a", [O()], upstream=[("Vary", "*")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS, ("Vary", "*")]),
    # --- synthesized preflights ---------------------------------------------------------------
    Case("preflight-allowed", "cors", "OPTIONS", "/creds/a", PF("PUT", "X-Custom, content-type"), status=204,
         forwarded=False, cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS_PF, VARY_PF]),
    Case("preflight-safelisted-no-headers", "cors", "OPTIONS", "/creds/a", PF("GET"), status=204, forwarded=False,
         cors="preflight-allowed", body="", expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS_PF, VARY_PF]),
    Case("preflight-lowercase-method-listed", "cors", "OPTIONS", "/creds/a", PF("patch"), status=204,
         forwarded=False, cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS_PF, VARY_PF]),
    Case("preflight-headers-split-lines", "cors", "OPTIONS", "/creds/a",
         [*PF("PUT", "x-custom"), ("Access-Control-Request-Headers", " Content-Type ,, X-CUSTOM ")], status=204,
         forwarded=False, cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), *CREDS_PF, VARY_PF]),
    Case("preflight-denied-origin", "cors", "OPTIONS", "/creds/a", PF("PUT", origin="https://evil.test"),
         status=403, forwarded=False, cors="preflight-denied", reason="origin-not-allowed",
         body="origin-not-allowed: CORS preflight denied\n", expect=[VARY_PF]),
    Case("preflight-denied-method-case", "cors", "OPTIONS", "/creds/a", PF("PATCH"), status=403, forwarded=False,
         cors="preflight-denied", reason="method-not-allowed", body="method-not-allowed: CORS preflight denied\n",
         expect=[VARY_PF]),
    Case("preflight-denied-lowercase-get", "cors", "OPTIONS", "/creds/a", PF("get"), status=403, forwarded=False,
         cors="preflight-denied", reason="method-not-allowed", body="method-not-allowed: CORS preflight denied\n",
         expect=[VARY_PF]),
    Case("preflight-denied-method-list", "cors", "OPTIONS", "/creds/a", PF("GET, DELETE"), status=403,
         forwarded=False, cors="preflight-denied", reason="method-not-allowed",
         body="method-not-allowed: CORS preflight denied\n", expect=[VARY_PF]),
    Case("preflight-denied-two-acrm-lines", "cors", "OPTIONS", "/creds/a",
         [*PF("PUT"), ("Access-Control-Request-Method", "PUT")], status=403, forwarded=False,
         cors="preflight-denied", reason="method-not-allowed", body="method-not-allowed: CORS preflight denied\n",
         expect=[VARY_PF]),
    Case("preflight-denied-header", "cors", "OPTIONS", "/creds/a", PF("PUT", "x-custom, authorization"),
         status=403, forwarded=False, cors="preflight-denied", reason="header-not-allowed",
         body="header-not-allowed: CORS preflight denied\n", expect=[VARY_PF]),
    Case("preflight-denied-private-network", "cors", "OPTIONS", "/creds/a",
         [*PF("PUT"), ("Access-Control-Request-Private-Network", "true")], status=403, forwarded=False,
         cors="preflight-denied", reason="private-network-not-allowed",
         body="private-network-not-allowed: CORS preflight denied\n", expect=[VARY_PF]),
    Case("pna-allowed", "cors", "OPTIONS", "/pna/a", [*PF("GET"), ("Access-Control-Request-Private-Network", "true")],
         status=204, forwarded=False, cors="preflight-allowed", route="pna", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Private-Network", "true"), VARY_PF]),
    Case("pna-not-asked", "cors", "OPTIONS", "/pna/a", PF("GET"), status=204, forwarded=False,
         cors="preflight-allowed", body="", expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_PF]),
    Case("star-methods-headers-echo", "cors", "OPTIONS", "/any/a", PF("PROPFIND", "Authorization, X-Foo"),
         status=204, forwarded=False, cors="preflight-allowed", route="anything", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Methods", "PROPFIND"),
                 ("Access-Control-Allow-Headers", "Authorization, X-Foo"), ("Access-Control-Max-Age", "0"), VARY_PF]),
    Case("star-headers-none-requested", "cors", "OPTIONS", "/any/a", PF("PUT"), status=204, forwarded=False,
         cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Methods", "PUT"),
                 ("Access-Control-Max-Age", "0"), VARY_PF]),
    # --- "*" origins ----------------------------------------------------------------------------
    Case("star-no-origin", "cors", "GET", "/star/a", [], upstream=[("Vary", "Accept")], cors="not-cors",
         route="star",
         expect=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "x-total"),
                 ("Vary", "Accept")]),
    Case("star-origin", "cors", "GET", "/star/a", [O("https://anyone.test")], upstream=UP_CORS, cors="allowed",
         expect=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "x-total")]),
    Case("star-null", "cors", "GET", "/star/a", [O("null")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "x-total")]),
    Case("star-malformed", "cors", "GET", "/star/a", [O("https://x.test/path")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "x-total")]),
    Case("star-empty", "cors", "GET", "/star/a", [O("")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "x-total")]),
    Case("star-same-origin", "cors", "GET", "/star/a", [O("http://app.example.test")], host="app.example.test",
         cors="same-origin",
         expect=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "x-total")]),
    Case("star-preflight-allowed", "cors", "OPTIONS", "/star/a", PF("PUT", origin="null"), status=204,
         forwarded=False, cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "PUT"), VARY_PF_STAR]),
    Case("star-preflight-denied", "cors", "OPTIONS", "/star/a", PF("DELETE"), status=403, forwarded=False,
         cors="preflight-denied", reason="method-not-allowed", body="method-not-allowed: CORS preflight denied\n",
         expect=[VARY_PF_STAR]),
    # --- enforce ---------------------------------------------------------------------------------
    Case("enforce-denied-403", "cors", "POST", "/enforce/a", [O("https://evil.test")], status=403, forwarded=False,
         cors="denied", reason="origin-not-allowed", route="enforce", body="origin-not-allowed: CORS request denied\n",
         expect=[VARY_O]),
    Case("enforce-allowed", "cors", "POST", "/enforce/a", [O()], cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O]),
    Case("enforce-same-origin-passes", "cors", "POST", "/enforce/a", [O("http://api.example.test")],
         host="api.example.test", cors="same-origin", expect=[VARY_O]),
    Case("enforce-no-origin-passes", "cors", "POST", "/enforce/a", [], cors="not-cors", expect=[VARY_O]),
    # --- default mode ----------------------------------------------------------------------------
    Case("default-upstream-silent", "cors", "GET", "/default/a", [O()], route="dflt", cors="allowed",
         upstream=[("Access-Control-Allow-Credentials", "true"), ("Access-Control-Expose-Headers", "X-Up")],
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Expose-Headers", "x-total"), VARY_O]),
    Case("default-upstream-acao-kept", "cors", "GET", "/default/a", [O()], cors="allowed",
         upstream=[("Access-Control-Allow-Origin", "https://up.test"), ("Access-Control-Expose-Headers", "X-Up"),
                   ("Vary", "Accept")],
         expect=[("Access-Control-Allow-Origin", "https://up.test"), ("Access-Control-Expose-Headers", "X-Up"),
                 ("Vary", "Accept")]),
    Case("default-not-cors-upstream-acao", "cors", "GET", "/default/a", [], cors="not-cors",
         upstream=[("Access-Control-Allow-Origin", "*")], expect=[("Access-Control-Allow-Origin", "*")]),
    Case("default-denied-upstream-acao-kept", "cors", "GET", "/default/a", [O("https://evil.test")], cors="denied",
         reason="origin-not-allowed", upstream=[("Access-Control-Allow-Origin", "*")],
         expect=[("Access-Control-Allow-Origin", "*")]),
    Case("default-denied-silent-upstream", "cors", "GET", "/default/a", [O("https://evil.test")], cors="denied",
         reason="origin-not-allowed", expect=[VARY_O]),
    # --- remove / pass / no table ---------------------------------------------------------------
    Case("remove", "cors", "GET", "/remove/a", [O()], cors="off", route="remove",
         upstream=[*UP_CORS, ("Vary", "Accept"), ("X-Up", "1")], expect=[("Vary", "Accept"), ("X-Up", "1")]),
    Case("remove-preflight-forwarded", "cors", "OPTIONS", "/remove/a", PF("PUT"), cors="off",
         upstream=UP_CORS, expect=[]),
    Case("pass", "cors", "GET", "/pass/a", [O("https://evil.test")], cors="off", route="pass",
         upstream=UP_CORS, expect=UP_CORS),
    Case("pass-preflight-forwarded", "cors", "OPTIONS", "/pass/a", PF("PUT"), cors="off", upstream=UP_CORS,
         expect=UP_CORS),
    Case("no-table", "cors", "GET", "/plain/a", [O()], cors="off", route="plain", upstream=UP_CORS, expect=UP_CORS),
    # --- preflight = "upstream" -----------------------------------------------------------------
    Case("upstream-preflight-allowed", "cors", "OPTIONS", "/uppf/a", PF("PUT"), route="up-pf",
         cors="preflight-allowed", upstream=[*UP_CORS, ("X-Up", "1")],
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Methods", "PUT"), ("X-Up", "1"),
                 VARY_PF]),
    Case("upstream-preflight-status-kept", "cors", "OPTIONS", "/uppf/a", PF("PUT"), cors="preflight-allowed",
         query="status=204", status=204, expect=[("Access-Control-Allow-Origin", ORIGIN),
                                                  ("Access-Control-Allow-Methods", "PUT"), VARY_PF]),
    Case("upstream-preflight-denied-method", "cors", "OPTIONS", "/uppf/a", PF("DELETE"), cors="preflight-denied",
         reason="method-not-allowed", upstream=[*UP_CORS, ("Access-Control-Allow-Private-Network", "true")],
         expect=[VARY_PF]),
    Case("upstream-preflight-denied-origin", "cors", "OPTIONS", "/uppf/a", PF("PUT", origin="https://evil.test"),
         cors="preflight-denied", reason="origin-not-allowed", upstream=UP_CORS, expect=[VARY_PF]),
    Case("upstream-preflight-default-kept", "cors", "OPTIONS", "/uppfd/a", PF("DELETE"), route="up-pf-default",
         cors="preflight-denied", reason="method-not-allowed",
         upstream=[("Access-Control-Allow-Origin", "https://up.test"), ("Access-Control-Allow-Methods", "DELETE")],
         expect=[("Access-Control-Allow-Origin", "https://up.test"), ("Access-Control-Allow-Methods", "DELETE")]),
    Case("upstream-preflight-default-silent", "cors", "OPTIONS", "/uppfd/a", PF("PUT"), cors="preflight-allowed",
         upstream=[("Access-Control-Allow-Methods", "GET")],
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Methods", "PUT"), VARY_PF]),
    Case("upstream-preflight-enforce-denied", "cors", "OPTIONS", "/uppfe/a", PF("PUT", origin="https://evil.test"),
         route="up-pf-enforce", status=403, forwarded=False, cors="preflight-denied", reason="origin-not-allowed",
         body="origin-not-allowed: CORS preflight denied\n", expect=[VARY_PF]),
    Case("upstream-preflight-enforce-allowed-origin", "cors", "OPTIONS", "/uppfe/a", PF("PUT"),
         cors="preflight-denied", reason="method-not-allowed", upstream=UP_CORS, expect=[VARY_PF]),
    # --- routing a preflight by Access-Control-Request-Method -----------------------------------
    Case("route-by-acrm", "cors", "OPTIONS", "/m/a", PF("DELETE"), status=204, forwarded=False,
         route="delete-only", cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Methods", "DELETE"), VARY_PF]),
    Case("route-by-acrm-other", "cors", "OPTIONS", "/m/a", PF("PUT"), route="m-other", cors="off", expect=[]),
    Case("route-actual-delete", "cors", "DELETE", "/m/a", [O()], route="delete-only", cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O]),
    Case("route-options-without-acrm", "cors", "OPTIONS", "/m/a", [O()], route="m-other", cors="off", expect=[]),
]

ISO = [("Cross-Origin-Resource-Policy", "same-site"), ("Cross-Origin-Opener-Policy", "same-origin"),
       ("Cross-Origin-Embedder-Policy", 'require-corp; report-to="default"'),
       ("Reporting-Endpoints", 'default="https://reports.example.test/r"')]
UP_ISO = [("Cross-Origin-Resource-Policy", "cross-origin"), ("Cross-Origin-Opener-Policy", "unsafe-none"),
          ("Cross-Origin-Opener-Policy-Report-Only", "same-origin"), ("Cross-Origin-Embedder-Policy", "unsafe-none"),
          ("Cross-Origin-Embedder-Policy-Report-Only", "require-corp"), ("Reporting-Endpoints", 'x="https://u.test/"')]

ISOLATION_CASES = [
    Case("inherit-all", "isolation", "GET", "/inherit/a", [O()], route="inherit", cors="allowed",
         expect=[*ISO, ("Access-Control-Allow-Origin", ORIGIN), VARY_O]),
    Case("inherit-replaces-upstream", "isolation", "GET", "/inherit/a", [], cors="not-cors", upstream=UP_ISO,
         expect=[*ISO, VARY_O]),
    Case("default-route-inherits", "isolation", "GET", "/elsewhere", [], route="default", cors="not-cors",
         upstream=UP_ISO, expect=[*ISO, VARY_O]),
    Case("override-modes", "isolation", "GET", "/override/a", [O()], route="override", cors="off", upstream=UP_ISO,
         expect=[("Cross-Origin-Resource-Policy", "cross-origin"),
                 ("Cross-Origin-Opener-Policy-Report-Only", 'same-origin-allow-popups; report-to="coop"'),
                 ("Reporting-Endpoints",
                  'default="https://reports.example.test/a", coop="https://reports.example.test/b"')]),
    Case("override-upstream-silent", "isolation", "GET", "/override/a", [], cors="off",
         expect=[("Cross-Origin-Opener-Policy-Report-Only", 'same-origin-allow-popups; report-to="coop"'),
                 ("Reporting-Endpoints",
                  'default="https://reports.example.test/a", coop="https://reports.example.test/b"')]),
    Case("default-mode-upstream-silent", "isolation", "GET", "/dflt/a", [], route="dflt", cors="not-cors",
         upstream=[("Reporting-Endpoints", 'x="https://u.test/"')],
         expect=[("Cross-Origin-Resource-Policy", "cross-origin"),
                 ("Cross-Origin-Opener-Policy", "noopener-allow-popups"),
                 ("Cross-Origin-Embedder-Policy-Report-Only", "credentialless"), VARY_O]),
    Case("default-mode-upstream-kept", "isolation", "GET", "/dflt/a", [], cors="not-cors",
         upstream=[("Cross-Origin-Resource-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "unsafe-none"),
                   ("Cross-Origin-Embedder-Policy", "require-corp")],
         expect=[("Cross-Origin-Resource-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "unsafe-none"),
                 ("Cross-Origin-Embedder-Policy", "require-corp"), VARY_O]),
    Case("default-mode-report-only-counts", "isolation", "GET", "/dflt/a", [], cors="not-cors",
         upstream=[("Cross-Origin-Opener-Policy-Report-Only", "same-origin")],
         expect=[("Cross-Origin-Resource-Policy", "cross-origin"),
                 ("Cross-Origin-Opener-Policy-Report-Only", "same-origin"),
                 ("Cross-Origin-Embedder-Policy-Report-Only", "credentialless"), VARY_O]),
    Case("preflight-204-carries-policies", "isolation", "OPTIONS", "/inherit/a", PF("GET"), status=204,
         forwarded=False, cors="preflight-allowed", body="",
         expect=[*ISO, ("Access-Control-Allow-Origin", ORIGIN), VARY_PF]),
    Case("preflight-403-carries-policies", "isolation", "OPTIONS", "/inherit/a", PF("PUT"), status=403,
         forwarded=False, cors="preflight-denied", reason="method-not-allowed",
         body="method-not-allowed: CORS preflight denied\n", expect=[*ISO, VARY_PF]),
]

PROXY_MADE_CASES = [
    Case("no-upstream-404-allowed", "no-upstream", "GET", "/nowhere", [O()], status=404, forwarded=False,
         route="default", cors="allowed",
         body="not-found: no route matches and no upstream is configured\n",
         expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O, ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("no-upstream-404-not-cors", "no-upstream", "GET", "/nowhere", [], status=404, forwarded=False,
         route="default", cors="not-cors", body="not-found: no route matches and no upstream is configured\n",
         expect=[VARY_O, ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("no-upstream-route-with-upstream", "no-upstream", "GET", "/api/a", [O()], route="api", cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O, ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("502-allowed", "failures", "GET", "/dead/a", [O()], status=502, forwarded=False, route="dead",
         cors="allowed", expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O,
                                 ("Cross-Origin-Resource-Policy", "same-origin"),
                                 ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("502-denied", "failures", "GET", "/dead/a", [O("https://evil.test")], status=502, forwarded=False,
         cors="denied", reason="origin-not-allowed",
         expect=[VARY_O, ("Cross-Origin-Resource-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("504-allowed", "failures", "GET", "/slow/a", [O()], status=504, route="slow", cors="allowed",
         query="sleep=3", expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O,
                                  ("Cross-Origin-Resource-Policy", "same-origin"),
                                  ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("enforce-403-policies", "failures", "GET", "/enf/a", [O("https://evil.test")], status=403, forwarded=False,
         route="enf", cors="denied", reason="origin-not-allowed", body="origin-not-allowed: CORS request denied\n",
         expect=[VARY_O, ("Cross-Origin-Resource-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("413-allowed", "failures", "POST", "/enf/a", [O(), ("Content-Length", "11")], status=413, forwarded=False,
         route="enf", cors="allowed", body="body-too-large\n",
         expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O, ("Cross-Origin-Resource-Policy", "same-origin"),
                 ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("413-denied-before-any-upstream", "failures", "POST", "/dead/a", [O("https://evil.test"), ("Content-Length", "11")],
         status=413, forwarded=False, route="dead", cors="denied", reason="origin-not-allowed", body="body-too-large\n",
         expect=[VARY_O, ("Cross-Origin-Resource-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("enforce-403-before-413", "failures", "POST", "/enf/a", [O("https://evil.test"), ("Content-Length", "11")],
         status=403, forwarded=False, route="enf", cors="denied", reason="origin-not-allowed",
         body="origin-not-allowed: CORS request denied\n",
         expect=[VARY_O, ("Cross-Origin-Resource-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")]),
    Case("preflight-on-dead-route", "failures", "OPTIONS", "/dead/a", PF("PUT"), status=204, forwarded=False,
         cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Methods", "PUT"), VARY_PF,
                 ("Cross-Origin-Resource-Policy", "same-origin"), ("Cross-Origin-Opener-Policy", "same-origin")]),
]

FORWARDED_CASES = [
    Case("trusted-xfp-defines-same-origin", "trusted", "GET", "/a",
         [O(), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.example.test")], cors="same-origin",
         expect=[VARY_O]),
    Case("trusted-without-xf-is-cross-origin", "trusted", "GET", "/a", [O()], host="app.example.test",
         cors="allowed", expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O]),
    Case("trusted-first-xfh-value-and-scheme-case", "trusted", "GET", "/a",
         [O(), ("X-Forwarded-Proto", "HTTPS"), ("X-Forwarded-Host", "app.example.test, lb.internal")],
         cors="same-origin", expect=[VARY_O]),
    Case("trusted-xfh-other-host", "trusted", "GET", "/a",
         [O(), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "api.example.test")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O]),
    Case("untrusted-xfp-ignored", "untrusted", "GET", "/a",
         [O(), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.example.test")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", ORIGIN), VARY_O]),
]

MORE_CASES = [
    Case("regex-normalised-echoed", "more", "GET", "/regex/a", [O("HTTPS://PR-12.Preview.test:443")], route="regex",
         cors="allowed", expect=[("Access-Control-Allow-Origin", "HTTPS://PR-12.Preview.test:443"), VARY_O]),
    Case("regex-full-match-only", "more", "GET", "/regex/a", [O("https://pr-12.preview.test.evil.test")],
         cors="denied", reason="origin-not-allowed", expect=[VARY_O]),
    Case("regex-preflight", "more", "OPTIONS", "/regex/a", PF("POST", origin="https://pr-7.preview.test"),
         status=204, forwarded=False, cors="preflight-allowed", body="",
         expect=[("Access-Control-Allow-Origin", "https://pr-7.preview.test"), VARY_PF]),
    Case("null-listed", "more", "GET", "/null/a", [O("null")], route="null", cors="allowed",
         expect=[("Access-Control-Allow-Origin", "null"), ("Access-Control-Expose-Headers", "*"), VARY_O]),
    Case("null-case-sensitive", "more", "GET", "/null/a", [O("NULL")], cors="denied", reason="origin-not-allowed",
         expect=[VARY_O]),
    Case("star-default-upstream-silent", "more", "GET", "/stard/a", [], route="star-default", cors="not-cors",
         upstream=[("Vary", "Accept")], expect=[("Access-Control-Allow-Origin", "*"), ("Vary", "Accept")]),
    Case("star-default-upstream-kept", "more", "GET", "/stard/a", [O()], cors="allowed",
         upstream=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Credentials", "true")],
         expect=[("Access-Control-Allow-Origin", ORIGIN), ("Access-Control-Allow-Credentials", "true")]),
    Case("explicit-port", "more", "GET", "/ports/a", [O("https://app.example.test:8443")], route="ports",
         cors="allowed", expect=[("Access-Control-Allow-Origin", "https://app.example.test:8443"), VARY_O]),
    Case("explicit-port-other-port", "more", "GET", "/ports/a", [O()], cors="denied", reason="origin-not-allowed",
         expect=[VARY_O]),
    Case("subdomain-and-port-wildcard", "more", "GET", "/ports/a", [O("http://a.b.localhost:3000")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "http://a.b.localhost:3000"), VARY_O]),
    Case("subdomain-wildcard-not-apex", "more", "GET", "/ports/a", [O("http://localhost:3000")], cors="denied",
         reason="origin-not-allowed", expect=[VARY_O]),
    Case("same-origin-default-port-in-host", "more", "GET", "/ports/a", [O("http://app.example.test")],
         host="app.example.test:80", cors="same-origin", expect=[VARY_O]),
    Case("same-origin-default-port-in-origin", "more", "GET", "/ports/a", [O("http://app.example.test:80")],
         host="App.Example.Test", cors="same-origin", expect=[VARY_O]),
    Case("not-same-origin-other-scheme", "more", "GET", "/ports/a", [O("https://app.example.test:8443")],
         host="app.example.test:8443", cors="allowed",
         expect=[("Access-Control-Allow-Origin", "https://app.example.test:8443"), VARY_O]),
    Case("upstream-header-name-case", "more", "GET", "/ports/a", [O("http://x.localhost")], cors="allowed",
         upstream=[("access-control-allow-origin", "*"), ("ACCESS-CONTROL-EXPOSE-HEADERS", "a"), ("VARY", "accept")],
         expect=[("Access-Control-Allow-Origin", "http://x.localhost"), ("VARY", "accept, Origin")]),
    Case("head-request", "more", "HEAD", "/ports/a", [O("http://x.localhost")], cors="allowed",
         expect=[("Access-Control-Allow-Origin", "http://x.localhost"), VARY_O]),
    Case("304-response", "more", "GET", "/ports/a", [O("http://x.localhost")], query="status=304", status=304,
         cors="allowed", upstream=[("ETag", '"v1"')],
         expect=[("Access-Control-Allow-Origin", "http://x.localhost"), ("ETag", '"v1"'), VARY_O]),
]

ALL_CASES = CORS_CASES + ISOLATION_CASES + PROXY_MADE_CASES + FORWARDED_CASES + MORE_CASES


def config_text(name: str) -> str:
    return CONFIGS[name].replace("{closed}", str(CLOSED))


def run_case(pool, case: Case):
    proxy = pool.get(config_text(case.config))
    marker = unique()
    query = urlencode([("h", f"{n}: {v}") for n, v in case.upstream])
    target = case.path + "?" + "&".join(q for q in (marker, case.query, query) if q)
    response = proxy.request(case.method, target, case.headers, host=case.host)
    return proxy, marker, response


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_policy_end_to_end(coxp_pool, query_upstream, case: Case):
    _, marker, response = run_case(coxp_pool, case)
    seen = query_upstream.saw(marker)
    assert response.status == case.status, (response.status, response.body)
    assert response.policy == norm(case.expect)
    assert len(seen) == (1 if case.forwarded else 0), "the upstream saw the request" if seen else "not forwarded"
    if case.forwarded and case.status < 500:  # the upstream's own body, whatever the edits
        no_body = case.method == "HEAD" or case.status in (204, 304)
        assert response.body == (b"" if no_body else f"upstream {case.method}".encode())
    if case.body is not None:
        assert response.body == case.body.encode()
        if case.body:
            assert response.value("Content-Type") == TEXT
            assert response.value("Content-Length") == str(len(case.body))
        else:
            assert response.value("Content-Length") is None and response.value("Content-Type") is None
    event = response.event
    assert event["status"] == case.status
    assert event["upstream_status"] == (case.status if case.forwarded and case.status < 500 else None)
    if case.cors is not None:
        assert event["cors"] == case.cors
    assert event["reason"] == case.reason
    if case.route is not None:
        assert event["route"] == case.route


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.status in (502, 504)], ids=lambda c: c.id)
def test_proxy_made_failure_bodies_name_the_failure(coxp_pool, query_upstream, case: Case):
    _, _, response = run_case(coxp_pool, case)
    assert response.value("Content-Type") == TEXT
    assert response.body.startswith(str(case.status).encode()) and response.body.endswith(b"\n")
    assert response.body.count(b"\n") == 1


def test_header_bookkeeping_in_the_log(coxp_pool, query_upstream):
    """headers_set lists every header set or changed (vary when merged); headers_removed every
    policy header removed; a replaced header is in both."""
    case = Case("x", "cors", "GET", "/creds/a", [O()],
                upstream=[("Access-Control-Allow-Origin", "*"), ("Access-Control-Max-Age", "5"), ("Vary", "Accept")])
    _, _, response = run_case(coxp_pool, case)
    event = response.event
    assert sorted(event["headers_set"]) == sorted(
        ["access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers", "vary"])
    assert sorted(event["headers_removed"]) == ["access-control-allow-origin", "access-control-max-age"]

    case = Case("x", "cors", "GET", "/creds/a", [O()], upstream=[("Vary", "Origin")])
    _, _, response = run_case(coxp_pool, case)
    assert "vary" not in response.event["headers_set"]
    assert response.event["headers_removed"] == []

    case = Case("x", "cors", "GET", "/pass/a", [O()], upstream=UP_CORS)
    _, _, response = run_case(coxp_pool, case)
    assert response.event["headers_set"] == [] and response.event["headers_removed"] == []


def test_preflight_is_never_forwarded_even_with_a_body(coxp_pool, query_upstream):
    proxy = coxp_pool.get(config_text("cors"))
    marker = unique()
    response = proxy.request("OPTIONS", f"/creds/a?{marker}", PF("PUT"), body=b"ignored")
    assert response.status == 204
    assert query_upstream.saw(marker) == []


def test_forwarded_headers_from_trusted_and_untrusted_peers(coxp_pool, query_upstream):
    incoming = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.example.test"),
                ("X-Forwarded-For", "203.0.113.7")]
    trusted = coxp_pool.get(config_text("trusted"))
    marker = unique()
    trusted.request("GET", f"/a?{marker}", incoming)
    (seen,) = query_upstream.saw(marker)
    assert seen.values("X-Forwarded-Proto") == ["https"]
    assert seen.values("X-Forwarded-Host") == ["app.example.test"]
    assert seen.values("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]

    untrusted = coxp_pool.get(config_text("untrusted"))
    marker = unique()
    untrusted.request("GET", f"/a?{marker}", incoming)
    (seen,) = query_upstream.saw(marker)
    assert seen.values("X-Forwarded-Proto") == ["http"]
    assert seen.values("X-Forwarded-Host") == [f"127.0.0.1:{untrusted.port}"]
    assert seen.values("X-Forwarded-For") == ["127.0.0.1"]


# --------------------------------------------------------------------------------------------
# `coxp explain` and the server agree


def _explain_cli(capsysbinary, config_path, case: Case, url: str) -> dict:
    import json

    from proxy.cli import main

    argv = ["explain", "-c", str(config_path), "-X", case.method, "--json", url]
    for name, value in case.headers:
        argv += ["-H", f"{name}: {value}"]
    for name, value in case.upstream:
        argv += ["--upstream-header", f"{name}: {value}"]
    if case.host is not None:
        argv += ["-H", f"Host: {case.host}"]
    assert main(argv) == 0
    return json.loads(capsysbinary.readouterr().out)


# Explain has no peer address (trusted proxies) and no real upstream to fail (502/504).
AGREEMENT_CASES = [c for c in ALL_CASES if c.config not in ("trusted", "untrusted") and c.status < 500]


def test_explain_and_server_agree(coxp_pool, query_upstream, tmp_path, capsysbinary):
    """Every row of the table, through the running server and through `coxp explain --json`
    (the CLI entry point, in-process): same route, classification, reason, status for
    proxy-made answers, and the same policy headers."""
    from harness import policy_view

    checked = 0
    for case in AGREEMENT_CASES:
        proxy, _, response = run_case(coxp_pool, case)
        path = tmp_path / f"{case.config}.toml"
        path.write_text(config_text(case.config).replace("{upstream}", query_upstream.url))
        url = f"http://{case.host or f'127.0.0.1:{proxy.port}'}{case.path}"
        explained = _explain_cli(capsysbinary, path, case, url)
        context = f"{case.id}: explain={explained}"
        assert explained["route"] == response.event["route"], context
        assert explained["cors"] == response.event["cors"], context
        assert explained["reason"] == response.event["reason"], context
        assert explained["answered_by_proxy"] == (not case.forwarded), context
        if not case.forwarded:
            assert explained["status"] == response.status, context
        assert policy_view([tuple(h) for h in explained["headers"]]) == response.policy, context
        assert sorted(explained["headers_set"]) == sorted(response.event["headers_set"]), context
        assert sorted(explained["headers_removed"]) == sorted(response.event["headers_removed"]), context
        checked += 1
    assert checked > 60


# --------------------------------------------------------------------------------------------
# WebSocket upgrades: CORS headers do not apply to the 101; `enforce` does (README)

WS_CASES = [
    # (id, path, request headers, upstream's 101 headers, status, exact policy headers, cors, reaches upstream)
    ("ws-star-no-acao", "/star/ws", [O("https://anyone.test")], [], 101, [], "allowed", True),
    ("ws-allowed-no-cors-headers", "/creds/ws", [O()], [], 101, [], "allowed", True),
    ("ws-denied-not-enforced", "/creds/ws", [O("https://evil.test")], [], 101, [], "denied", True),
    ("ws-enforce-denied-403", "/enforce/ws", [O("https://evil.test")], [], 403, [VARY_O], "denied", False),
    ("ws-enforce-allowed", "/enforce/ws", [O()], [], 101, [], "allowed", True),
    ("ws-enforce-same-origin", "/enforce/ws", [O("http://api.example.test")], [], 101, [], "same-origin", True),
]


def test_explain_and_server_agree_on_websocket_handshakes(coxp_pool, query_upstream, tmp_path, capsysbinary):
    """Every WebSocket row through the running server and `coxp explain --json` given the same
    handshake: no CORS headers on a 101, `enforce`'s 403 with its policy headers."""
    from harness import policy_view, websocket_handshake

    proxy = coxp_pool.get(config_text("cors"))
    path = tmp_path / "cors.toml"
    path.write_text(config_text("cors").replace("{upstream}", query_upstream.url))
    hop = {"upgrade", "sec-websocket-accept"}
    for case_id, target, headers, _, status, _, cors, _ in WS_CASES:
        host = "api.example.test" if cors == "same-origin" else f"127.0.0.1:{proxy.port}"
        mark = proxy.mark()
        got, response_headers, sock = websocket_handshake(proxy.port, target, headers, host=host)
        sock.close()
        event = proxy.wait_event("request", start=mark)
        handshake = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
        case = Case(case_id, "cors", "GET", target, [*handshake, *headers], host=host)
        explained = _explain_cli(capsysbinary, path, case, f"http://{host}{target}")
        context = f"{case_id}: explain={explained}"
        assert got == status, context
        assert (explained["route"], explained["cors"], explained["reason"]) == \
            (event["route"], event["cors"], event["reason"]), context
        assert explained["answered_by_proxy"] == (status != 101), context
        assert explained["status"] == (None if status == 101 else status), context
        server_view = [h for h in policy_view(response_headers) if h[0] not in hop]
        assert policy_view([tuple(h) for h in explained["headers"]]) == server_view, context
        assert sorted(explained["headers_set"]) == sorted(event["headers_set"]), context
        assert sorted(explained["headers_removed"]) == sorted(event["headers_removed"]), context


@pytest.mark.parametrize("path, headers, up, status, expect, cors, reaches",
                         [c[1:] for c in WS_CASES], ids=[c[0] for c in WS_CASES])
def test_websocket_upgrade_policies(coxp_pool, query_upstream, path, headers, up, status, expect, cors, reaches):
    from harness import policy_view, websocket_echo, websocket_handshake

    proxy = coxp_pool.get(config_text("cors"))
    marker = unique()
    query = urlencode([("h", f"{n}: {v}") for n, v in up])
    mark = proxy.mark()
    host = "api.example.test" if cors == "same-origin" else None
    got, response_headers, sock = websocket_handshake(proxy.port, f"{path}?{marker}&{query}", headers, host=host)
    try:
        assert got == status
        hop = {"upgrade", "sec-websocket-accept"}
        assert [h for h in policy_view(response_headers) if h[0] not in hop] == norm(expect)
        if status == 101:
            assert websocket_echo(sock, "hi") == "echo hi"
    finally:
        sock.close()
    assert len(query_upstream.saw(marker)) == (1 if reaches else 0)
    event = proxy.wait_event("request", start=mark)
    assert (event["cors"], event["status"]) == (cors, status)
