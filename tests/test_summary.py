"""`coxp report` over the decision log of real traffic through coxp: outcomes by origin, denied
origins with reasons, shadow differences, reports by blocked resource, and suggested changes
naming the key to edit; `--json`, plain text when piped, rich tables on a terminal."""
from __future__ import annotations

import json
import os
import pty
import subprocess

import pytest

from harness import PYTHON, REPO, http_request, run_cli, start_coxp

A, B, EVIL = "https://a.example.test", "https://b.example.test", "https://evil.example.test"
CDN_IMG = "https://cdn.other.test/logo.png"

CONFIG = f"""
[proxy]
listen = "127.0.0.1:0"
upstream = "{{upstream}}"
[log]
format = "json"
[reports]

[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["{A}", "{B}"]
allow_methods = ["PUT"]
allow_headers = ["x-one"]
[routes.cors.shadow]
allow_origins = ["{A}"]
allow_methods = ["PUT"]
allow_headers = ["x-one"]

[[routes]]
name = "pages"
paths = ["/*"]
[routes.coep]
policy = "require-corp"
report_only = true
report_to = "default"
[routes.reporting]
endpoints = {{ default = "/.coxp/reports" }}
"""

COEP_REPORT = {"type": "coep", "url": f"{A}/page", "user_agent": "test",
               "body": {"type": "corp", "blockedURL": CDN_IMG, "disposition": "reporting", "destination": "image"}}


@pytest.fixture(scope="module")
def log(tmp_path_factory, query_upstream):
    """The log of a small day of staging traffic, and the config it ran under."""
    directory = tmp_path_factory.mktemp("summary")
    proxy = start_coxp(directory, CONFIG.replace("{upstream}", query_upstream.url), name="staging.toml")
    for _ in range(3):
        proxy.request("GET", "/api/items", [("Origin", EVIL)])
    for _ in range(2):
        proxy.request("GET", "/api/items", [("Origin", B)])
    proxy.request("GET", "/api/items", [("Origin", A)])
    proxy.request("OPTIONS", "/api/items", [("Origin", A), ("Access-Control-Request-Method", "PATCH")])
    proxy.request("OPTIONS", "/api/items", [("Origin", A), ("Access-Control-Request-Method", "PUT"),
                                            ("Access-Control-Request-Headers", "x-one, x-trace")])
    for _ in range(2):
        mark = proxy.mark()
        response = http_request(proxy.port, "POST", "/.coxp/reports", [("Content-Type", "application/reports+json")],
                                json.dumps([COEP_REPORT]).encode(), host="a.example.test")
        assert response.status == 204
        proxy.wait_event("report", start=mark)
    assert proxy.stop() == 0
    path = directory / "coxp.log"
    path.write_text("\n".join(proxy.lines + ["a line that is not JSON", "[1, 2]"]) + "\n")
    return path, directory / "staging.toml"


