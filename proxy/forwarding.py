"""Header transforms of a proxy, pure: what goes upstream, what comes back to the client.

`proxy.upstream` sends what these return (the target byte for byte, the body as it arrives,
content never decoded or re-encoded).
"""
from __future__ import annotations

import ipaddress

from proxy.http1 import HOP_BY_HOP, RequestHead
from proxy.model import ProxySettings, Upstream

_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
_FORWARDED_FOR = "x-forwarded-for"
_FORWARDED_PROTO = "x-forwarded-proto"
_FORWARDED_HOST = "x-forwarded-host"
_X_FORWARDED = frozenset({_FORWARDED_FOR, _FORWARDED_PROTO, _FORWARDED_HOST})
# Headers in which a proxy tells the upstream about the client or the original request: only a
# trusted proxy in front of coxp may have set them. `X-Original-URL`/`X-Rewrite-URL` make
# Symfony, Zend and IIS-style apps route on another path than the one coxp's policy saw.
_FROM_PROXIES_ONLY = frozenset(
    {"forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-original-url", "x-rewrite-url"}
)
_UNTRUSTED_DROPPED = _X_FORWARDED | _FROM_PROXIES_ONLY
# RFC 6455 §4.1: the handshake's upgrade, sent upstream and on the 101 to the client. coxp
# names the protocol itself; the client's request was checked to ask for exactly this.
UPGRADE_TO_WEBSOCKET = (("Connection", "Upgrade"), ("Upgrade", "websocket"))


def is_trusted(peer_ip: str, trusted: tuple) -> bool:
    if not trusted or not peer_ip:
        return False
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def first_value(headers: list[tuple[str, str]], lower_name: str) -> str | None:
    for name, value in headers:
        if name.lower() == lower_name:
            return value.split(",", 1)[0].strip()
    return None


def upstream_headers(
    head: RequestHead,
    settings: ProxySettings,
    upstream: Upstream,
    peer_ip: str,
    scheme: str,
    trusted_peer: bool,
) -> list[tuple[str, str]]:
    """The request headers to send upstream: hop-by-hop removed, one Host, X-Forwarded-*;
    from an untrusted peer no header a proxy would set; no name with "_" unless allowed."""
    dropped = _NOT_FORWARDED | head.connection_tokens if head.connection_tokens else _NOT_FORWARDED
    forwarded = settings.forwarded_headers
    if forwarded and not trusted_peer:
        dropped = dropped | _UNTRUSTED_DROPPED
    # CGI and WSGI turn "-" into "_" (RFC 3875 §4.1.18): `X_Forwarded_Host` would reach the app
    # as X-Forwarded-Host past the rule above. nginx drops such names by default too.
    drop_underscores = not settings.allow_underscores_in_headers
    out = [("Host", head.host if settings.preserve_host else upstream.host_header)]
    forwarded_for: list[str] = []
    present: set[str] = set()
    for name, value in head.headers:
        lower = name.lower()
        if lower in dropped or (drop_underscores and "_" in name):
            continue
        if forwarded and lower in _X_FORWARDED:
            if lower == _FORWARDED_FOR:
                forwarded_for.append(value)
                continue
            present.add(lower)
        out.append((name, value))
    if forwarded:
        forwarded_for.append(peer_ip)
        out.append(("X-Forwarded-For", ", ".join(forwarded_for)))
        if _FORWARDED_PROTO not in present:
            out.append(("X-Forwarded-Proto", scheme))
        if _FORWARDED_HOST not in present:
            out.append(("X-Forwarded-Host", head.host))
    if head.content_length is not None:
        out.append(("Content-Length", str(head.content_length)))
    return out


def relayed_positions(headers: list[tuple[str, str]]) -> list[int]:
    """Where in an upstream response's `headers` the fields relayed to the client are: all but
    the hop-by-hop ones and those its Connection names (RFC 9110 §7.6.1)."""
    named = [value for name, value in headers if name.lower() == "connection"]
    dropped = HOP_BY_HOP.union(*({t.strip().lower() for t in v.split(",")} for v in named)) if named else HOP_BY_HOP
    return [i for i, (name, _) in enumerate(headers) if name.lower() not in dropped]
