"""`coxp explain`: one request through the server's own decision code, nothing contacted."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from proxy.http1 import text_body
from proxy.model import Config
from proxy.policy import apply_edits, decide, proxy_response_headers, request_info, routing_method
from proxy.routing import Router

_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Explanation:
    route: str
    method: str
    url: str
    origin: str | None
    cors: str
    reason: str | None
    answered_by_proxy: bool
    status: int | None  # the proxy's own status; None when the upstream's status is kept
    body: str | None  # the body of the proxy's own answer, as sent; None when forwarded
    headers: list[tuple[str, str]]  # the response headers after coxp's edits
    headers_set: list[str]
    headers_removed: list[str]
    note: str

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "route": self.route, "method": self.method, "url": self.url, "origin": self.origin,
                "cors": self.cors, "reason": self.reason, "answered_by_proxy": self.answered_by_proxy,
                "status": self.status, "headers": [list(h) for h in self.headers], "body": self.body,
                "headers_set": self.headers_set, "headers_removed": self.headers_removed, "note": self.note,
            },
            option=orjson.OPT_INDENT_2,
        )

    def as_text(self) -> str:
        lines = [
            f"request:        {self.method} {self.url}",
            f"route:          {self.route}",
            f"origin:         {self.origin if self.origin is not None else '(none)'}",
            f"classification: {self.cors}",
            f"reason:         {self.reason or '-'}",
            f"response:       {self.note}",
            "headers set:" if self.headers_set else "headers set:     (none)",
        ]
        lines += [f"  {n}: {v}" for n, v in self.headers if n.lower() in self.headers_set]
        lines.append("headers removed: " + (", ".join(self.headers_removed) or "(none)"))
        lines.append("response headers:" if self.headers else "response headers: (none)")
        lines += [f"  {n}: {v}" for n, v in self.headers]
        if self.body is not None:
            lines.append(f"response body:   {self.body!r}" if self.body else "response body:   (empty)")
        return "\n".join(lines)


class ExplainUsageError(ValueError):
    pass


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ExplainUsageError(f"header {text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def explain(
    config: Config,
    method: str,
    url: str,
    request_headers: list[tuple[str, str]],
    upstream_headers: list[tuple[str, str]],
) -> Explanation:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExplainUsageError(f"URL {url!r} must be absolute: http://host[:port]/path")
    target = parts.path or "/"
    headers = list(request_headers)
    if not any(n.lower() == "host" for n, _ in headers):
        headers.insert(0, ("Host", parts.netloc))
    host = next(v for n, v in headers if n.lower() == "host")
    info = request_info(method, headers, parts.scheme, host)
    route = Router(config).match(host, target, routing_method(info))
    decision = decide(route, info)
    upstream = route.upstream or config.proxy.upstream
    if decision.answer is not None:
        body = decision.answer.body
        edited = proxy_response_headers(decision, _TEXT if body else None, len(text_body(body)))
        status, note = decision.answer.status, f"{decision.answer.status} answered by coxp; the upstream is not contacted"
    elif upstream is None:
        body = "not-found: no route matches and no upstream is configured"
        edited = proxy_response_headers(decision, _TEXT, len(text_body(body)))
        status, note = 404, "404 answered by coxp: no upstream for this route"
    else:
        edited = apply_edits(decision.edits, upstream_headers)
        status = None
        simulated = "the simulated upstream headers" if upstream_headers else "an upstream response without headers"
        note = f"forwarded to {upstream.url}; the upstream's status is kept; edits applied to {simulated}"
    return Explanation(
        route=route.name, method=method, url=url, origin=decision.origin, cors=decision.cors,
        reason=decision.reason, answered_by_proxy=status is not None, status=status,
        body=None if status is None else text_body(body).decode(),
        headers=edited.headers, headers_set=edited.set_names, headers_removed=edited.removed_names, note=note,
    )
