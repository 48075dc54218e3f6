"""Talking to the upstream: request headers as a proxy must send them, failures named for the log.

The bytes go through `proxy.upstream`'s pooled HTTP/1.1 client, which sends the target byte for
byte and the body as it arrives, and never decodes or re-encodes content.
"""
from __future__ import annotations

import ipaddress
import ssl
from typing import AsyncIterator

from proxy.http1 import HOP_BY_HOP, RequestHead
from proxy.model import ProxySettings, Upstream
from proxy.upstream import (
    MAX_RESPONSE_HEAD,
    Http1Client,
    PooledResponse,
    UpstreamConnectError,
    UpstreamProtocolError,
)

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


class UpstreamFailure(Exception):
    """The upstream could not give a response: `status` is 502 or 504, `reason` a short code."""

    def __init__(self, status: int, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status = status
        self.reason = reason
        self.detail = detail


class UpstreamAborted(Exception):
    """The upstream response broke off after it started (truncated body or read timeout)."""


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


def upstream_ssl_context(settings: ProxySettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.upstream_ca)
    if not settings.upstream_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamResponse:
    """The upstream's response head, hop-by-hop headers removed, with its body still to read.

    The reason phrase is not kept: coxp sends the standard one (RFC 9112 §4: clients ignore it)."""

    __slots__ = ("status", "headers", "content_length", "_pooled")

    def __init__(self, pooled: PooledResponse):
        self.status = pooled.status
        self.headers = response_headers(pooled.headers)
        self.content_length = pooled.content_length
        self._pooled = pooled

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._pooled.chunks():
                yield data
        except (UpstreamProtocolError, TimeoutError) as broken:
            raise UpstreamAborted(str(broken) or "upstream-read-timeout") from broken

    def buffered_body(self) -> bytes | None:
        """The whole body when it has already arrived, else None (then stream `chunks()`)."""
        return self._pooled.buffered_body()

    def release(self) -> None:
        self._pooled.release()

    def close(self) -> None:
        self._pooled.close()


class UpstreamClient:
    """One pooled client per worker; rebuilt when a reload changes the upstream settings."""

    def __init__(self, settings: ProxySettings):
        self.settings = settings
        self._http = Http1Client(upstream_ssl_context(settings), settings.connect_timeout, settings.read_timeout)

    async def send(
        self,
        upstream: Upstream,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        try:
            pooled = await self._http.send(upstream.key, method, target, headers, body)
        except UpstreamConnectError as failure:
            raise UpstreamFailure(failure.status, failure.reason, failure.detail) from failure
        except UpstreamProtocolError as failure:
            raise UpstreamFailure(502, failure.reason, failure.detail) from failure
        except TimeoutError as failure:
            raise UpstreamFailure(
                504, "upstream-response-timeout", f"no response head within {self.settings.read_timeout} s"
            ) from failure
        return UpstreamResponse(pooled)

    async def close(self) -> None:
        self._http.close()


def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop ones (and those its Connection names)."""
    named = [value for name, value in headers if name.lower() == "connection"]
    dropped = HOP_BY_HOP.union(*({t.strip().lower() for t in v.split(",")} for v in named)) if named else HOP_BY_HOP
    return [(name, value) for name, value in headers if name.lower() not in dropped]
