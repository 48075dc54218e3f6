"""`coxp learn` round trip through running proxies: traffic under a permissive config, learn the
tightest config from its log, replay the same traffic under it — nothing observed is denied — and
an origin, method or header never seen is."""
from __future__ import annotations

import subprocess
import tomllib

from harness import PYTHON, REPO, run_cli, start_coxp

A, B, C = "https://a.example.test", "https://b.example.test:8443", "http://localhost:3000"
NEVER = "https://never.example.test"

# A legacy backend fronted in `default` mode: whatever the callers are, they get through.
LEGACY = """# The legacy API, fronted for staging.
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
[log]
format = "json"

[defaults.cors]
mode = "default"
allow_origins = ["*"]

[[routes]]
name = "api"        # the JSON API
paths = ["/api/*"]
[routes.cors]
mode = "default"
allow_origins = ["*"]
allow_methods = ["*"]
allow_headers = ["*"]
expose_headers = ["x-request-id"]
max_age = 600

[[routes]]
name = "auth"
paths = ["/auth/*"]
[routes.cors]
mode = "set"
allow_origin_regex = ["https://.*\\\\.example\\\\.test"]
allow_credentials = true
max_age = 60

[[routes]]
name = "quiet"
paths = ["/quiet/*"]
[routes.corp]
policy = "same-site"
"""

# (method, path, headers): what the real callers did
TRAFFIC = [
    ("GET", "/api/items", [("Origin", A)]),
    ("GET", "/api/items", [("Origin", A)]),
    ("OPTIONS", "/api/items", [("Origin", A), ("Access-Control-Request-Method", "PATCH"),
                               ("Access-Control-Request-Headers", "Content-Type, X-Trace-Id")]),
    ("PATCH", "/api/items", [("Origin", A), ("Content-Type", "application/json"), ("X-Trace-Id", "1")]),
    ("OPTIONS", "/api/items", [("Origin", B), ("Access-Control-Request-Method", "DELETE")]),
    ("GET", "/api/items", [("Origin", B), ("Cookie", "session=1")]),
    ("GET", "/auth/me", [("Origin", A), ("Cookie", "session=1")]),
    ("GET", "/other", [("Origin", C)]),
    ("GET", "/api/items", []),  # not cross-origin: nothing to learn
]


def run(proxy, traffic) -> list[dict]:
    return [proxy.request(method, path, headers).event for method, path, headers in traffic]


def learn(config, log) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "proxy", "learn", "-c", str(config)], input=log, capture_output=True,
                          text=True, cwd=REPO, timeout=30)


def test_learn_round_trip(tmp_path, query_upstream):
    legacy = start_coxp(tmp_path, LEGACY.replace("{upstream}", query_upstream.url), name="legacy.toml")
    events = run(legacy, TRAFFIC)
    assert not [e for e in events if e["cors"] in ("denied", "preflight-denied")]
    assert legacy.stop() == 0

    result = learn(tmp_path / "legacy.toml", "\n".join(legacy.lines) + "\n")
    assert result.returncode == 0, result.stderr
    learned_text = result.stdout
    (tmp_path / "learned.toml").write_text(learned_text)
    check = run_cli("check", "-c", str(tmp_path / "learned.toml"))
    assert check.returncode == 0, check.stderr

    learned = tomllib.loads(learned_text)
    api, auth, quiet = learned["routes"]
    # exactly what was seen: origins, non-safelisted methods as sent, header names lower-cased
    assert sorted(api["cors"]["allow_origins"]) == sorted([A, B])
    assert api["cors"]["allow_methods"] == ["DELETE", "PATCH"]
    assert api["cors"]["allow_headers"] == ["content-type", "x-trace-id"]
    assert api["cors"]["allow_credentials"] is True
    # the live table's other keys stay
    assert (api["cors"]["mode"], api["cors"]["max_age"], api["cors"]["expose_headers"]) == ("default", 600, ["x-request-id"])
    assert "allow_origin_regex" not in auth["cors"] and auth["cors"]["allow_origins"] == [A]
    assert auth["cors"]["allow_credentials"] is True and auth["cors"]["max_age"] == 60
    assert learned["defaults"]["cors"] == {"mode": "default", "allow_origins": [C]}
    # a route without traffic keeps the table it had, though [defaults.cors] it inherited changed
    assert quiet["cors"] == {"mode": "default", "allow_origins": ["*"]} and quiet["corp"] == {"policy": "same-site"}
    # each origin commented with its count; the user's own comments are kept
    assert f'"{A}", # 3 requests, 1 preflight' in learned_text
    assert f'"{B}", # 1 request, 1 preflight' in learned_text
    assert 'name = "api"        # the JSON API' in learned_text

    tight = start_coxp(tmp_path, learned_text, name="learned.toml")
    replayed = run(tight, TRAFFIC)
    assert [e["cors"] for e in replayed] == [e["cors"] for e in events]
    assert not [e for e in replayed if e["cors"] in ("denied", "preflight-denied")]
    # what was never seen is denied now
    never = run(tight, [
        ("GET", "/api/items", [("Origin", NEVER)]),
        ("OPTIONS", "/api/items", [("Origin", A), ("Access-Control-Request-Method", "PUT")]),
        ("OPTIONS", "/api/items", [("Origin", A), ("Access-Control-Request-Method", "PATCH"),
                                   ("Access-Control-Request-Headers", "x-other")]),
        ("GET", "/auth/me", [("Origin", "https://z.example.test")]),
        ("GET", "/other", [("Origin", A)]),
    ])
    assert [(e["cors"], e["reason"]) for e in never] == [
        ("denied", "origin-not-allowed"), ("preflight-denied", "method-not-allowed"),
        ("preflight-denied", "header-not-allowed"), ("denied", "origin-not-allowed"), ("denied", "origin-not-allowed"),
    ]
    assert tight.stop() == 0


def test_routes_without_traffic_keep_their_tables_and_notes_go_to_stderr(tmp_path):
    config = tmp_path / "legacy.toml"
    config.write_text(LEGACY.replace("{upstream}", "http://127.0.0.1:9"))
    log = "\n".join([
        '{"event": "request", "route": "gone", "origin": "https://x.test", "cors": "allowed"}',
        '{"event": "request", "route": "api", "origin": "https://x.test/path", "cors": "allowed"}',
        '{"event": "request", "route": "quiet", "origin": "https://x.test", "cors": "off"}',
        '{"event": "request", "route": "api", "origin": "https://x.test", "cors": "preflight-allowed", '
        '"preflight_method": "delete", "preflight_headers": []}',
        "not json",
    ])
    result = learn(config, log)
    assert result.returncode == 0, result.stderr
    assert 'route "gone" is in the log but not in the config' in result.stderr
    assert "https://x.test/path" in result.stderr and "not a serialized origin" in result.stderr
    assert "method 'delete' (1 preflight) cannot be listed" in result.stderr
    assert "1 of 5 lines skipped" in result.stderr
    learned = tomllib.loads(result.stdout)
    assert learned["routes"][0]["cors"]["allow_origins"] == ["https://x.test"]
    assert "allow_methods" not in learned["routes"][0]["cors"]
    assert learned["routes"][1:] == tomllib.loads(config.read_text())["routes"][1:]
    assert learned["defaults"] == tomllib.loads(config.read_text())["defaults"]


def test_a_config_that_does_not_load_is_refused(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[proxy]\nlisten = 1\n")
    result = learn(config, "")
    assert result.returncode == 2 and "proxy.listen" in result.stderr
