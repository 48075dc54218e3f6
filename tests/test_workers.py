"""`workers = N` end to end: N processes on one port, a dead worker replaced, signals relayed."""
from __future__ import annotations

import os
import signal
import socket

import pytest

from harness import free_port, http_request, run_cli

CONFIG = """
[proxy]
listen = "{listen}"
upstream = "{upstream}"
workers = 2
[log]
format = "json"
[defaults.cors]
mode = "remove"
[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]
"""
ORIGIN = "https://app.example.test"


def workers_of(proxy) -> set[int]:
    return {e["pid"] for e in proxy.events if e.get("event") == "listening"}


def test_two_workers_serve_one_port_and_a_killed_worker_is_replaced(coxp, query_upstream):
    proxy = coxp(CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url))
    proxy.wait_event("listening", start=1)
    first, second = sorted(workers_of(proxy))
    assert proxy.events[0]["listen"] == proxy.events[1]["listen"]  # the parent reserved one port

    os.kill(first, signal.SIGKILL)
    died = proxy.wait_event("worker_died")
    assert died["pid"] == first and died["level"] == "error"
    replacement = proxy.wait_event("listening", where=lambda e: e["pid"] not in (first, second))
    assert replacement["listen"] == proxy.events[0]["listen"]

    statuses = {http_request(proxy.port, "GET", "/api/x", [("Origin", ORIGIN)], host="a.test").status for _ in range(20)}
    assert statuses == {200}
    assert proxy.stop() == 0  # SIGTERM reaches the workers; the parent exits 0 once they have


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_listen_on_ipv6_loopback(coxp, query_upstream):
    proxy = coxp(CONFIG.format(listen="[::1]:0", upstream=query_upstream.url).replace("workers = 2", "workers = 1"))
    listen = proxy.events[0]["listen"]
    assert listen.startswith("[::1]:")
    port = int(listen.rsplit(":", 1)[1])
    with socket.create_connection(("::1", port), timeout=5) as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: [::1]\r\nOrigin: " + ORIGIN.encode() + b"\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nAccess-Control-Allow-Origin: https://app.example.test\r\n" in reply


ADMIN = """
[admin]
listen = "127.0.0.1:0"
"""


def admin_port(proxy) -> int:
    return int(next(e["admin"] for e in proxy.events if e.get("admin")).rpartition(":")[2])


def admin_get(proxy, path: str, method: str = "GET"):
    port = admin_port(proxy)
    return http_request(port, method, path, host=f"127.0.0.1:{port}", body=b"" if method == "POST" else None)


def counted(text: str, name: str) -> float:
    """The sum of every sample of the metric `name` in Prometheus text."""
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def errors_of(stderr: str) -> list[str]:
    """The lines of stderr that are not config warnings (the test config draws one)."""
    return [line for line in stderr.splitlines() if ": warning: " not in line]


def test_metrics_sum_over_every_worker(coxp, query_upstream):
    proxy = coxp(CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url) + ADMIN)
    proxy.wait_event("listening", start=1)
    requests = 40  # each on a new connection: the kernel spreads them over both workers
    for _ in range(requests):
        assert http_request(proxy.port, "GET", "/api/x", [("Origin", ORIGIN)], host="a.test").status == 200
    proxy.wait_event("request", count=requests)
    text = admin_get(proxy, "/metrics").body.decode()
    assert counted(text, "coxp_requests_total") == requests
    assert counted(text, "coxp_request_duration_seconds_count") == requests
    assert counted(text, "coxp_in_flight_requests") == 0


def test_post_reload_reaches_every_worker(coxp, query_upstream):
    proxy = coxp(CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url) + ADMIN)
    proxy.wait_event("listening", start=1)
    mark = proxy.mark()
    proxy.config_path.write_text(proxy.config_path.read_text().replace(ORIGIN, "https://new.example.test"))
    response = admin_get(proxy, "/reload", "POST")
    assert response.status == 200
    proxy.wait_event("config_reloaded", count=2, start=mark)  # once in each worker
    for _ in range(20):
        reply = http_request(proxy.port, "GET", "/api/x", [("Origin", "https://new.example.test")], host="a.test")
        assert reply.value("Access-Control-Allow-Origin") == "https://new.example.test"
    text = admin_get(proxy, "/metrics").body.decode()
    assert 'coxp_config_reloads_total{result="ok"} 1.0' in text  # one reload, not one per worker


def test_watch_reloads_every_worker(coxp, query_upstream):
    proxy = coxp(CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url), "--watch")
    proxy.wait_event("listening", start=1)
    assert sorted(e["watch"] for e in proxy.events_named("listening")) == [False, True]  # worker 0 watches
    mark = proxy.mark()
    proxy.config_path.write_text(proxy.config_path.read_text().replace(ORIGIN, "https://new.example.test"))
    proxy.wait_event("config_reloaded", count=2, start=mark)
    for _ in range(20):
        reply = http_request(proxy.port, "GET", "/api/x", [("Origin", "https://new.example.test")], host="a.test")
        assert reply.value("Access-Control-Allow-Origin") == "https://new.example.test"