def report(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if stdin is None:
        return run_cli("report", *args)
    return subprocess.run([PYTHON, "-m", "proxy", "report", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, timeout=30)


def test_json_report_has_everything_a_person_acts_on(log):
    path, config = log
    result = report("--json", "-c", str(config), str(path))
    assert result.returncode == 0, result.stderr
    assert "2 of" in result.stderr and "skipped" in result.stderr  # the two non-object lines
    data = json.loads(result.stdout)
    assert data["skipped_lines"] == 2
    api = next(route for route in data["routes"] if route["route"] == "api")
    origins = {entry["origin"]: entry for entry in api["origins"]}
    assert origins[EVIL]["cors"] == {"denied": 3} and origins[B]["cors"] == {"allowed": 2}
    assert origins[A]["cors"] == {"allowed": 1, "preflight-denied": 2}
    denied = {(d["origin"], d["reason"], d["requested"]): d["count"] for d in api["denied"]}
    assert denied == {(EVIL, "origin-not-allowed", None): 3, (A, "method-not-allowed", "PATCH"): 1,
                      (A, "header-not-allowed", "x-one, x-trace"): 1}
    assert [(s["origin"], s["live"], s["candidate"], s["candidate_reason"], s["count"])
            for s in api["shadow_differences"]] == [(B, "allowed", "denied", "origin-not-allowed", 2)]
    (coep,) = data["reports"]
    assert (coep["type"], coep["blocked_url"], coep["count"], coep["documents"]) == ("coep", CDN_IMG, 2, [f"{A}/page"])

    suggestions = {(s["key"], s["change"]): s for s in data["suggestions"]}
    assert suggestions[("routes[0].cors.allow_origins", f'add "{EVIL}"')]["count"] == 3
    assert "seen 3 times, denied origin-not-allowed" in suggestions[("routes[0].cors.allow_origins", f'add "{EVIL}"')]["why"]
    assert ("routes[0].cors.allow_methods", 'add "PATCH"') in suggestions
    # x-one is allowed already: only the missing header is suggested
    assert ("routes[0].cors.allow_headers", 'add "x-trace"') in suggestions
    assert ("routes[0].cors.allow_headers", 'add "x-one"') not in suggestions
    assert suggestions[("routes[0].cors.shadow.allow_origins", f'add "{B}", or accept that it breaks')]["count"] == 2
    coep_fix = next(s for s in data["suggestions"] if s["key"] == "routes[1].coep.policy")
    assert coep_fix["count"] == 2 and CDN_IMG in coep_fix["why"]
    assert "Cross-Origin-Resource-Policy: cross-origin" in coep_fix["why"] and "credentialless" in coep_fix["why"]


def test_without_the_config_suggestions_name_the_route(log):
    path, _ = log
    data = json.loads(report("--json", str(path)).stdout)
    keys = {s["key"] for s in data["suggestions"]}
    assert 'route "api": cors.allow_origins' in keys and 'route "api": cors.allow_methods' in keys


def test_plain_text_when_piped(log):
    path, config = log
    result = report("-c", str(config), str(path))
    assert result.returncode == 0
    text = result.stdout
    assert "\x1b[" not in text  # no terminal escapes in a pipe
    for title in ("CORS outcomes by origin", "Denied origins", "Shadow differences", "Reports", "Suggested changes"):
        assert title in text
    assert any(EVIL in line and "denied 3" in line for line in text.splitlines())
    assert any(B in line and "allowed → denied" in line for line in text.splitlines())
    assert any(line.startswith("routes[0].cors.allow_origins") and EVIL in line for line in text.splitlines())


def test_stdin_and_dash(log):
    path, _ = log
    content = path.read_text()
    from_stdin = json.loads(report("--json", stdin=content).stdout)
    from_dash = json.loads(report("--json", "-", stdin=content).stdout)
    from_file = json.loads(report("--json", str(path)).stdout)
    assert from_stdin == from_dash == from_file


def test_a_missing_file_is_a_one_line_error(tmp_path):
    result = report(str(tmp_path / "nope.log"))
    assert result.returncode == 1 and result.stderr.strip().startswith("coxp report: ")
    assert "nope.log" in result.stderr and "Traceback" not in result.stderr


def test_rich_tables_on_a_terminal(log):
    path, config = log
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([PYTHON, "-m", "proxy", "report", "-c", str(config), str(path)],
                                   stdout=terminal, stderr=subprocess.PIPE, cwd=REPO,
                                   env={**os.environ, "COLUMNS": "200", "TERM": "xterm-256color"})
        os.close(terminal)
        terminal = -1
        output = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(30) == 0
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    text = output.decode("utf-8", "replace")
    assert "┃" in text or "│" in text  # rich's table borders
    assert "Suggested changes" in text and "routes[0].cors.allow_origins" in text  # not read as markup


def test_the_staging_example_config_end_to_end(tmp_path, query_upstream):
    """config/staging-hardening.toml as shipped (listen and upstream overridden): report-only
    isolation reported to the built-in collector, the API's candidate CORS table shadowing the
    live one, and `coxp report` naming what the candidate would break."""
    shipped = REPO / "config" / "staging-hardening.toml"
    proxy = start_coxp(tmp_path, shipped.read_text(), "--listen", "127.0.0.1:0", "--upstream", query_upstream.url,
                       name="staging-hardening.toml")
    page = proxy.request("GET", "/next/page")
    assert page.value("cross-origin-embedder-policy-report-only") == 'require-corp; report-to="default"'
    assert page.value("cross-origin-opener-policy-report-only") == 'same-origin; report-to="default"'
    assert page.value("reporting-endpoints") == 'default="/.coxp/reports"'
    legacy = "https://legacy.staging.example.test"
    preflight = proxy.request("OPTIONS", "/api/orders", [("Origin", legacy), ("Access-Control-Request-Method", "DELETE")])
    assert preflight.status == 204  # the live table still answers
    assert (preflight.event["shadow_cors"], preflight.event["shadow_reason"]) == ("preflight-denied", "origin-not-allowed")
    mark = proxy.mark()
    assert http_request(proxy.port, "POST", "/.coxp/reports", [("Content-Type", "application/reports+json")],
                        json.dumps([{**COEP_REPORT, "url": "https://app.staging.example.test/next/page"}]).encode(),
                        host="app.staging.example.test").status == 204
    proxy.wait_event("report", start=mark)
    assert proxy.stop() == 0
    log = tmp_path / "coxp.log"
    log.write_text("\n".join(proxy.lines) + "\n")
    data = json.loads(report("--json", "-c", str(shipped), str(log)).stdout)
    keys = {(s["key"], s["change"]) for s in data["suggestions"]}
    assert ("routes[1].cors.shadow.allow_origins", f'add "{legacy}", or accept that it breaks') in keys
    assert any(key == "defaults.coep.policy" for key, _ in keys)


def test_a_console_format_log_is_named_as_the_problem():
    result = report(stdin="2026-12-01T05:00:00Z [info     ] request   route=api cors=allowed\n")
    assert result.returncode == 0
    assert "1 of 1 lines skipped" in result.stderr and 'format = "json"' in result.stderr
