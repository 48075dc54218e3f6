"""The admin listener: /healthz, /readyz, /metrics (Prometheus text), /config, POST /reload."""
from __future__ import annotations

import hashlib
import json
import re
import signal

import pytest

from harness import http_request

ORIGIN = "https://app.example.test"

CONFIG = """
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
[admin]
listen = "127.0.0.1:{admin}"
[log]
format = "json"
[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["PUT"]
"""


@pytest.fixture
def admin(coxp, query_upstream):
    # port 0: the `listening` event reports the port the admin listener actually bound
    proxy = coxp(CONFIG.replace("{upstream}", query_upstream.url).replace("{admin}", "0"))
    host, _, port = proxy.events[0]["admin"].rpartition(":")
    port = int(port)
    assert host == "127.0.0.1" and port not in (0, proxy.port)

    def get(path: str, method: str = "GET"):
        return http_request(port, method, path, host=f"127.0.0.1:{port}", body=b"" if method == "POST" else None)

    return proxy, get


def samples(text: str, name: str) -> dict[tuple, float]:
    """Prometheus text samples of one metric: {sorted label pairs: value}."""
    out = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")))
            out[labels] = float(match.group(2))
    return out


def test_healthz(admin):
    _, get = admin
    response = get("/healthz")
    assert (response.status, response.body) == (200, b"ok\n")


def test_metrics_count_requests_by_route_cors_and_status(admin):
    proxy, get = admin
    before = samples(get("/metrics").body.decode(), "coxp_requests_total")
    assert before == {}  # no traffic yet
    proxy.request("GET", "/api/a", [("Origin", ORIGIN)])
    proxy.request("GET", "/api/a", [("Origin", ORIGIN)])
    proxy.request("GET", "/api/a", [("Origin", "https://evil.test")])
    proxy.request("OPTIONS", "/api/a", [("Origin", ORIGIN), ("Access-Control-Request-Method", "DELETE")])
    proxy.request("GET", "/other")
    response = get("/metrics")
    assert response.status == 200
    assert response.value("Content-Type").startswith("text/plain")
    text = response.body.decode()
    counts = samples(text, "coxp_requests_total")
    assert counts == {
        (("cors", "allowed"), ("route", "api"), ("status", "200")): 2.0,
        (("cors", "denied"), ("route", "api"), ("status", "200")): 1.0,
        (("cors", "preflight-denied"), ("route", "api"), ("status", "403")): 1.0,
        (("cors", "off"), ("route", "default"), ("status", "200")): 1.0,
    }
    durations = samples(text, "coxp_request_duration_seconds_count")
    assert durations == {(("route", "api"),): 4.0, (("route", "default"),): 1.0}
    assert "# TYPE coxp_requests_total counter" in text or "# TYPE coxp_requests counter" in text


def test_metrics_count_bad_requests(admin):
    proxy, get = admin
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400, never routed
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    proxy.wait_event("bad_request")
    assert samples(get("/metrics").body.decode(), "coxp_bad_requests_total") == {(("reason", "missing-host"),): 1.0}


def test_config_is_the_effective_config_as_json(admin):
    proxy, get = admin
    response = get("/config")
    assert response.status == 200 and response.value("Content-Type").startswith("application/json")
    effective = json.loads(response.body)
    assert [r["name"] for r in effective["routes"]] == ["api"]
    assert effective["routes"][0]["cors"]["allow_origins"] == [ORIGIN]
    assert effective["proxy"]["upstream"].startswith("http://127.0.0.1:")


def test_config_follows_a_reload(admin, tmp_path):
    proxy, get = admin
    path = tmp_path / "coxp.toml"
    path.write_text(path.read_text().replace('name = "api"', 'name = "renamed"'))
    mark = proxy.mark()
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("config_reloaded", start=mark)
    assert [r["name"] for r in json.loads(get("/config").body)["routes"]] == ["renamed"]


def test_unknown_admin_path_is_404(admin):
    _, get = admin
    assert get("/nope").status == 404


