"""`coxp explain`: one request through the server's own decision code, nothing contacted."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from proxy.http1 import BadRequest, RequestHead, head_end, parse_head, refusal
from proxy.model import Config
from proxy.plan import BODY_TOO_LARGE, NO_UPSTREAM, Answer, Tunnel, answer_response, plan
from proxy.policy import Decision, apply_edits, decide, request_info, routing_method
from proxy.reports import (
    CORS_ANSWER,
    MAX_REPORTS,
    CollectorAnswer,
    answer_before_body,
    collector_response,
    field_value,
    is_collector_path,
)
from proxy.routing import Router
from proxy.shadow import shadow_decision


@dataclass(frozen=True, slots=True)
class Explanation:
    route: str | None  # None: refused before routing
    method: str
    url: str
    normalised_path: str | None  # the path's normalised view, when it differs from the raw path
    origin: str | None
    cors: str | None  # None: refused before routing
    reason: str | None
    answered_by_proxy: bool
    status: int | None  # the proxy's own status; None when the upstream's status is kept
    body: str | None  # the body of the proxy's own answer, as sent; None when forwarded
    headers: list[tuple[str, str]]  # the response headers after coxp's edits
    headers_set: list[str]
    headers_removed: list[str]
    note: str
    shadow: Decision | None = None  # the candidate table's decision ([cors.shadow]), never applied

    def as_json(self) -> bytes:
        data = {
            "route": self.route, "method": self.method, "url": self.url,
            "normalised_path": self.normalised_path, "origin": self.origin,
            "cors": self.cors, "reason": self.reason, "answered_by_proxy": self.answered_by_proxy,
            "status": self.status, "headers": [list(h) for h in self.headers], "body": self.body,
            "headers_set": self.headers_set, "headers_removed": self.headers_removed, "note": self.note,
        }
        if self.shadow is not None:  # as in the decision log: only routes with a candidate table
            data["shadow_cors"] = self.shadow.cors
            data["shadow_reason"] = self.shadow.reason
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    def as_text(self) -> str:
        lines = [f"request:        {self.method} {self.url}"]
        if self.normalised_path is not None:
            lines.append(f"normalised:     {self.normalised_path}  (the path as a normalising upstream reads it)")
        lines += [
            f"route:          {self.route or '-'}",
            f"origin:         {self.origin if self.origin is not None else '(none)'}",
            f"classification: {self.cors or '-'}",
            f"reason:         {self.reason or '-'}",
        ]
        if self.shadow is not None:
            verdict = self.shadow.cors + (f" ({self.shadow.reason})" if self.shadow.reason else "")
            differs = "same as live" if self.shadow.cors == self.cors else "differs from live"
            lines.append(f"shadow:         {verdict}: the [cors.shadow] candidate, not applied; {differs}")
        lines += [
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
    """What the server would do with the request: its head is parsed by the server's parser,
    then routed, decided and planned by the server's own functions."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExplainUsageError(f"URL {url!r} must be absolute: http://host[:port]/path")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = list(request_headers)
    if not any(n.lower() == "host" for n, _ in headers):
        headers.insert(0, ("Host", parts.netloc))
    head = _parsed_head(method, target, headers, config)
    if isinstance(head, BadRequest):
        return _refused(method, url, None, head, "the request head")
    if is_collector_path(config.reports, head.path):
        return _collected(config, method, url, head)
    info = request_info(head.method, head.headers, parts.scheme, head.host)
    router = Router(config)
    shown = head.normal_path if head.normal_path != head.path else None
    try:
        route = router.match(head.host, head.path, routing_method(info), head.normal_path)
    except BadRequest as ambiguous:
        raw_route, normal_route = router.routes_of_views(head.host, head.path, routing_method(info), head.normal_path)
        return _refused(method, url, shown, ambiguous, f"the raw path selects route {raw_route.name!r}, "
                        f"the normalised path route {normal_route.name!r}")
    decision = decide(route, info, websocket=head.websocket)
    shadow = shadow_decision(route, info, websocket=head.websocket)
    action = plan(config, route, decision, head)
    status: int | None = None
    body: bytes | None = None
    if isinstance(action, Answer):
        edited, body = answer_response(decision, action)
        status = action.status
        if action is NO_UPSTREAM:
            note = "404 answered by coxp: no upstream for this route"
        elif action is BODY_TOO_LARGE:
            note = f"413 answered by coxp: Content-Length is over [limits] max_body_bytes ({config.limits.max_body_bytes})"
        else:
            note = f"{status} answered by coxp; the upstream is not contacted"
    else:
        edited = apply_edits(decision.edits, upstream_headers, f"{parts.scheme}://{head.host}")
        simulated = "the simulated upstream headers" if upstream_headers else "an upstream response without headers"
        if isinstance(action, Tunnel):
            note = (f"WebSocket handshake tunnelled to {action.upstream.url}; CORS headers do not apply to its 101; "
                    f"edits applied to {simulated}")
        else:
            note = f"forwarded to {action.upstream.url}; the upstream's status is kept; edits applied to {simulated}"
    return Explanation(
        route=route.name, method=head.method, url=url, normalised_path=shown, origin=decision.origin, cors=decision.cors,
        reason=decision.reason, answered_by_proxy=status is not None, status=status,
        body=None if body is None else body.decode(),
        headers=edited.headers, headers_set=edited.set_names, headers_removed=edited.removed_names, note=note,
        shadow=shadow,
    )


def _parsed_head(method: str, target: str, headers: list[tuple[str, str]], config: Config) -> RequestHead | BadRequest:
    """The request as the server would parse it, or the refusal the server would answer it with."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    try:
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ExplainUsageError("a header or the URL has a character outside latin-1; percent-encode it") from None
    try:
        head_end(raw, config.limits)  # the size limits, checked as the server reads a head
        return parse_head(raw, config.limits)
    except BadRequest as refused:
        return refused


def _collected(config: Config, method: str, url: str, head: RequestHead) -> Explanation:
    """A request to the report collector: answered by coxp, before routing, never forwarded."""
    settings = config.reports
    assert settings is not None
    early = answer_before_body(head.method, field_value(head.headers, "content-type"), head.content_length,
                               settings.max_body_bytes)
    where = "coxp's report collector ([reports]); never forwarded, no route policy applies"
    if early is None:
        answer = CollectorAnswer(204, "", CORS_ANSWER)
        note = (f"204 answered by {where}; that is, when the body holds valid reports: malformed JSON or "
                f"the wrong shape is 400, over {settings.max_body_bytes} bytes or {MAX_REPORTS} reports 413")
    else:
        answer = early
        note = f"{answer.status} answered by {where}"
    headers, body = collector_response(answer)
    return Explanation(
        route=None, method=method, url=url, normalised_path=None, origin=field_value(head.headers, "origin"), cors=None,
        reason=answer.reason.split(":", 1)[0] or None, answered_by_proxy=True, status=answer.status,
        body=body.decode(), headers=headers, headers_set=[], headers_removed=[], note=note,
    )


def _refused(method: str, url: str, normalised: str | None, refused: BadRequest, why: str) -> Explanation:
    """A request the server refuses before routing: a `bad_request` event, nothing forwarded."""
    headers, body = refusal(refused)
    return Explanation(
        route=None, method=method, url=url, normalised_path=normalised, origin=None, cors=None, reason=refused.reason,
        answered_by_proxy=True, status=refused.status, body=body.decode(), headers=headers, headers_set=[],
        headers_removed=[], note=f"{refused.status} answered by coxp before routing ({why}); the upstream is not contacted",
    )
