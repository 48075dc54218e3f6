"""The decision log (README, "The decision log"): one `request` event per request with every field,
`listening`, `upstream_error`, `config_reloaded`/`config_error` on SIGHUP, JSON-only stdout."""
from __future__ import annotations

import json
import re
import signal
import socket
from datetime import datetime

import pytest

from harness import free_port, http_request

ORIGIN = "https://app.example.test"
FIELDS = {"event", "timestamp", "level", "route", "method", "path", "origin", "cors", "reason", "headers_set",
          "headers_removed", "status", "upstream_status", "duration_ms", "preflight_method", "preflight_headers",
          "credentials"}

CONFIG = """
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
read_timeout = 0.5
[log]
format = "json"

[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["PUT"]
[routes.corp]
policy = "same-site"

[[routes]]
name = "dead"
paths = ["/dead/*"]
upstream = "http://127.0.0.1:{closed}"
"""


@pytest.fixture
def proxy(coxp, query_upstream):
    return coxp(CONFIG.replace("{upstream}", query_upstream.url).replace("{closed}", str(free_port())))


# (request, expected fields of its `request` event)
LOG_CASES = [
    (("GET", "/api/a%2Fb//c?x=1&h=Access-Control-Allow-Origin:*", [("Origin", ORIGIN)]),
     dict(route="api", method="GET", path="/api/a%2Fb//c", origin=ORIGIN, cors="allowed", reason=None, status=200,
          upstream_status=200, headers_set=["access-control-allow-origin", "vary", "cross-origin-resource-policy"],
          headers_removed=["access-control-allow-origin"])),
    (("POST", "/api/a?status=201", [("Origin", "https://evil.test")]),
     dict(route="api", method="POST", path="/api/a", origin="https://evil.test", cors="denied",
          reason="origin-not-allowed", status=201, upstream_status=201,
          headers_set=["vary", "cross-origin-resource-policy"], headers_removed=[])),
    (("GET", "/api/a", []),
     dict(route="api", origin=None, cors="not-cors", reason=None, status=200, upstream_status=200)),
    (("GET", "/api/a", [("Origin", "http://logs.test")]),
     dict(route="api", origin="http://logs.test", cors="same-origin", reason=None)),
    (("OPTIONS", "/api/a", [("Origin", ORIGIN), ("Access-Control-Request-Method", "PUT")]),
     dict(route="api", method="OPTIONS", cors="preflight-allowed", reason=None, status=204, upstream_status=None)),
    (("OPTIONS", "/api/a", [("Origin", ORIGIN), ("Access-Control-Request-Method", "PUT"),
                            ("Access-Control-Request-Headers", "x-nope")]),
     dict(cors="preflight-denied", reason="header-not-allowed", status=403, upstream_status=None)),
    (("OPTIONS", "/api/a", [("Origin", ORIGIN), ("Access-Control-Request-Method", "PUT"),
                            ("Access-Control-Request-Private-Network", "true")]),
     dict(cors="preflight-denied", reason="private-network-not-allowed", status=403)),
    (("OPTIONS", "/api/a", [("Origin", "https://evil.test"), ("Access-Control-Request-Method", "GET")]),
     dict(cors="preflight-denied", reason="origin-not-allowed", status=403)),
    (("OPTIONS", "/api/a", [("Origin", ORIGIN), ("Access-Control-Request-Method", "DELETE")]),
     dict(cors="preflight-denied", reason="method-not-allowed", status=403)),
    (("GET", "/elsewhere?q", [("Origin", ORIGIN)]),
     dict(route="default", path="/elsewhere", origin=ORIGIN, cors="off", reason=None, headers_set=[],
          headers_removed=[], status=200, upstream_status=200)),
    (("GET", "/dead/x", [("Origin", ORIGIN)]),
     dict(route="dead", cors="off", status=502, upstream_status=None)),
    (("GET", "/api/slow?sleep=3", []),
     dict(route="api", cors="not-cors", status=504, upstream_status=None)),
]


def test_one_request_event_per_request_with_every_field(proxy):
    for (method, target, headers), expected in LOG_CASES:
        host = "logs.test" if any(v == "http://logs.test" for _, v in headers) else None
        response = proxy.request(method, target, headers, host=host)
        event = response.event
        assert set(event) >= FIELDS, FIELDS - set(event)
        assert event["event"] == "request" and event["level"] == "info"
        assert datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).tzinfo is not None
        assert isinstance(event["duration_ms"], (int, float)) and event["duration_ms"] >= 0
        assert event["status"] == response.status
        assert event["method"] == method
        for key in ("headers_set", "headers_removed"):
            assert all(name == name.lower() for name in event[key])
        for key, value in expected.items():
            if key in ("headers_set", "headers_removed"):
                assert sorted(event[key]) == sorted(value), (target, key, event)
            else:
                assert event[key] == value, (target, key, event)
    assert proxy.stop() == 0
    requests = [e for e in proxy.events if e["event"] == "request"]
    assert len(requests) == len(LOG_CASES)
    # every stdout line is one JSON object
    assert all(isinstance(json.loads(line), dict) for line in proxy.lines)
    assert len(proxy.lines) == len(proxy.events)