def test_healthz_is_503_while_draining(admin, query_upstream):
    """SIGTERM with a request in flight: the proxy drains, /healthz says so, the request completes."""
    import threading
    import time

    from harness import WAIT, unique

    proxy, get = admin
    marker = unique()
    result = {}
    slow = threading.Thread(target=lambda: result.update(r=proxy.request("GET", f"/api/slow?{marker}&sleep=1.5")))
    slow.start()
    deadline = time.monotonic() + WAIT
    while not query_upstream.saw(marker):  # no event to await in the upstream's thread: poll, bounded
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proxy.signal(signal.SIGTERM)
    while (health := get("/healthz")).status == 200:  # the signal is handled asynchronously
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert (health.status, health.body) == (503, b"stopping\n")
    assert get("/readyz").status == 503  # the Service stops sending new requests here
    slow.join(WAIT)
    assert result["r"].status == 200
    assert proxy.process.wait(WAIT) == 0


def test_readyz_once_listening(admin):
    _, get = admin
    response = get("/readyz")
    assert (response.status, response.body) == (200, b"ready\n")


def test_every_metric_is_exposed_from_the_start(admin):
    _, get = admin
    text = get("/metrics").body.decode()
    for name in ("coxp_requests_total", "coxp_bad_requests_total", "coxp_request_duration_seconds",
                 "coxp_upstream_errors_total", "coxp_in_flight_requests", "coxp_config_reloads_total",
                 "coxp_config_last_reload_successful", "coxp_config_info"):
        assert re.search(rf"^# TYPE {name.removesuffix('_total')}(_total)? ", text, re.M), name
    assert samples(text, "coxp_in_flight_requests") == {(): 0.0}
    assert samples(text, "coxp_config_reloads_total") == {(("result", "ok"),): 0.0, (("result", "error"),): 0.0}
    assert samples(text, "coxp_config_last_reload_successful") == {(): 1.0}


def config_metrics(get) -> tuple[dict, dict, dict]:
    text = get("/metrics").body.decode()
    return (samples(text, "coxp_config_reloads_total"), samples(text, "coxp_config_last_reload_successful"),
            samples(text, "coxp_config_info"))


def test_post_reload_answers_with_the_hash_and_counts(admin):
    proxy, get = admin
    path = proxy.config_path
    started = hashlib.sha256(path.read_bytes()).hexdigest()
    assert config_metrics(get)[2] == {(("sha256", started),): 1.0}

    path.write_text(path.read_text().replace('allow_methods = ["PUT"]', 'allow_methods = ["PUT", "DELETE"]'))
    response = get("/reload", "POST")
    wanted = hashlib.sha256(path.read_bytes()).hexdigest()
    assert response.status == 200 and response.value("Content-Type").startswith("application/json")
    assert json.loads(response.body) == {"reloaded": True, "sha256": wanted, "restart_needed": []}
    preflight = [("Origin", ORIGIN), ("Access-Control-Request-Method", "DELETE")]
    assert proxy.request("OPTIONS", "/api/a", preflight).status == 204  # the new policy serves
    reloads, last, info = config_metrics(get)
    assert reloads == {(("result", "ok"),): 1.0, (("result", "error"),): 0.0}
    assert last == {(): 1.0} and info == {(("sha256", wanted),): 1.0}


def test_post_reload_of_an_invalid_file_is_422_and_the_old_config_serves(admin):
    proxy, get = admin
    path = proxy.config_path
    serving = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(path.read_text().replace('allow_methods = ["PUT"]', 'allow_methods = ["P T"]'))
    response = get("/reload", "POST")
    assert response.status == 422
    answer = json.loads(response.body)
    assert answer["reloaded"] is False
    assert len(answer["errors"]) == 1 and "routes[0].cors.allow_methods[0]" in answer["errors"][0]
    assert proxy.request("GET", "/api/a", [("Origin", ORIGIN)]).value("Access-Control-Allow-Origin") == ORIGIN
    reloads, last, info = config_metrics(get)
    assert reloads == {(("result", "ok"),): 0.0, (("result", "error"),): 1.0}
    assert last == {(): 0.0}  # what to alert on
    assert info == {(("sha256", serving),): 1.0}  # still the config that serves


