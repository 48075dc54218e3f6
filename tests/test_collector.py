"""The built-in report collector (`[reports]`), end to end through a running coxp: what each
kind of body gets, what the log and /metrics record, and that coxp keeps serving after every
bad body."""
from __future__ import annotations

import json
import socket
import time

import pytest
from test_admin import samples

from harness import Reader, http_request, request_bytes, unique

UA = "Mozilla/5.0 (coxp-test) Chrome/130"
COEP_REPORT = {
    "type": "coep", "age": 12, "url": "https://app.example.test/page", "user_agent": UA,
    "body": {"type": "corp", "blockedURL": "https://cdn.other.test/a.png", "destination": "image",
             "disposition": "reporting"},
}
COOP_REPORT = {
    "type": "coop", "url": "https://app.example.test/opener", "user_agent": UA,
    "body": {"type": "navigation-from-response", "disposition": "enforce", "effectivePolicy": "same-origin",
             "previousResponseURL": "https://other.test/"},
}
LEGACY_CSP = {"csp-report": {
    "document-uri": "https://app.example.test/legacy", "blocked-uri": "https://evil.test/x.js",
    "effective-directive": "script-src-elem", "violated-directive": "script-src", "disposition": "report",
    "original-policy": "script-src 'self'; report-uri /.coxp/reports",
}}

CONFIG = """
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[limits]
header_timeout = 1.0
[reports]
[defaults.coep]
policy = "require-corp"
[[routes]]
name = "all"
paths = ["/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
enforce = true
"""


@pytest.fixture(scope="module")
def collector(tmp_path_factory, query_upstream):
    from harness import start_coxp

    process = start_coxp(tmp_path_factory.mktemp("collector"), CONFIG.replace("{upstream}", query_upstream.url))
    yield process
    process.stop()


def post(proxy, body: bytes, content_type: str | None = "application/reports+json", target: str = "/.coxp/reports",
         headers=(), host: str = "reports.example.test"):
    extra = [("Content-Type", content_type)] if content_type else []
    return http_request(proxy.port, "POST", target, [*extra, ("User-Agent", "request-agent/1"), *headers], body,
                        host=host)


def reports_after(proxy, mark: int, count: int) -> list[dict]:
    proxy.wait_event("report", count=count, start=mark)
    return proxy.events_named("report", start=mark)


def still_serving(proxy) -> None:
    """A normal request right after: forwarded and logged as usual."""
    marker = unique()
    response = proxy.request("GET", f"/ok/{marker}")
    assert response.status == 200 and response.event["path"] == f"/ok/{marker}"


def test_a_reporting_api_batch_is_one_report_event_per_report(collector, query_upstream):
    mark = collector.mark()
    response = post(collector, json.dumps([COEP_REPORT, COOP_REPORT]).encode(), target="/.coxp/reports?from=test")
    assert response.status == 204 and response.body == b""
    assert response.value("access-control-allow-origin") == "*"
    # no route policy on the collector: the route's COEP is not on its answer
    assert response.value("cross-origin-embedder-policy") is None
    coep, coop = reports_after(collector, mark, 2)
    assert coep == coep | {
        "event": "report", "level": "info", "type": "coep", "url": "https://app.example.test/page",
        "disposition": "reporting", "blocked_url": "https://cdn.other.test/a.png", "effective_policy": None,
        "user_agent": UA, "body": COEP_REPORT["body"],
    }
    assert coop == coop | {
        "type": "coop", "disposition": "enforce", "blocked_url": None, "effective_policy": "same-origin",
        "body": COOP_REPORT["body"],
    }
    # never forwarded, and not a request event
    still_serving(collector)
    assert not collector.events_named("request", start=mark, path="/.coxp/reports")
    assert not query_upstream.saw("/.coxp/reports")


def test_legacy_csp_reports_are_mapped(collector):
    for content_type in ("application/csp-report", "application/json; charset=utf-8"):
        mark = collector.mark()
        assert post(collector, json.dumps(LEGACY_CSP).encode(), content_type).status == 204
        (report,) = reports_after(collector, mark, 1)
        assert report == report | {
            "type": "csp-violation", "url": "https://app.example.test/legacy", "disposition": "reporting",
            "blocked_url": "https://evil.test/x.js", "effective_policy": "script-src-elem",
            "user_agent": "request-agent/1", "body": LEGACY_CSP["csp-report"],
        }


def test_collector_answers_on_any_host_and_cuts_long_strings(collector):
    mark = collector.mark()
    long_url = "https://cdn.other.test/" + "a" * 5000
    report = {**COEP_REPORT, "body": {**COEP_REPORT["body"], "blockedURL": long_url, "note": ["x" * 3000]}}
    assert post(collector, json.dumps([report]).encode(), host="anything.else.test:8443").status == 204
    (event,) = reports_after(collector, mark, 1)
    assert event["blocked_url"] == long_url[:2048]
    assert event["body"]["blockedURL"] == long_url[:2048] and event["body"]["note"] == ["x" * 2048]


