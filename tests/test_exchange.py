"""proxy.exchange: what a request head decides is remembered per head, serving state, client
address and scheme, and never handed to another of them."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from proxy.config import load_config_text
from proxy.exchange import prepared
from proxy.http1 import parse_head
from proxy.routing import Router
from proxy.state import ServingState

CONFIG = """
[proxy]
upstream = "http://127.0.0.1:3000"
[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["{origin}"]
"""
HEAD = b"GET /api/a HTTP/1.1\r\nHost: proxy.test\r\nOrigin: https://app.test\r\n\r\n"


def state(origin: str = "https://app.test") -> ServingState:
    config = load_config_text(CONFIG.replace("{origin}", origin))
    none: Any = None
    return ServingState(config=config, router=Router(config), client=none, log=none, metrics=none,
                        stopping=lambda: False, admit=lambda: True, refuse=none)


def client(peer_ip: str, scheme: str = "http") -> Any:
    return SimpleNamespace(peer_ip=peer_ip, scheme=scheme)


def test_a_repeated_head_is_prepared_once_per_client_address_and_scheme():
    serving = state()
    head = parse_head(HEAD, serving.config.limits)
    first = prepared(serving, client("10.0.0.1"), head)
    assert prepared(serving, client("10.0.0.1"), head) is first
    assert first.decision.cors == "allowed" and first.upstream_head is not None
    assert b"\r\nX-Forwarded-For: 10.0.0.1\r\n" in first.upstream_head
    other = prepared(serving, client("10.0.0.2"), head)
    assert other.upstream_head is not None and b"\r\nX-Forwarded-For: 10.0.0.2\r\n" in other.upstream_head
    tls = prepared(serving, client("10.0.0.1", "https"), head)
    assert tls.upstream_head is not None and b"\r\nX-Forwarded-Proto: https\r\n" in tls.upstream_head
    assert tls.own_origin == "https://proxy.test" and first.own_origin == "http://proxy.test"


def test_a_reloaded_state_prepares_the_same_head_again():
    before, after = state(), state("https://other.test")
    head = parse_head(HEAD, before.config.limits)
    assert prepared(before, client("10.0.0.1"), head).decision.cors == "allowed"
    assert prepared(after, client("10.0.0.1"), head).decision.cors == "denied"


def test_a_head_with_long_fields_is_not_remembered():
    serving = state()
    head = parse_head(HEAD.replace(b"\r\n\r\n", b"\r\nX-Long: " + b"a" * 2000 + b"\r\n\r\n"), serving.config.limits)
    first = prepared(serving, client("10.0.0.1"), head)
    again = prepared(serving, client("10.0.0.1"), head)
    assert again == first and again is not first
