"""The console log (`[log] format = "console"`): one line per request a person scans —
status, method, host+path, origin, decision and reason, milliseconds — coloured on a terminal,
plus warnings a developer can act on. Other events keep structlog's `key=value` lines
(structlog is imported only when this format is on: docs/DECISIONS.md).

The warnings need facts the JSON event does not carry (the `Host`, a `Cookie`, the final
`Set-Cookie` lines): `request_extras` computes them only when the console format is on, so the
JSON path pays nothing for them.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from proxy.model import Header
from proxy.origins import normalize_origin, site_of

RESET, DIM, BOLD = "\033[0m", "\033[2m", "\033[1m"
RED, GREEN, YELLOW, CYAN, MAGENTA = "\033[31m", "\033[32m", "\033[33m", "\033[36m", "\033[35m"

DECISION_COLOURS = {
    "allowed": GREEN, "preflight-allowed": GREEN, "same-origin": GREEN,
    "denied": RED, "preflight-denied": RED,
}


def colours_wanted(stream: Any) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# --------------------------------------------------------------------------------------------
# Warnings (pure: request and response facts in, sentences out)


def cookie_warnings(origin: str | None, host: str, cors: str, credentials: bool, request_has_cookie: bool,
                    set_cookies: Sequence[str], route: str) -> list[str]:
    """What a developer should fix when a cross-origin call with cookies cannot work.

    - A cross-site credentialed response whose `Set-Cookie` lacks `SameSite=None; Secure`: the
      browser refuses to store it for a cross-site context (RFC 6265bis §5.6 steps 13–15), or
      never sends it back to this page's requests.
    - A `Cookie` on an allowed cross-origin request of a route without credentials: the page
      asked with `credentials: "include"`, and without `Access-Control-Allow-Credentials`
      the browser hides the response (Fetch standard, CORS check)."""
    if origin is None or cors != "allowed":
        return []
    warnings: list[str] = []
    if credentials and set_cookies and _cross_site(origin, host):
        for line in set_cookies:
            if not _none_and_secure(line):
                name = line.split("=", 1)[0].strip()
                warnings.append(
                    f'cookie "{name}" is set without SameSite=None; Secure for the cross-site page {origin}: '
                    f"the browser will not send this cookie back; see [routes.cookies] "
                    f"(or call {host} from a page on the same site)")
    if request_has_cookie and not credentials:
        warnings.append(
            f'the request from {origin} carries Cookie, but route "{route}" does not allow credentials: '
            f"the browser hides the response from a credentialed fetch; set allow_credentials = true "
            f"in the route's [routes.cors]")
    return warnings


def _cross_site(origin: str, host: str) -> bool:
    normalized = normalize_origin(origin)
    if normalized is None or normalized == "null":
        return True
    origin_host = normalized.split("://", 1)[1]
    return site_of(_without_port(origin_host)) != site_of(_without_port(host))


def _without_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _none_and_secure(set_cookie: str) -> bool:
    attributes = [a.strip().lower() for a in set_cookie.split(";")[1:]]
    names = {a.split("=", 1)[0].strip() for a in attributes}
    return "secure" in names and any(a.replace(" ", "") == "samesite=none" for a in attributes)


def request_extras(head_host: str, request_headers: Sequence[Header], response_headers: Sequence[Header],
                   origin: str | None, cors: str, headers_set: Sequence[str], route: str) -> dict[str, Any]:
    """The console-only fields of a `request` event: `host` and `warnings`."""
    extras: dict[str, Any] = {"host": head_host}
    if origin is not None and cors == "allowed":
        warnings = cookie_warnings(
            origin, head_host, cors,
            credentials="access-control-allow-credentials" in headers_set,
            request_has_cookie=any(n.lower() == "cookie" for n, _ in request_headers),
            set_cookies=[v for n, v in response_headers if n.lower() == "set-cookie"],
            route=route,
        )
        if warnings:
            extras["warnings"] = warnings
    return extras


# --------------------------------------------------------------------------------------------
# Rendering


class ConsoleRenderer:
    """A renderer with structlog's signature: `request` events as a scan-friendly line, the rest
    as structlog's console renderer writes them."""

    def __init__(self, colours: bool) -> None:
        import structlog.dev  # the development format only: a JSON-logging server never loads it

        self.colours = colours
        self.other = structlog.dev.ConsoleRenderer(colors=colours)

    def _paint(self, colour: str, text: str) -> str:
        return f"{colour}{text}{RESET}" if self.colours else text

    def __call__(self, logger: Any, method_name: str, event: dict[str, Any]) -> str:
        if event.get("event") != "request":
            return self.other(logger, method_name, event)
        return self.request_line(event)

    def request_line(self, event: dict[str, Any]) -> str:
        """`200 GET     localhost:8080/api/items   http://localhost:5173   allowed (origin-allowed)   3.2 ms`:
        columns padded so that a column of lines reads as a table."""
        status = event.get("status")
        status_colour = RED if status is None or status >= 500 else YELLOW if status >= 400 else \
            CYAN if status >= 300 else GREEN
        cors = str(event.get("cors"))
        decision = cors + (f" ({event['reason']})" if event.get("reason") else "")
        origin = event.get("origin")
        duration = event.get("duration_ms")
        parts = [
            self._paint(BOLD + status_colour, str(status)),
            self._paint(BOLD, str(event.get("method")).ljust(7)),
            f"{event.get('host', '')}{event.get('path', '')}".ljust(34),
            origin.ljust(26) if origin else self._paint(DIM, "(no origin)".ljust(26)),
            self._paint(DECISION_COLOURS.get(cors, DIM), decision.ljust(30)),
            (f"{duration:.1f} ms" if isinstance(duration, (int, float)) else "").rjust(9),
            self._paint(DIM, f"[{event.get('route')}] {str(event.get('timestamp', ''))[11:19]}"),
        ]
        line = " ".join(parts)
        for warning in event.get("warnings") or ():
            line += "\n    " + self._paint(YELLOW, f"warning: {warning}")
        return line