def test_preflight_from_any_origin(collector):
    response = http_request(collector.port, "OPTIONS", "/.coxp/reports", [
        ("Origin", "https://any.where.test"), ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type")], host="reports.example.test")
    assert response.status == 204
    assert response.value("access-control-allow-origin") == "*"
    assert "POST" in response.value("access-control-allow-methods")
    assert response.value("access-control-allow-headers").lower() == "content-type"
    assert response.value("access-control-allow-credentials") is None


BAD_BODIES = [
    # (method, content type, body, status, reason in the body)
    ("GET", None, None, 405, "method-not-allowed"),
    ("PUT", "application/reports+json", b"[]", 405, "method-not-allowed"),
    ("POST", "text/plain", b"[]", 415, "unsupported-media-type"),
    ("POST", None, b"[]", 415, "unsupported-media-type"),
    ("POST", "application/reports+json", b"[" + b" " * 70000 + b"]", 413, "body-too-large"),
    ("POST", "application/reports+json", b'[{"type": "coep",', 400, "malformed-json"),
    ("POST", "application/reports+json", b"\xff\xfe", 400, "malformed-json"),
    ("POST", "application/reports+json", json.dumps(COEP_REPORT).encode(), 400, "wrong-shape"),
    ("POST", "application/reports+json", b'[{"type": 1}]', 400, "wrong-shape"),
    ("POST", "application/reports+json", b'[{"type": "coep", "body": [1]}]', 400, "wrong-shape"),
    ("POST", "application/reports+json", json.dumps([COEP_REPORT, 7]).encode(), 400, "wrong-shape"),
    ("POST", "application/csp-report", b"[]", 400, "wrong-shape"),
    ("POST", "application/reports+json", b"[" * 40 + b"]" * 40, 400, "wrong-shape"),
    ("POST", "application/reports+json", json.dumps([COEP_REPORT] * 101).encode(), 413, "too-many-reports"),
]


@pytest.mark.parametrize("method, content_type, body, status, reason", BAD_BODIES,
                         ids=[f"{s}-{r}-{i}" for i, (_, _, _, s, r) in enumerate(BAD_BODIES)])
def test_bad_report_bodies_get_their_status_and_nothing_is_logged(collector, method, content_type, body, status,
                                                                   reason):
    mark = collector.mark()
    headers = [("Content-Type", content_type)] if content_type else []
    response = http_request(collector.port, method, "/.coxp/reports", headers, body, host="reports.example.test")
    assert response.status == status and reason in response.body.decode()
    if status == 405:
        assert response.value("allow") == "POST, OPTIONS"
    rejected = collector.wait_event("report_rejected", start=mark)
    assert rejected["status"] == status and rejected["reason"] == reason
    still_serving(collector)
    assert not collector.events_named("report", start=mark)


def test_a_chunked_body_over_the_limit_is_cut_off_at_the_limit(collector):
    mark = collector.mark()
    with socket.create_connection(collector.address, timeout=10) as sock:
        sock.sendall(request_bytes("POST", "/.coxp/reports", [
            ("Content-Type", "application/reports+json"), ("Transfer-Encoding", "chunked")]))
        chunk = b"[" + b" " * 40000
        sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk) * 2)  # 80 KB, never finished
        response = Reader(sock).response("POST")
        assert response.status == 413
        assert Reader(sock).closed()
    still_serving(collector)
    assert not collector.events_named("report", start=mark)


def test_a_body_that_never_arrives_is_answered_408_within_the_deadline(collector):
    with socket.create_connection(collector.address, timeout=10) as sock:
        sock.sendall(request_bytes("POST", "/.coxp/reports", [
            ("Content-Type", "application/reports+json"), ("Content-Length", "100")]) + b"[")
        started = time.monotonic()
        response = Reader(sock).response("POST")
        assert response.status == 408
        assert time.monotonic() - started < 8  # header_timeout is 1 s; generous for a loaded machine
    still_serving(collector)


def test_reports_are_counted_in_metrics(collector):
    admin_port = int(collector.events[0]["admin"].rpartition(":")[2])
    metrics = lambda: http_request(admin_port, "GET", "/metrics", host=f"127.0.0.1:{admin_port}").body.decode()  # noqa: E731
    before = samples(metrics(), "coxp_reports_total")
    assert post(collector, json.dumps([COEP_REPORT, COEP_REPORT, {**COEP_REPORT, "type": "made-up"}]).encode()
                ).status == 204
    after = samples(metrics(), "coxp_reports_total")
    coep = (("disposition", "reporting"), ("type", "coep"))
    other = (("disposition", "reporting"), ("type", "other"))
    assert after[coep] - before.get(coep, 0) == 2
    assert after[other] - before.get(other, 0) == 1  # a client-chosen type never becomes a label


