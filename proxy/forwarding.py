"""Talking to the upstream: request headers as a proxy must send them, pooled connections, failures.

Uses aiohttp's client (C parser, keep-alive pool) with everything that would alter the message
turned off: no decompression, no automatic headers, no cookie jar, the target sent byte for byte.
"""
from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.http1 import HOP_BY_HOP, RequestHead
from proxy.model import ProxySettings, Upstream

MAX_UPSTREAM_HEAD = 64 * 1024  # an upstream response head over 64 KiB is refused (502)
# aiohttp bounds each line and the number of lines, not the head as a whole: let any line and
# any count (a field line is at least 4 bytes) up to the byte bound through, then check the total.
_MAX_UPSTREAM_FIELD_LINES = MAX_UPSTREAM_HEAD // 4
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
_FORWARDED_FOR = "x-forwarded-for"
_FORWARDED_PROTO = "x-forwarded-proto"
_FORWARDED_HOST = "x-forwarded-host"
_X_FORWARDED = frozenset({_FORWARDED_FOR, _FORWARDED_PROTO, _FORWARDED_HOST})
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


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
) -> CIMultiDict[str]:
    """The request headers to send upstream: hop-by-hop removed, one Host, X-Forwarded-*."""
    dropped = _NOT_FORWARDED | head.connection_tokens
    if settings.forwarded_headers and not trusted_peer:
        dropped = dropped | _X_FORWARDED
    out: CIMultiDict[str] = CIMultiDict()
    out["Host"] = head.host if settings.preserve_host else upstream.host_header
    forwarded_for: list[str] = []
    for name, value in head.headers:
        lower = name.lower()
        if lower in dropped:
            continue
        if lower == _FORWARDED_FOR and settings.forwarded_headers:
            forwarded_for.append(value)
            continue
        out.add(name, value)
    if settings.forwarded_headers:
        forwarded_for.append(peer_ip)
        out["X-Forwarded-For"] = ", ".join(forwarded_for)
        if _FORWARDED_PROTO not in out:
            out["X-Forwarded-Proto"] = scheme
        if _FORWARDED_HOST not in out:
            out["X-Forwarded-Host"] = head.host
    if head.content_length is not None:
        out["Content-Length"] = str(head.content_length)
    return out


def upstream_ssl_context(settings: ProxySettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.upstream_ca)
    if not settings.upstream_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # hop-by-hop already removed
    content_length: int | None
    _response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._response.content.iter_any():
                yield data
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as broken:
            raise UpstreamAborted(str(broken) or type(broken).__name__) from broken

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class UpstreamClient:
    """One pooled client per worker; rebuilt when a reload changes the upstream TLS settings."""

    def __init__(self, settings: ProxySettings):
        self.settings = settings
        connector = aiohttp.TCPConnector(
            limit=0,
            ssl=upstream_ssl_context(settings),
            keepalive_timeout=30.0,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
            ),
            max_line_size=MAX_UPSTREAM_HEAD,
            max_field_size=MAX_UPSTREAM_HEAD,
            max_headers=_MAX_UPSTREAM_FIELD_LINES,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            read_bufsize=256 * 1024,
        )

    async def send(
        self,
        upstream: Upstream,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        url = URL(upstream.url + target, encoded=True)
        try:
            response = await self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            )
        except aiohttp.ClientConnectorCertificateError as failure:
            raise UpstreamFailure(502, "upstream-tls-verification-failed", str(failure.certificate_error)) from failure
        except aiohttp.ClientSSLError as failure:
            raise UpstreamFailure(502, "upstream-tls-error", str(failure)) from failure
        except aiohttp.ConnectionTimeoutError as failure:
            raise UpstreamFailure(504, "upstream-connect-timeout", str(failure)) from failure
        except aiohttp.SocketTimeoutError as failure:
            raise UpstreamFailure(504, "upstream-response-timeout", str(failure)) from failure
        except asyncio.TimeoutError as failure:
            raise UpstreamFailure(504, "upstream-timeout", str(failure)) from failure
        except aiohttp.ClientConnectorError as failure:
            raise UpstreamFailure(502, "upstream-unreachable", str(failure.os_error)) from failure
        except aiohttp.ServerDisconnectedError as failure:
            raise UpstreamFailure(502, "upstream-closed-without-response", str(failure)) from failure
        except aiohttp.ClientResponseError as failure:
            raise UpstreamFailure(502, "upstream-invalid-response", failure.message) from failure
        except aiohttp.ClientError as failure:
            raise UpstreamFailure(502, "upstream-error", str(failure) or type(failure).__name__) from failure
        if _head_size(response) > MAX_UPSTREAM_HEAD:
            response.close()
            raise UpstreamFailure(502, "upstream-head-too-large", f"response head over {MAX_UPSTREAM_HEAD} bytes")
        return UpstreamResponse(
            status=response.status,
            reason=response.reason or "",
            headers=response_headers(response.raw_headers),
            content_length=response.content_length,
            _response=response,
        )

    async def close(self) -> None:
        await self._session.close()


def _head_size(response: aiohttp.ClientResponse) -> int:
    """The response head's size on the wire: status line, `name: value` lines, CRLFs."""
    status_line = len("HTTP/1.1 000 ") + len(response.reason or "") + 2
    return status_line + sum(len(name) + len(value) + 4 for name, value in response.raw_headers) + 2


def response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop ones (and those its Connection names)."""
    decoded = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
    dropped = set(HOP_BY_HOP)
    for name, value in decoded:
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(","))
    return [(name, value) for name, value in decoded if name.lower() not in dropped]
