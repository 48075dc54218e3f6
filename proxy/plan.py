"""The response plan: whether coxp answers a request itself, tunnels it or forwards it.

Pure, like the policy engine it follows: the server (`proxy.exchange`), `coxp explain` and the
tests call `plan` and `answer_response`, so what explain reports is what the server does by
construction. Decisions that depend on the moment rather than on the request (503 when too
many requests are in flight, 502/504 when the upstream fails, 413 for a chunked body found too
long while streaming) stay with the server.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

from proxy.http1 import ALLOWED_METHODS, text_body
from proxy.model import Config, Route, Upstream
from proxy.policy import Answer, Decision, EditResult, proxy_response_headers

__all__ = ["Answer", "Forward", "RequestFacts", "Tunnel", "answer_response", "plan"]

TEXT = "text/plain; charset=utf-8"

# RFC 9110 §9.3.7: `OPTIONS *` asks about the server as a whole; there is no resource to
# forward it to, so coxp answers with the methods it relays.
OPTIONS_ASTERISK = Answer(204, "", (("Allow", ALLOWED_METHODS),))
NO_UPSTREAM = Answer(404, "not-found: no route matches and no upstream is configured", closes=True)
# RFC 9110 §15.5.14: refused before any byte of the body is read; the unread body ends the
# connection.
BODY_TOO_LARGE = Answer(413, "body-too-large", closes=True)


class Forward(NamedTuple):
    """Send the request to `upstream` and edit its response with the decision's edits."""

    upstream: Upstream


class Tunnel(NamedTuple):
    """A WebSocket handshake: forward it to `upstream`, edit its `101`, then pipe bytes."""

    upstream: Upstream


class RequestFacts(Protocol):
    """What the plan needs to know about a request beyond its policy decision;
    `proxy.http1.RequestHead` is one."""

    @property
    def target(self) -> str: ...

    @property
    def websocket(self) -> bool: ...

    @property
    def content_length(self) -> int | None: ...


def plan(config: Config, route: Route, decision: Decision, request: RequestFacts) -> Answer | Forward | Tunnel:
    """How the request is answered. `decision` is `decide(route, info, websocket=request.websocket)`."""
    if decision.answer is not None:  # preflight 204/403, enforce 403
        return decision.answer
    if request.target == "*":
        return OPTIONS_ASTERISK
    upstream = route.upstream or config.proxy.upstream
    if upstream is None:
        return NO_UPSTREAM
    max_body = config.limits.max_body_bytes
    if max_body and (request.content_length or 0) > max_body:
        return BODY_TOO_LARGE
    if request.websocket:
        return Tunnel(upstream)
    return Forward(upstream)


def answer_response(decision: Decision, answer: Answer) -> tuple[EditResult, bytes]:
    """The headers and body of a response coxp makes itself: the route's policy headers apply to
    it too (`proxy_response_headers`), then the answer's own headers."""
    body = text_body(answer.body)
    edited = proxy_response_headers(decision, TEXT if body else None, len(body))
    if answer.extra:
        edited = EditResult(edited.headers + list(answer.extra), edited.set_names, edited.removed_names)
    return edited, body