def test_a_kept_alive_connection_carries_reports_and_requests(collector):
    mark = collector.mark()
    body = json.dumps([COEP_REPORT]).encode()
    with socket.create_connection(collector.address, timeout=10) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(request_bytes("POST", "/.coxp/reports", [("Content-Type", "application/reports+json")], body))
            assert reader.response("POST").status == 204
        sock.sendall(request_bytes("GET", "/after-reports"))
        assert reader.response().status == 200
    reports_after(collector, mark, 2)


def test_custom_path_and_limit(coxp, query_upstream):
    proxy = coxp(CONFIG.replace("{upstream}", query_upstream.url).replace(
        "[reports]", '[reports]\npath = "/csp/r"\nmax_body_bytes = 100'))
    small = json.dumps([{"type": "coep", "url": "https://a.test/"}]).encode()
    assert post(proxy, small, target="/csp/r").status == 204
    assert post(proxy, small + b" " * 100, target="/csp/r").status == 413
    # the default path is now an ordinary request, forwarded
    response = post(proxy, small)
    assert response.status == 200 and response.event is None
    proxy.wait_event("request", path="/.coxp/reports")


@pytest.mark.parametrize("args, status, reason", [
    (["-X", "OPTIONS", "-H", "Origin: https://any.test", "-H", "Access-Control-Request-Method: POST"], 204, None),
    (["-X", "GET"], 405, "method-not-allowed"),
    (["-X", "POST", "-H", "Content-Type: text/plain"], 415, "unsupported-media-type"),
    (["-X", "POST", "-H", "Content-Type: application/reports+json", "-H", "Content-Length: 70000"], 413, "body-too-large"),
    (["-X", "POST", "-H", "Content-Type: application/csp-report"], 204, None),
])
def test_explain_shows_the_collector_answer(tmp_path, args, status, reason):
    from harness import run_cli

    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("{upstream}", "http://127.0.0.1:9"))
    result = run_cli("explain", "-c", str(config), "--json", *args, "http://any.host.test/.coxp/reports?q=1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["status"], data["reason"], data["route"], data["answered_by_proxy"]) == (status, reason, None, True)
    assert "report collector" in data["note"] and "never forwarded" in data["note"]
    headers = dict(data["headers"])
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Cross-Origin-Embedder-Policy" not in headers  # no route policy
    if status == 405:
        assert headers["Allow"] == "POST, OPTIONS"


def test_expect_100_continue_as_curl_sends_larger_reports(collector):
    """curl asks `Expect: 100-continue` for bodies over 1 KiB and waits for the interim answer."""
    mark = collector.mark()
    body = json.dumps([COEP_REPORT] * 10).encode()
    assert len(body) > 1024
    with socket.create_connection(collector.address, timeout=10) as sock:
        sock.sendall(request_bytes("POST", "/.coxp/reports", [
            ("Content-Type", "application/reports+json"), ("Content-Length", str(len(body))),
            ("Expect", "100-continue")]))
        reader = Reader(sock)
        interim = reader.head()
        assert interim.status == 100
        sock.sendall(body)
        assert reader.response("POST").status == 204
    reports_after(collector, mark, 10)


def test_check_warns_when_reports_go_to_the_collector_path_without_a_collector(tmp_path):
    from harness import run_cli

    config = tmp_path / "c.toml"
    with_collector = CONFIG.replace("{upstream}", "http://127.0.0.1:9") + (
        '[routes.reporting]\nendpoints = { default = "/.coxp/reports", other = "/r" }\n')
    config.write_text(with_collector)
    assert "reporting.endpoints" not in run_cli("check", "-c", str(config)).stderr
    config.write_text(with_collector.replace("[reports]\n", ""))
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "reporting.endpoints" in line]
    assert len(warnings) == 1 and "routes[0].reporting.endpoints.default: warning:" in warnings[0]
    assert "add [reports]" in warnings[0]


def test_reports_are_shed_first_under_overload(coxp, upstream, loop):
    from test_server import Gate

    from harness import config_text, get

    gate = Gate(loop)
    upstream.handler = gate.handler
    proxy = coxp(config_text(upstream.url, limits={"max_in_flight": 1}, extra="[reports]\n"))
    with proxy.connect() as held:
        held.sendall(request_bytes("GET", "/held"))
        upstream.wait_seen()
        response = post(proxy, json.dumps([COEP_REPORT]).encode())
        assert (response.status, response.value("retry-after"), response.value("connection")) == (503, "1", "close")
        gate.open()
        assert Reader(held).response().body == b"released"
    assert post(proxy, json.dumps([COEP_REPORT]).encode()).status == 204  # the slot is free again
    assert get(proxy, "/after").status == 200
