"""One serving process (README, "`[admin]`" and "`[log]`"): what it loads to serve.

Metrics are read only through the admin listener and the JSON log is coxp's own, so a process
with `format = "json"` and no `[admin]` never imports structlog (with `rich` and `greenlet`) or
prometheus-client: ~11 MiB of memory per process (bench/NOTES.md). `python -X importtime`
reports every module the process imports, at start and later, on stderr.
"""
from __future__ import annotations

import signal
import socket

import pytest

from harness import Coxp, config_text, free_port

ROUTES = """
[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["https://app.example.test"]

[[routes]]
name = "dead"
paths = ["/dead/*"]
upstream = "http://127.0.0.1:{closed}"
"""
NOT_FOR_SERVING = {"structlog", "rich", "greenlet", "prometheus_client"}


def imported(stderr: str) -> set[str]:
    """The modules `-X importtime` reported (`import time: self [us] | cumulative | name`)."""
    lines = (line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:"))
    return {name for name in lines if name != "imported package"}


def start_traced(tmp_path, text: str) -> Coxp:
    path = tmp_path / "coxp.toml"
    path.write_text(text)
    return Coxp(["-X", "importtime", "-m", "proxy", "run", "-c", str(path)], cwd=tmp_path, config_path=path).start()


@pytest.mark.parametrize("admin", [False, True])
def test_structlog_and_prometheus_client_are_loaded_only_when_used(tmp_path, query_upstream, admin):
    """Every event kind and every counting path runs once (a request, an upstream error, a bad
    request, a reload and a failed one); only the admin listener brings prometheus-client."""
    text = config_text(query_upstream.url, extra=ROUTES.replace("{closed}", str(free_port())))
    if admin:
        text += '\n[admin]\nlisten = "127.0.0.1:0"\n'
    proxy = start_traced(tmp_path, text)
    try:
        assert proxy.request("GET", "/api/a", [("Origin", "https://app.example.test")]).event["cors"] == "allowed"
        assert proxy.request("GET", "/dead/a").status == 502
        proxy.wait_event("upstream_error")
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"GET /api/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        proxy.wait_event("bad_request")
        mark = proxy.mark()
        proxy.signal(signal.SIGHUP)
        proxy.wait_event("config_reloaded", start=mark)
        proxy.config_path.write_text(text + "\n[broken\n")
        proxy.signal(signal.SIGHUP)
        proxy.wait_event("config_error", start=mark)
    finally:
        assert proxy.stop() == 0
    loaded = imported(proxy.stderr)
    assert {"proxy.logs", "proxy.events", "orjson"} <= loaded  # the trace saw the log being set up
    packages = {name.split(".")[0] for name in loaded}
    assert packages & NOT_FOR_SERVING == ({"prometheus_client"} if admin else set())
