"""The rules coxp takes from the standards, each written once, under the text it comes from.

Like h11's `_abnf.py`: the HTTP grammar (RFC 9110), the Fetch standard's lists of names, the
default ports and Secure Contexts' loopback rule. Every other module imports these; nobody
copies them. This module imports nothing of coxp's, so anything may import it.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Final

# RFC 9110 §5.6.2:
#   token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#           / DIGIT / ALPHA
# Methods (§9.1) and field names (§5.1) are tokens.
TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN_RE: Final = re.compile(TOKEN)
TOKEN_BYTES_RE: Final = re.compile(TOKEN.encode("ascii"))

# RFC 9110 §5.6.4:
#   quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext        = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   quoted-pair   = "\" ( HTAB / SP / VCHAR / obs-text )
QUOTED_STRING_BYTES: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'

# RFC 9110 §5.6.3: OWS = *( SP / HTAB )
OWS: Final = " \t"

# RFC 9110 §4.2.1, §4.2.2: the port an http / https URI means when it names none.
DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Fetch standard, "normalize" a method: browsers upper-case these six names, so `patch` stays
# `patch` but `delete` is sent as `DELETE`.
NORMALISED_METHODS: Final = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})
# Fetch standard, "CORS-safelisted method": never needs listing in Access-Control-Allow-Methods.
# Compared case-sensitively, as Fetch compares the requested method byte for byte.
SAFELISTED_METHODS: Final = frozenset({"GET", "HEAD", "POST"})
# Fetch standard, "forbidden method": scripts can never send these.
FORBIDDEN_METHODS: Final = frozenset({"CONNECT", "TRACE", "TRACK"})
# Fetch standard, "forbidden response-header name": never exposed to scripts, whatever the
# server says.
FORBIDDEN_RESPONSE_HEADERS: Final = frozenset({"set-cookie", "set-cookie2"})
# Fetch standard, "forbidden request-header name" (plus Private Network Access's request
# header): scripts cannot set them, so allowing them in a preflight has no effect.
FORBIDDEN_REQUEST_HEADERS: Final = frozenset({
    "accept-charset", "accept-encoding", "access-control-request-headers",
    "access-control-request-method", "access-control-request-private-network", "connection",
    "content-length", "cookie", "cookie2", "date", "dnt", "expect", "host", "keep-alive", "origin",
    "referer", "set-cookie", "te", "trailer", "transfer-encoding", "upgrade", "via",
})
FORBIDDEN_REQUEST_PREFIXES: Final = ("proxy-", "sec-")


def is_forbidden_request_header(name: str) -> bool:
    """Fetch standard, "forbidden request-header name"; `name` lower-case."""
    return name in FORBIDDEN_REQUEST_HEADERS or name.startswith(FORBIDDEN_REQUEST_PREFIXES)


def is_loopback_host(host: str) -> bool:
    """Secure Contexts §3.1 "Is origin potentially trustworthy?": `localhost`, `*.localhost`,
    127.0.0.0/8 and ::1 are trustworthy even over http. `host` is lower-case, an IPv6 address
    with or without brackets. A name that merely starts with "127." (`127.evil.test`) is a DNS
    name like any other, not a loopback address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
