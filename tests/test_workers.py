"""`workers = N` end to end: N processes on one port, a dead worker replaced, signals relayed."""
from __future__ import annotations

import os
import signal
import socket

import pytest

from harness import http_request

CONFIG = """
[proxy]
listen = "{listen}"
upstream = "{upstream}"
workers = 2
[log]
format = "json"
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
