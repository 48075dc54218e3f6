"""`rewrite_location`: URLs in a response that point at the upstream, pointed at coxp instead.

A backend behind a proxy builds absolute redirect URLs from its own address (the `Host` it was
sent, its configured base URL); a client that follows them goes around the proxy — and around
its policies. Like nginx's `proxy_redirect default`, coxp rewrites such URLs in `Location`,
`Content-Location` (RFC 9110 §10.2.2, §8.7) and `Refresh` (HTML standard, "shared declarative
refresh steps") to the request's own origin: the scheme it arrived on and the `Host` it was sent
to (or a trusted proxy's `X-Forwarded-Proto`/`-Host`), port as received. Pure functions.
"""
from __future__ import annotations

import re
from typing import Final

from proxy.model import Upstream, ValueRewrite
from proxy.standards import DEFAULT_PORTS

__all__ = ["REWRITTEN_HEADERS", "location_rewrite", "rewrite_refresh", "rewrite_url"]

REWRITTEN_HEADERS: Final = frozenset({"location", "content-location", "refresh"})

# RFC 3986 §3: an absolute URI (`scheme://authority...`) or a network-path reference
# (`//authority...`, resolved with the scheme of the page).
_URL: Final = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*):)?//(?P<authority>[^/?#]*)(?P<rest>.*)", re.S)
_AUTHORITY: Final = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]@]*))(?::(?P<port>[0-9]*))?")
# HTML standard, "shared declarative refresh steps": a time (digits and dots), then `;` or `,`
# or whitespace, then optionally `url=`, then the URL, optionally quoted.
_WS: Final = "\t\n\f\r "
_REFRESH: Final = re.compile(
    rf"(?P<lead>[{_WS}]*[0-9.]+(?:[{_WS}]*[;,]|[{_WS}])[{_WS}]*(?:[Uu][Rr][Ll][{_WS}]*=[{_WS}]*)?)"
    rf"(?P<quote>['\"]?)(?P<url>.*)",
    re.S,
)


def _points_at(upstream: Upstream, scheme: str | None, authority: str) -> bool:
    """Whether `scheme` (None: the page's) and `authority` name the upstream's origin, compared
    case-insensitively with default ports made explicit (RFC 3986 §6.2.3)."""
    if scheme is not None and scheme.lower() != upstream.scheme:
        return False
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        return False  # userinfo, or not a host[:port]
    host = (match["v6"] or match["host"] or "").lower()
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS[upstream.scheme]
    return host == upstream.host.lower() and port == upstream.port


def rewrite_url(url: str, upstream: Upstream, own_origin: str) -> str | None:
    """`url` on `own_origin` (`scheme://host[:port]`) when it points at `upstream`, else None.
    A network-path reference stays one (`//own-host/path`)."""
    match = _URL.match(url)
    if match is None or not _points_at(upstream, match["scheme"], match["authority"]):
        return None
    if match["scheme"] is None:
        return "//" + own_origin.partition("://")[2] + match["rest"]
    return own_origin + match["rest"]


def rewrite_refresh(value: str, upstream: Upstream, own_origin: str) -> str | None:
    """A `Refresh` value (`5; url=https://...`) with its URL rewritten by `rewrite_url`."""
    match = _REFRESH.match(value)
    if match is None:
        return None
    quote, url, tail = match["quote"], match["url"], ""
    if quote:
        url, found, after = url.partition(quote)
        tail = found + after
    rewritten = rewrite_url(url, upstream, own_origin)
    if rewritten is None:
        return None
    return match["lead"] + quote + rewritten + tail


def location_rewrite(upstream: Upstream) -> ValueRewrite:
    """The value edit of `REWRITTEN_HEADERS` on a route whose upstream is `upstream`."""

    def rewrite(name: str, value: str, own_origin: str | None) -> str | None:
        if own_origin is None:
            return None
        if name == "refresh":
            return rewrite_refresh(value, upstream, own_origin)
        return rewrite_url(value, upstream, own_origin)

    return rewrite
