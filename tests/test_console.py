"""The console log (proxy/console.py): one readable line per request in the order a developer
scans it, colour only on a terminal, and cookie warnings a developer can act on; the JSON log
does not change."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from urllib.parse import quote

import pytest

from harness import PYTHON, WAIT, Coxp, free_port, http_request
from proxy.console import ConsoleRenderer, colours_wanted, cookie_warnings

APP = "http://localhost:5173"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LAX = "sid=abc; Path=/; HttpOnly; SameSite=Lax"


# --------------------------------------------------------------------------------------------
# the warnings, as pure functions


def warnings_for(origin=APP, host="127.0.0.1:8080", cors="allowed", credentials=True, cookie=False,
                 set_cookies=(LAX,)):
    return cookie_warnings(origin, host, cors, credentials, cookie, list(set_cookies), "api")


def test_a_cross_site_credentialed_response_setting_a_lax_cookie_is_warned_about():
    [warning] = warnings_for()
    assert 'cookie "sid"' in warning and APP in warning
    assert "the browser will not send this cookie back; see [routes.cookies]" in warning


@pytest.mark.parametrize("cookie", [
    "sid=abc; SameSite=None; Secure", "sid=abc;secure;samesite=none; Path=/", "sid=abc; Secure; SameSite = None",
])
def test_samesite_none_and_secure_is_fine(cookie):
    assert warnings_for(set_cookies=[cookie]) == []


@pytest.mark.parametrize("cookie", ["sid=abc; SameSite=None", "sid=abc; Secure", "sid=abc", "sid=abc; Secure; SameSite=Strict"])
def test_missing_either_attribute_is_warned_about(cookie):
    assert len(warnings_for(set_cookies=[cookie])) == 1


@pytest.mark.parametrize(("origin", "host"), [
    ("http://localhost:5173", "localhost:8080"),  # ports do not make sites
    ("https://app.example.test", "api.example.test"),  # one registrable domain
    ("http://[::1]:3000", "[::1]:8080"),
])
def test_same_site_pages_get_no_warning(origin, host):
    assert warnings_for(origin=origin, host=host) == []


@pytest.mark.parametrize(("origin", "host"), [
    ("http://localhost:5173", "127.0.0.1:8080"),
    ("https://app.example.test", "api.other.test"),
    ("https://a.github.io", "b.github.io"),  # a public suffix in between
])
def test_cross_site_pages_are_warned_about(origin, host):
    assert len(warnings_for(origin=origin, host=host)) == 1


def test_one_warning_per_bad_cookie_and_none_without_credentials_or_when_denied():
    assert len(warnings_for(set_cookies=[LAX, "theme=dark", "ok=1; SameSite=None; Secure"])) == 2
    assert warnings_for(credentials=False) == []
    assert warnings_for(cors="denied") == []
    assert warnings_for(origin=None) == []


def test_a_cookie_on_a_route_without_credentials_is_warned_about():
    [warning] = warnings_for(credentials=False, cookie=True, set_cookies=())
    assert 'route "api" does not allow credentials' in warning and "allow_credentials = true" in warning
    assert warnings_for(credentials=True, cookie=True, set_cookies=()) == []


# --------------------------------------------------------------------------------------------
# rendering


EVENT = {"event": "request", "status": 403, "method": "OPTIONS", "host": "localhost:8080", "path": "/api/x",
         "origin": "https://evil.test", "cors": "preflight-denied", "reason": "origin-not-allowed",
         "duration_ms": 0.42, "route": "api", "timestamp": "2026-12-01T05:30:07.123Z"}


def test_the_request_line_reads_status_method_url_origin_decision_ms():
    line = ConsoleRenderer(colours=False)(None, "info", dict(EVENT))
    assert ANSI.search(line) is None
    assert re.fullmatch(r"403 OPTIONS +localhost:8080/api/x +https://evil\.test +"
                        r"preflight-denied \(origin-not-allowed\) +0\.4 ms \[api\] 05:30:07", line), line


def test_colours_only_when_wanted(monkeypatch):
    coloured = ConsoleRenderer(colours=True)(None, "info", dict(EVENT))
    assert ANSI.sub("", coloured) == ConsoleRenderer(colours=False)(None, "info", dict(EVENT))
    assert "\x1b[31m" in coloured  # a denial is red

    class Terminal:
        def isatty(self):
            return True
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colours_wanted(Terminal()) is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert colours_wanted(Terminal()) is False


# --------------------------------------------------------------------------------------------
# end to end: coxp dev and coxp run


def cookie_target(cookie: str) -> str:
    return "/login?h=" + quote(f"Set-Cookie:{cookie}", safe=":")


def test_dev_console_line_and_cookie_warning_through_a_pipe(tmp_path, query_upstream):
    port = free_port()
    dev = Coxp(["-m", "proxy", "dev", "--upstream", query_upstream.url, "--listen", f"localhost:{port}"],
               cwd=tmp_path).start(ready=None)
    try:
        dev.wait_line(lambda line: "listening" in line)
        response = http_request(port, "POST", cookie_target(LAX), [("Origin", APP)], body=b"",
                                host=f"127.0.0.1:{port}")
        assert response.value("Set-Cookie") == LAX
        line = dev.wait_line(lambda line: "/login" in line)
        assert ANSI.search("\n".join(dev.lines)) is None  # not a terminal: plain text
        assert re.match(rf"200 POST +127\.0\.0\.1:{port}/login +{re.escape(APP)} +allowed +"
                        r"\d+\.\d ms \[dev\]", line), line
        warning = dev.wait_line(lambda line: "warning:" in line)
        assert 'cookie "sid"' in warning and "the browser will not send this cookie back; see [routes.cookies]" in warning
        assert dev.lines.index(warning) == dev.lines.index(line) + 1

        http_request(port, "POST", cookie_target("sid=abc; SameSite=None; Secure"), [("Origin", APP)], body=b"",
                     host=f"localhost:{port}")
        http_request(port, "POST", cookie_target(LAX), [("Origin", APP)], body=b"", host=f"localhost:{port}")
        dev.wait_for(lambda: sum(f"localhost:{port}/login" in line for line in dev.lines) == 2)
        assert sum("warning:" in line for line in dev.lines) == 1  # same-site, or None+Secure: nothing to fix
    finally:
        assert dev.stop() == 0


RUN = """
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
[log]
format = "{format}"
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["http://localhost:*"]
"""


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_cookie_on_a_route_without_credentials_warns_in_console_and_json_is_unchanged(coxp, query_upstream,
                                                                                           log_format):
    proxy = coxp(RUN.format(upstream=query_upstream.url, format=log_format), ready=None)
    line = proxy.wait_line(lambda line: "listening" in line)
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    http_request(port, "GET", cookie_target(LAX), [("Origin", APP), ("Cookie", "sid=1")], host=f"127.0.0.1:{port}")
    line = proxy.wait_line(lambda line: "/login" in line)
    if log_format == "json":
        event = json.loads(line)
        assert event["event"] == "request" and event["cors"] == "allowed"
        assert "host" not in event and "warnings" not in event  # console-only fields
        assert not any("warning" in line for line in proxy.lines)
    else:
        warning = proxy.wait_line(lambda line: "warning:" in line)
        assert 'does not allow credentials' in warning and "allow_credentials = true" in warning


def test_colours_on_a_terminal(tmp_path, query_upstream):
    """A pseudo-terminal as stdout, as when a developer runs coxp dev in a shell."""
    port = free_port()
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    process = subprocess.Popen([PYTHON, "-m", "proxy", "dev", "--upstream", query_upstream.url, "--listen",
                                f"localhost:{port}"], cwd=tmp_path, stdout=follower, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + WAIT
        requested = False
        while time.monotonic() < deadline and b"/hello" not in output:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                output += os.read(leader, 65536)
            if not requested and b"listening" in output:
                http_request(port, "GET", "/hello", [("Origin", APP)], host=f"localhost:{port}")
                requested = True
        time.sleep(0.2)
        while select.select([leader], [], [], 0.2)[0]:
            output += os.read(leader, 65536)
    finally:
        process.terminate()
        assert process.wait(WAIT) == 0
        os.close(leader)
    line = next(text for text in output.decode().splitlines() if "/hello" in text)
    assert "\x1b[1m\x1b[32m200\x1b[0m" in line  # a green, bold status
    assert ANSI.sub("", line).startswith("200 GET ")


COOKIES = """
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
[log]
format = "console"
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["http://localhost:*"]
allow_credentials = true
{cookies}
"""


@pytest.mark.parametrize("cookies", ["", '[routes.cookies]\nsamesite = "none"\nsecure = true\n'],
                         ids=["as-sent", "routes.cookies-fixes-it"])
def test_the_cookie_warning_judges_the_cookie_as_coxp_sends_it(coxp, query_upstream, cookies):
    proxy = coxp(COOKIES.format(upstream=query_upstream.url, cookies=cookies), ready=None)
    port = int(re.search(r"127\.0\.0\.1:(\d+)", proxy.wait_line(lambda line: "listening" in line)).group(1))
    response = http_request(port, "GET", cookie_target(LAX), [("Origin", APP)], host=f"127.0.0.1:{port}")
    proxy.wait_line(lambda line: "/login" in line)
    http_request(port, "GET", "/settle", [("Origin", APP)], host=f"127.0.0.1:{port}")
    proxy.wait_line(lambda line: "/settle" in line)  # any warning of /login was written before this line
    warned = any("will not send this cookie back" in line for line in proxy.lines)
    assert warned is (cookies == "")
    assert ("SameSite=None" in response.value("Set-Cookie")) is (cookies != "")
