"""proxy.standards: the rules taken from the standards, as tables."""
from __future__ import annotations

import pytest

from proxy.standards import (
    DEFAULT_PORTS,
    TOKEN_BYTES_RE,
    TOKEN_RE,
    is_forbidden_request_header,
    is_loopback_host,
)

# RFC 9110 §5.6.2: every tchar, and what is not one.
TCHARS = "!#$%&'*+-.^_`|~" + "0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"


def test_token_is_exactly_one_or_more_tchar():
    for code in range(256):
        char = chr(code)
        assert bool(TOKEN_RE.fullmatch(char)) is (char in TCHARS), repr(char)
        assert bool(TOKEN_BYTES_RE.fullmatch(bytes([code]))) is (char in TCHARS), repr(char)
    assert TOKEN_RE.fullmatch("X-Request-Id") and TOKEN_RE.fullmatch("PATCH")
    assert not TOKEN_RE.fullmatch("") and not TOKEN_RE.fullmatch("GET, PUT") and not TOKEN_RE.fullmatch("a b")


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("app.localhost", True), ("127.0.0.1", True), ("127.255.0.9", True),
    ("::1", True), ("[::1]", True), ("0:0:0:0:0:0:0:1", True),
    # Names that only look like loopback are DNS names like any other (Secure Contexts §3.1).
    ("127.evil.test", False), ("localhost.evil.test", False), ("evil-localhost", False),
    ("128.0.0.1", False), ("[::2]", False), ("0.0.0.0", False), ("", False),
])
def test_loopback_is_secure_contexts_rule(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("name, forbidden", [
    ("cookie", True), ("host", True), ("sec-fetch-mode", True), ("proxy-authorization", True),
    ("access-control-request-private-network", True), ("authorization", False), ("content-type", False),
    ("x-sec-thing", False),
])
def test_forbidden_request_header_names(name, forbidden):
    assert is_forbidden_request_header(name) is forbidden


def test_default_ports():
    assert DEFAULT_PORTS == {"http": 80, "https": 443}
