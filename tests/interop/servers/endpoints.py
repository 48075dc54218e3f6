"""The endpoints the Python origins of the interop tests share (http.server on HTTP/1.0, the
gunicorn WSGI app, Apache's CGI scripts): one pure function from a request to a response.

    GET  /size?n=N        N bytes (a fixed pattern)
    ANY  /echo            "METHOD LENGTH SHA256\\n" of the request body as the server read it
    ANY  /status?code=N   status N, empty body (204, 304...)
    GET  /cookies         three Set-Cookie lines
    GET  /gzip            a gzip-encoded text (Content-Encoding: gzip)
    GET  /redirect        302 with absolute Location, Content-Location and Refresh on `origin`
"""
from __future__ import annotations

import gzip
import hashlib

COOKIES = (
    "sid=abc123; Path=/; HttpOnly",
    "theme=dark; Max-Age=3600; SameSite=Lax",
    "pref=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/app",
)
GZIPPED = gzip.compress(b"compressed text " * 4000, mtime=0)


def pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def answer(method: str, path: str, query: dict[str, str], body: bytes, origin: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) for the request; `origin` is the server's own `http://host:port`."""
    if path == "/size":
        return 200, [("Content-Type", "application/octet-stream")], pattern(int(query.get("n", "0")))
    if path == "/echo":
        text = f"{method} {len(body)} {hashlib.sha256(body).hexdigest()}\n"
        return 200, [("Content-Type", "text/plain"), ("X-Body-Length", str(len(body)))], text.encode()
    if path == "/status":
        return int(query.get("code", "200")), [("X-Status", "asked")], b""
    if path == "/cookies":
        return 200, [("Content-Type", "text/plain"), *(("Set-Cookie", c) for c in COOKIES)], b"cookies\n"
    if path == "/gzip":
        return 200, [("Content-Type", "text/plain"), ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")], GZIPPED
    if path == "/redirect":
        return 302, [("Location", f"{origin}/target?from=redirect"), ("Content-Location", f"{origin}/redirect"),
                     ("Refresh", f"0; url={origin}/refreshed"), ("Content-Type", "text/plain")], b"moved\n"
    return 404, [("Content-Type", "text/plain")], b"not found\n"
