"""The response plan: whether coxp answers a request itself, tunnels it or forwards it.

Pure, like the policy engine it follows: the server (`proxy.exchange`), `coxp explain` and the
tests call `plan` and `answer_response`, so what explain reports is what the server does by
construction. Decisions that depend on the moment rather than on the request (503 when too
many requests are in flight, 502/504 when the upstream fails, 413 for a chunked body found too
long while streaming) stay with the server.
"""
from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Final, NamedTuple, Protocol

from proxy.forwarding import relayed_positions
from proxy.http1 import ALLOWED_METHODS, field_lines, text_body
from proxy.memo import MAX_KEY_CHARS, LruCache
from proxy.model import Config, Header, PolicyEdit, Route, Upstream
from proxy.policy import Answer, Decision, EditResult, apply_edits_kept, proxy_response_headers

__all__ = ["Answer", "Forward", "RequestFacts", "Tunnel", "answer_response", "plan", "relayed_head"]

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


# Upstream responses of one route repeat a handful of header-name lists, and what is relayed of
# a head depends on its names only -- the hop-by-hop fields go, the edits drop, keep and add
# fields by name -- unless a value is read: a Connection naming other fields, a Vary to merge
# into, a value edit's header. The outcome for a names list is remembered as a relay plan,
# keyed by the identity of the edits (`decide` remembers those; each entry holds its edits, so
# the identity stays theirs) and the names as received; it holds the Connection values it was
# made with, and is used only while they are the same.
# (edits, (position, value) of each Connection field, the picker of the fields kept, the fields
# added and their lines, set_names, removed_names)
_Relay = tuple[tuple[PolicyEdit, ...], tuple[tuple[int, str], ...], Callable[[list[Header]], tuple[Header, ...]],
               tuple[Header, ...], bytes, tuple[str, ...], tuple[str, ...]]
_RELAYS: LruCache[_Relay] = LruCache(1024)
MAX_PLAN_HEADERS: Final = 48


# A head whose fields are remembered by its bytes (`proxy.upstream` hands out the same fields
# object for it each time) is relayed the same way each time: the whole outcome is remembered
# by that object's identity, the edits' and the request's own origin. Each entry holds the
# fields and the edits, so those identities stay theirs while it lives.
_RELAYED: LruCache[tuple[tuple[PolicyEdit, ...], tuple[Header, ...], list[Header], list[str], list[str], bytes]] = (
    LruCache(128))


def relayed_head(edits: tuple[PolicyEdit, ...], headers: list[Header], own_origin: str | None,
                 known: tuple[Header, ...] | None = None) -> tuple[EditResult, bytes]:
    """An upstream response's header fields as relayed to the client (`headers` not modified):
    without the hop-by-hop ones (`proxy.forwarding.relayed_positions`), edited by `apply_edits`;
    and those fields as header lines (`proxy.http1.field_lines`), for the head to send.
    `known`: the remembered fields object `headers` were copied from, if any
    (`UpstreamResponse.known_fields`)."""
    if known is None or len(own_origin or "") > MAX_KEY_CHARS:
        return _relayed_head(edits, headers, own_origin)
    key = (id(edits), id(known), own_origin)
    relayed = _RELAYED.get(key)
    if relayed is not None and relayed[0] is edits and relayed[1] is known:
        _, _, out, set_names, removed, lines = relayed
        return EditResult(list(out), list(set_names), list(removed)), lines
    result, lines = _relayed_head(edits, headers, own_origin)
    _RELAYED.put(key, (edits, known, list(result.headers), list(result.set_names), list(result.removed_names), lines))
    return result, lines


def _relayed_head(edits: tuple[PolicyEdit, ...], headers: list[Header], own_origin: str | None
                  ) -> tuple[EditResult, bytes]:
    names = tuple(map(_NAME, headers))
    key = (id(edits), names)
    relay = _RELAYS.get(key)
    if relay is not None and relay[0] is edits:
        _, connection, pick, added, added_lines, set_names, removed = relay
        for at, value in connection:
            if headers[at][1] != value:
                break
        else:
            kept = pick(headers)
            return EditResult([*kept, *added], list(set_names), list(removed)), field_lines(kept) + added_lines
    positions = relayed_positions(headers)
    result, keep = apply_edits_kept(edits, [headers[i] for i in positions], own_origin)
    connection = tuple((at, value) for at, (name, value) in enumerate(headers) if name.lower() == "connection")
    if (keep is not None and len(names) <= MAX_PLAN_HEADERS
            and sum(map(len, names)) + sum(len(value) for _, value in connection) <= MAX_KEY_CHARS):
        added = tuple(result.headers[len(keep):])
        _RELAYS.put(key, (edits, connection, _picker([positions[k] for k in keep]), added, field_lines(added),
                          tuple(result.set_names), tuple(result.removed_names)))
    return result, field_lines(result.headers)


_NAME = itemgetter(0)


def _picker(positions: list[int]) -> Callable[[list[Header]], tuple[Header, ...]]:
    """The fields at `positions` of a list, as a tuple, in one C call when there are several."""
    if len(positions) > 1:
        return itemgetter(*positions)
    return lambda headers: tuple([headers[at] for at in positions])
