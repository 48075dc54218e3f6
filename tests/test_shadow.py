"""Shadow CORS policies (`[routes.cors.shadow]`) end to end: the response follows the live table,
the `request` event carries the candidate's decision, `coxp_shadow_diffs_total` counts the
differences, and `coxp explain` shows both decisions."""
from __future__ import annotations

import json

import pytest
from test_admin import samples

from harness import http_request, run_cli, start_coxp, unique

A, B, C = "https://a.example.test", "https://b.example.test", "https://c.example.test"

CONFIG = f"""
[proxy]
listen = "127.0.0.1:0"
upstream = "{{upstream}}"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"

[defaults.cors]
allow_origins = ["{A}"]
[defaults.cors.shadow]
allow_origins = ["{A}", "{C}"]

[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["{A}", "{B}"]
allow_methods = ["PUT", "DELETE"]
allow_headers = ["x-one", "x-two"]
allow_credentials = true
[routes.cors.shadow]        # the candidate: B, DELETE, x-two and credentials removed
allow_origins = ["{A}"]
allow_methods = ["PUT"]
allow_headers = ["x-one"]

[[routes]]
name = "plain"
paths = ["/plain/*"]
[routes.cors]
allow_origins = ["{A}"]

[[routes]]
name = "inherits"
paths = ["/inherits/*"]
"""

# (method, path, request headers, live cors, candidate cors, candidate reason)
CASES = [
    ("GET", "/api/x", [("Origin", B)], "allowed", "denied", "origin-not-allowed"),
    ("OPTIONS", "/api/x", [("Origin", A), ("Access-Control-Request-Method", "DELETE")],
     "preflight-allowed", "preflight-denied", "method-not-allowed"),
    ("OPTIONS", "/api/x", [("Origin", A), ("Access-Control-Request-Method", "PUT"),
                           ("Access-Control-Request-Headers", "x-one, X-Two")],
     "preflight-allowed", "preflight-denied", "header-not-allowed"),
    ("GET", "/api/x", [("Origin", A), ("Cookie", "session=1")], "allowed", "denied", "credentials-not-allowed"),
    ("GET", "/api/x", [("Origin", A), ("Authorization", "Bearer t")], "allowed", "denied", "credentials-not-allowed"),
    # no difference
    ("GET", "/api/x", [("Origin", A)], "allowed", "allowed", None),
    ("OPTIONS", "/api/x", [("Origin", A), ("Access-Control-Request-Method", "PUT"),
                           ("Access-Control-Request-Headers", "x-one")], "preflight-allowed", "preflight-allowed", None),
    ("GET", "/api/x", [], "not-cors", "not-cors", None),
    # the candidate of [defaults.cors] is inherited with it, and may allow more than the live table
    ("GET", "/inherits/x", [("Origin", C)], "denied", "allowed", None),
    ("GET", "/elsewhere", [("Origin", C)], "denied", "allowed", None),
]


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory, query_upstream):
    process = start_coxp(tmp_path_factory.mktemp("shadow"), CONFIG.replace("{upstream}", query_upstream.url))
    yield process
    process.stop()


def metrics(proxy) -> dict:
    port = int(proxy.events[0]["admin"].rpartition(":")[2])
    text = http_request(port, "GET", "/metrics", host=f"127.0.0.1:{port}").body.decode()
    return samples(text, "coxp_shadow_diffs_total")


@pytest.mark.parametrize("method, path, headers, live, candidate, reason", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[4]}-{c[5]}" for c in CASES])
def test_candidate_is_logged_and_the_response_follows_the_live_table(shadowed, method, path, headers, live,
                                                                       candidate, reason):
    before = metrics(shadowed)
    response = shadowed.request(method, f"{path}?{unique()}", headers)
    event = response.event
    assert (event["cors"], event["shadow_cors"], event["shadow_reason"]) == (live, candidate, reason)
    # the live table answers: an allowed origin gets its headers whatever the candidate says
    origin = dict(headers).get("Origin")
    if live in ("allowed", "preflight-allowed"):
        assert response.value("access-control-allow-origin") == origin
    else:
        assert response.value("access-control-allow-origin") is None
    if live == "preflight-allowed":
        assert response.status == 204
    if path.startswith("/api/") and live == "allowed":
        assert response.value("access-control-allow-credentials") == "true"
    after = metrics(shadowed)
    key = (("live", live), ("route", event["route"]), ("shadow", candidate))
    assert after.get(key, 0) - before.get(key, 0) == (1 if live != candidate else 0)


def test_routes_without_a_candidate_log_no_shadow_fields(shadowed):
    event = shadowed.request("GET", "/plain/x", [("Origin", A)]).event
    assert event["cors"] == "allowed"
    assert "shadow_cors" not in event and "shadow_reason" not in event


def test_a_candidate_is_a_complete_table_of_its_own(tmp_path):
    """Nothing is inherited from the live table: a candidate without allow_origins is an error,
    and its own keys default as in any CORS table."""
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace("{upstream}", "http://127.0.0.1:9") + '\n[routes.cors]\nallow_origins = ["*"]\n'
                    "[routes.cors.shadow]\nallow_methods = [\"PUT\"]\n")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2
    assert "routes[2].cors.shadow.allow_origins: allows no origin" in result.stderr
    path.write_text(CONFIG.replace("{upstream}", "http://127.0.0.1:9") + '\n[routes.cors]\nallow_origins = ["*"]\n'
                    '[routes.cors.shadow]\nallow_origins = ["*"]\nshadow = {}\n')
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2 and "routes[2].cors.shadow.shadow: unknown key" in result.stderr


def explain(config, *args: str):
    return run_cli("explain", "-c", str(config), *args)


def test_explain_shows_both_decisions(tmp_path):
    config = tmp_path / "shadow.toml"
    config.write_text(CONFIG.replace("{upstream}", "http://127.0.0.1:9"))
    preflight = ["-X", "OPTIONS", "-H", f"Origin: {A}", "-H", "Access-Control-Request-Method: DELETE",
                 "http://api.test/api/x"]
    text = explain(config, *preflight)
    assert text.returncode == 0, text.stderr
    assert "classification: preflight-allowed" in text.stdout
    assert ("shadow:         preflight-denied (method-not-allowed): the [cors.shadow] candidate, not applied; "
            "differs from live") in text.stdout
    as_json = json.loads(explain(config, "--json", *preflight).stdout)
    assert (as_json["cors"], as_json["shadow_cors"], as_json["shadow_reason"]) == (
        "preflight-allowed", "preflight-denied", "method-not-allowed")
    assert as_json["status"] == 204  # the live table answers

    same = json.loads(explain(config, "--json", "-H", f"Origin: {A}", "http://api.test/api/x").stdout)
    assert (same["cors"], same["shadow_cors"], same["shadow_reason"]) == ("allowed", "allowed", None)
    assert "same as live" in explain(config, "-H", f"Origin: {A}", "http://api.test/api/x").stdout
    credentialed = json.loads(explain(config, "--json", "-H", f"Origin: {A}", "-H", "Cookie: a=1",
                                      "http://api.test/api/x").stdout)
    assert (credentialed["shadow_cors"], credentialed["shadow_reason"]) == ("denied", "credentials-not-allowed")

    plain = json.loads(explain(config, "--json", "-H", f"Origin: {A}", "http://api.test/plain/x").stdout)
    assert "shadow_cors" not in plain
    assert "shadow:" not in explain(config, "-H", f"Origin: {A}", "http://api.test/plain/x").stdout