def test_a_failed_sighup_reload_is_counted_too(admin):
    proxy, get = admin
    proxy.config_path.write_text("[proxy\n")
    mark = proxy.mark()
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("config_error", start=mark)
    reloads, last, _ = config_metrics(get)
    assert reloads[(("result", "error"),)] == 1.0 and last == {(): 0.0}


def test_reload_only_by_post(admin):
    _, get = admin
    assert get("/reload").status == 405


def test_upstream_errors_are_counted_by_route_and_reason(coxp, query_upstream):
    from harness import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    proxy = coxp(CONFIG.replace("{upstream}", dead).replace("{admin}", "0"))
    admin_port = int(proxy.events[0]["admin"].rpartition(":")[2])
    assert proxy.request("GET", "/api/x").status == 502
    text = http_request(admin_port, "GET", "/metrics", host="a.test").body.decode()
    assert samples(text, "coxp_upstream_errors_total") == {(("reason", "upstream-unreachable"), ("route", "api")): 1.0}


def test_coxp_health_asks_the_admin_listener_the_config_names(coxp, query_upstream, tmp_path):
    """The container's HEALTHCHECK command: 0 when /healthz (or /readyz) says 200, else 1 and why."""
    from harness import free_port, run_cli

    admin_port = free_port()
    proxy = coxp(CONFIG.replace("{upstream}", query_upstream.url).replace("{admin}", str(admin_port)))
    healthy = run_cli("health", "-c", str(proxy.config_path))
    assert healthy.returncode == 0 and healthy.stdout == f"/healthz on 127.0.0.1:{admin_port}: 200 ok\n"
    assert run_cli("health", "--ready", "-c", str(proxy.config_path)).stdout.startswith("/readyz on ")
    # An invalid edit does not make a serving proxy unhealthy: only [admin] listen is read.
    proxy.config_path.write_text(proxy.config_path.read_text().replace('["PUT"]', '["P T"]'))
    assert run_cli("health", "-c", str(proxy.config_path)).returncode == 0
    proxy.stop()
    down = run_cli("health", "-c", str(proxy.config_path))
    assert down.returncode == 1 and down.stderr.startswith("coxp health: ") and down.stderr.count("\n") == 1

    no_admin = tmp_path / "no-admin.toml"
    no_admin.write_text('[proxy]\nupstream = "http://127.0.0.1:9"\n')
    result = run_cli("health", "-c", str(no_admin))
    assert result.returncode == 1 and "no [admin] listen" in result.stderr


def test_a_reload_that_removes_the_admin_table_keeps_the_listener_and_says_so(admin):
    """`[admin]` is read at start only: a file without it reloads the routes, the listener and
    its metrics stay, and both the answer and the `config_reloaded` warning name it."""
    proxy, get = admin
    path = proxy.config_path
    path.write_text(re.sub(r"\[admin\]\nlisten = \"[^\"]*\"\n", "", path.read_text()).replace('["PUT"]', '["DELETE"]'))
    mark = proxy.mark()
    response = get("/reload", "POST")
    assert (response.status, json.loads(response.body)["restart_needed"]) == (200, ["admin"])
    reloaded = proxy.wait_event("config_reloaded", start=mark)
    assert (reloaded["level"], reloaded["restart_needed"]) == ("warning", ["admin"])
    preflight = [("Origin", ORIGIN), ("Access-Control-Request-Method", "DELETE")]
    assert proxy.request("OPTIONS", "/api/a", preflight).status == 204  # the new routes serve
    assert samples(get("/metrics").body.decode(), "coxp_config_reloads_total")[(("result", "ok"),)] == 1.0