@pytest.mark.parametrize("first_workers, second_workers", [(2, 2), (1, 2), (2, 1)])
def test_a_second_proxy_on_a_port_in_use_exits_1(coxp, query_upstream, tmp_path, first_workers, second_workers):
    text = CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url)
    first = coxp(text.replace("workers = 2", f"workers = {first_workers}"))
    taken = first.events[0]["listen"]
    second_config = tmp_path / "second.toml"
    second_config.write_text(CONFIG.format(listen=taken, upstream=query_upstream.url)
                             .replace("workers = 2", f"workers = {second_workers}"))
    result = run_cli("run", "-c", str(second_config))
    assert result.returncode == 1
    [error] = errors_of(result.stderr)
    assert "address already in use" in error.lower() and taken in error
    assert result.stdout == ""  # no worker started
    statuses = {http_request(first.port, "GET", "/api/x", host="a.test").status for _ in range(10)}
    assert statuses == {200}  # the first one still serves alone


@pytest.mark.parametrize("workers", [1, 2])
def test_an_admin_port_in_use_exits_1(coxp, query_upstream, tmp_path, workers):
    first = coxp(CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url) + ADMIN)
    first.wait_event("listening", start=1)
    second_config = tmp_path / "second.toml"
    second_config.write_text(CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url)
                             .replace("workers = 2", f"workers = {workers}")
                             + ADMIN.replace("127.0.0.1:0", f"127.0.0.1:{admin_port(first)}"))
    result = run_cli("run", "-c", str(second_config))
    assert result.returncode == 1
    [error] = errors_of(result.stderr)
    assert "cannot serve admin on" in error and "address already in use" in error.lower()


def test_in_flight_requests_count_across_workers_and_forget_a_dead_one(coxp, query_upstream):
    import threading
    import time

    from harness import WAIT, Aborted, unique

    proxy = coxp(CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url) + ADMIN)
    proxy.wait_event("listening", start=1)

    def slow_requests(count: int) -> list[threading.Thread]:
        markers = [unique() for _ in range(count)]

        def send(marker: str) -> None:
            try:
                http_request(proxy.port, "GET", f"/api/slow?{marker}&sleep=2", host="a.test")
            except (OSError, Aborted):
                pass  # its worker was killed

        threads = [threading.Thread(target=send, args=(m,)) for m in markers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT
        while not all(query_upstream.saw(m) for m in markers):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return threads

    threads = slow_requests(4)
    assert counted(admin_get(proxy, "/metrics").body.decode(), "coxp_in_flight_requests") == 4
    for thread in threads:
        thread.join(WAIT)
    assert counted(admin_get(proxy, "/metrics").body.decode(), "coxp_in_flight_requests") == 0

    # A worker killed with requests in flight (8 connections: all on one worker 1 time in 128):
    # its share of the gauge goes with it.
    other = next(e["pid"] for e in proxy.events_named("listening") if e["admin"] is None)
    threads = slow_requests(8)
    os.kill(other, signal.SIGKILL)
    proxy.wait_event("worker_died", pid=other)
    for thread in threads:
        thread.join(WAIT)
    assert counted(admin_get(proxy, "/metrics").body.decode(), "coxp_in_flight_requests") == 0


@pytest.mark.parametrize("start_with_admin", [True, False], ids=["admin-removed", "admin-added"])
def test_a_worker_restarted_after_a_reload_keeps_the_start_only_settings(coxp, query_upstream, start_with_admin):
    """`listen`, `workers`, TLS and `[admin]` are read at start only: a worker that replaces a
    dead one after a reload serves the reloaded routes but the listeners coxp started with (an
    admin listener that vanished would fail every health check; one that appeared would be a
    reader of worker 0's metrics alone)."""
    text = CONFIG.format(listen="127.0.0.1:0", upstream=query_upstream.url)
    admin_listen = f"127.0.0.1:{free_port()}"
    start_admin = f'\n[admin]\nlisten = "{admin_listen}"\n'
    proxy = coxp(text + (start_admin if start_with_admin else ""))
    proxy.wait_event("listening", start=1)
    mark = proxy.mark()
    reloaded = text.replace(ORIGIN, "https://new.example.test")
    proxy.config_path.write_text(reloaded if start_with_admin else reloaded + start_admin)
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("config_reloaded", count=2, start=mark)
    before = workers_of(proxy)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    proxy.wait_event("listening", count=2, start=mark, where=lambda e: e["pid"] not in before)
    reply = http_request(proxy.port, "GET", "/api/x", [("Origin", "https://new.example.test")], host="a.test")
    assert reply.value("Access-Control-Allow-Origin") == "https://new.example.test"
    host, port = admin_listen.rsplit(":", 1)
    if start_with_admin:
        assert http_request(int(port), "GET", "/healthz", host=admin_listen).status == 200
    else:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=5).close()