def test_listening_event(proxy):
    listening = proxy.events[0]
    assert listening["event"] == "listening" and listening["level"] == "info"
    host, _, port = listening["listen"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert http_request(int(port), "GET", "/elsewhere", host="x.test").status == 200


def test_upstream_error_event(proxy):
    response = proxy.request("GET", "/dead/x")
    assert response.status == 502
    error = proxy.wait_event("upstream_error")
    assert error["level"] in ("warning", "error")
    assert error["upstream"].startswith("http://127.0.0.1:")
    assert error["path"] == "/dead/x" and error["reason"]
    assert response.body.decode().startswith("502") and error["reason"] in response.body.decode()


def test_bad_requests_are_bad_request_events_not_request_events(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /api/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    event = proxy.wait_event("bad_request")
    assert event["status"] == 400 and event["reason"]
    assert proxy.stop() == 0
    assert [e["event"] for e in proxy.events] == ["listening", "bad_request"]


ALLOW_OTHER = 'allow_origins = ["https://app.example.test", "https://other.example.test"]'


def test_sighup_reloads_a_valid_config(proxy, tmp_path):
    other = [("Origin", "https://other.example.test")]
    assert proxy.request("GET", "/api/a", other).event["cors"] == "denied"
    path = tmp_path / "coxp.toml"
    path.write_text(path.read_text().replace('allow_origins = ["https://app.example.test"]', ALLOW_OTHER))
    mark = proxy.mark()
    proxy.signal(signal.SIGHUP)
    reloaded = proxy.wait_event("config_reloaded", start=mark)
    assert reloaded["level"] == "info"
    response = proxy.request("GET", "/api/a", other)
    assert response.event["cors"] == "allowed"
    assert response.value("Access-Control-Allow-Origin") == "https://other.example.test"


def test_sighup_applies_a_new_log_level(proxy, tmp_path):
    path = tmp_path / "coxp.toml"
    path.write_text(path.read_text().replace('format = "json"', 'format = "json"\nlevel = "warning"'))
    proxy.signal(signal.SIGHUP)
    # `config_reloaded` is itself an info event, so the reload shows in what follows: a failing
    # request still logs its `upstream_error` warning, but no longer its info `request` event.
    # Lines are written in order, so the second warning comes after the first request's event.
    for _ in range(20):
        mark = proxy.mark()
        for _ in range(2):
            assert http_request(proxy.port, "GET", "/dead/x", [], host=f"127.0.0.1:{proxy.port}").status == 502

        def warnings(mark: int = mark) -> list[int]:
            return [i for i, e in enumerate(proxy.events[mark:]) if e.get("event") == "upstream_error"]

        assert proxy.wait_for(lambda: len(warnings()) == 2)
        events = [e["event"] for e in proxy.events[mark : mark + warnings()[1] + 1]]
        if events == ["upstream_error", "upstream_error"]:
            break
    else:
        pytest.fail(f"request events still logged after the reload: {events}")


def test_sighup_with_an_invalid_config_logs_errors_and_keeps_serving(proxy, tmp_path):
    path = tmp_path / "coxp.toml"
    path.write_text(path.read_text().replace('allow_methods = ["PUT"]', 'allow_methods = ["TRACE"]\nmax_age = -5'))
    mark = proxy.mark()
    proxy.signal(signal.SIGHUP)
    error = proxy.wait_event("config_error", start=mark)
    assert error["level"] == "error"
    assert any("routes[0].cors.allow_methods[0]" in line for line in error["errors"]), error
    assert any("routes[0].cors.max_age" in line for line in error["errors"]), error
    assert all(line.startswith(str(path)) or line.startswith("coxp.toml") for line in error["errors"]), error
    response = proxy.request("GET", "/api/a", [("Origin", ORIGIN)])
    assert response.status == 200 and response.value("Access-Control-Allow-Origin") == ORIGIN
    # a later valid file is picked up again
    path.write_text(path.read_text().replace('allow_methods = ["TRACE"]\nmax_age = -5', 'allow_methods = ["PUT"]'))
    mark = proxy.mark()
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("config_reloaded", start=mark)


def test_sighup_with_a_toml_syntax_error(proxy, tmp_path):
    path = tmp_path / "coxp.toml"
    path.write_text(path.read_text() + "\n[broken\n")
    mark = proxy.mark()
    proxy.signal(signal.SIGHUP)
    error = proxy.wait_event("config_error", start=mark)
    assert any("line" in line for line in error["errors"])
    assert proxy.request("GET", "/api/a").status == 200


def test_console_format_is_readable(coxp, query_upstream):
    text = CONFIG.replace("{upstream}", query_upstream.url).replace("{closed}", "1").replace(
        'format = "json"', 'format = "console"')
    proxy = coxp(text, ready=None)
    line = proxy.wait_line(lambda line: "listening" in line)
    port = int(line.split("listen=127.0.0.1:")[1].split()[0])
    http_request(port, "OPTIONS", "/api/a", [("Origin", ORIGIN), ("Access-Control-Request-Method", "DELETE")],
                 host="127.0.0.1")
    # One line per request, in the order a person scans it (status, method, host+path, origin,
    # decision and reason, ms, [route]); other events stay key=value.
    line = proxy.wait_line(lambda line: "preflight-denied" in line)
    assert re.match(r"403 OPTIONS +127\.0\.0\.1/api/a +https://app\.example\.test +"
                    r"preflight-denied \(method-not-allowed\) +\d+\.\d ms \[api\]", line), line
    with pytest.raises(ValueError):
        json.loads(line)


def test_several_workers_write_whole_json_lines(tmp_path, query_upstream):
    """workers = 4 sharing one stdout pipe, read by a slow consumer so that the pipe fills up:
    every line is still one JSON object, including lines longer than PIPE_BUF (a 7 KB path),
    and there is exactly one `request` event per request."""
    import subprocess
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from harness import PYTHON, WAIT

    port = free_port()
    text = CONFIG.replace("{upstream}", query_upstream.url).replace("{closed}", "1").replace(
        "[log]", "workers = 4\n[log]").replace("read_timeout = 0.5", "read_timeout = 10.0").replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    (tmp_path / "coxp.toml").write_text(text)
    process = subprocess.Popen([PYTHON, "-m", "proxy", "run", "-c", "coxp.toml"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    chunks: list[bytes] = []
    listening = threading.Event()

    def slow_reader() -> None:
        while chunk := process.stdout.read1(700):
            chunks.append(chunk)
            if b"".join(chunks).count(b'"listening"') >= 4:
                listening.set()
            time.sleep(0.001)  # a slow consumer: the point of the test, not a wait for an event
        listening.set()

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    try:
        assert listening.wait(WAIT) and process.poll() is None
        long_path = "/api/" + "x" * 7000
        total = 160

        def one(i: int) -> int:
            return http_request(port, "GET", f"{long_path}?n={i}", [("Origin", ORIGIN)], host="127.0.0.1").status

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(one, range(total))) == {200}
    finally:
        process.terminate()
        assert process.wait(WAIT) == 0
        reader.join(WAIT)
    lines = b"".join(chunks).decode().splitlines()
    events = []
    for line in lines:
        events.append(json.loads(line))  # raises on a line broken by another worker's write
    requests = [e for e in events if e["event"] == "request"]
    assert len(requests) == total
    assert {e["path"] for e in requests} == {long_path}
    assert len({e["pid"] for e in events if e["event"] == "listening"}) == 4


def test_sighup_reaches_every_worker(coxp, query_upstream):
    """The parent takes SIGHUP and passes it on: each of the two workers logs config_reloaded."""
    text = CONFIG.replace("{upstream}", query_upstream.url).replace("{closed}", "1").replace(
        "[log]", "workers = 2\n[log]")
    proxy = coxp(text)
    proxy.wait_event("listening", start=1)  # the second worker is up
    mark = proxy.mark()
    proxy.signal(signal.SIGHUP)

    def reloaded() -> int:
        return sum(e.get("event") == "config_reloaded" for e in proxy.events[mark:])

    assert proxy.wait_for(lambda: reloaded() >= 2), proxy.events[mark:]
    assert proxy.stop() == 0
    assert reloaded() == 2


def test_log_to_a_stdout_without_file_descriptor(capsys):
    """In-process use (stdout replaced by a memory stream): still one JSON line per event."""
    from proxy import logs

    logs.configure("json", "info")
    logs.get_logger().info("request", path="/x")
    logs.get_logger().debug("hidden")
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["path"] == "/x"


# (request headers, expected preflight_method, preflight_headers, credentials)
PREFLIGHT_FIELD_CASES = [
    ([("Origin", ORIGIN), ("Access-Control-Request-Method", "PUT"),
      ("Access-Control-Request-Headers", "X-B, content-type,,x-a"), ("Access-Control-Request-Headers", "X-C")],
     "PUT", ["x-b", "content-type", "x-a", "x-c"], False),
    ([("Origin", ORIGIN), ("Access-Control-Request-Method", "DELETE")], "DELETE", [], False),
]


@pytest.mark.parametrize("headers, method, names, credentials", PREFLIGHT_FIELD_CASES)
def test_preflight_fields(proxy, headers, method, names, credentials):
    event = proxy.request("OPTIONS", "/api/a", headers).event
    assert event["preflight_method"] == method
    assert event["preflight_headers"] == names  # lower-cased, in request order, [] without the header
    assert event["credentials"] is credentials


@pytest.mark.parametrize("headers, credentials", [
    ([("Origin", ORIGIN)], False),
    ([("Origin", ORIGIN), ("Cookie", "a=1")], True),
    ([("authorization", "Basic eDp5")], True),
])
def test_actual_requests_have_no_preflight_fields_and_say_whether_credentials_came(proxy, headers, credentials):
    event = proxy.request("GET", "/api/a", headers).event
    assert event["preflight_method"] is None and event["preflight_headers"] is None
    assert event["credentials"] is credentials
