"""The policy engine: what the proxy does with CORS, CORP, COOP, COEP and Reporting headers.

Pure functions over plain data, no I/O; the server, `coxp explain` and the logs share them.
The request path follows the Fetch standard's steps in order:

1. `request_info` collects the request's CORS-relevant headers once;
2. `decide` classifies it (off / not-cors / same-origin / preflight / actual) and, for a CORS
   request, runs the CORS check (Fetch §4.10 "CORS check"), then for a preflight the method
   and header checks (Fetch §4.9 "CORS-preflight fetch", steps 7.3-7.7) and the Private
   Network Access check; the result is a `Decision` holding data only: an optional
   `Answer` and one `PolicyEdit` per policy table;
3. `apply_edits` — the one place where headers change — applies the edits' modes
   (`set`/`default`/`remove`/`pass`) to a header list and merges `Vary`.

Everything that depends only on the configuration (header tuples, edits, Vary tokens) is
computed once per route by `compile_policies` when the config is loaded (`Route.compiled`), so a
request costs a few lookups and, for an allowed CORS request, one small tuple with the echoed
values.
"""
from __future__ import annotations

from typing import Final, NamedTuple

from proxy.cookies import cookie_rewrite
from proxy.memo import MAX_KEY_CHARS
from proxy.model import (
    CompiledCors,
    CompiledPolicies,
    CorsPolicy,
    Header,
    HeaderPolicy,
    Policies,
    PolicyEdit,
    Route,
    Upstream,
)
from proxy.origins import normalize_origin
from proxy.redirects import REWRITTEN_HEADERS, location_rewrite
from proxy.standards import OWS, SAFELISTED_METHODS, TOKEN_RE

__all__ = [
    "Decision",
    "EditResult",
    "PolicyEdit",
    "Answer",
    "RequestInfo",
    "apply_edits",
    "apply_edits_kept",
    "compile_policies",
    "decide",
    "preflight_header_names",
    "proxy_response_headers",
    "request_info",
    "routing_method",
]



# The headers CORS owns on an actual response (README, "Configuration walk-through", the
# modes), as an exact set plus a prefix.
CORS_OWNED: Final = frozenset({"access-control-expose-headers", "access-control-max-age"})
CORS_PREFIX: Final = "access-control-allow-"
# A preflight response edited in `set` mode carries exactly what a synthesized one would, so
# every upstream `Access-Control-*` goes (README, "`[routes.cors]`", `preflight = "upstream"`).
PREFLIGHT_PREFIX: Final = "access-control-"
_ACAO: Final = "access-control-allow-origin"
SET_COOKIE: Final = frozenset({"set-cookie"})

ACAO = "Access-Control-Allow-Origin"
ACAC = ("Access-Control-Allow-Credentials", "true")
ACAPN = ("Access-Control-Allow-Private-Network", "true")

# A response that depends on `Origin` says so, or a shared cache could serve one origin's
# answer (or a no-Origin answer without CORS headers) to another (Fetch §3.2.5 "CORS protocol
# and HTTP caches"). A preflight answer also depends on the method and headers requested.
VARY_ORIGIN: Final = ("Origin",)
VARY_PREFLIGHT: Final = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
VARY_PREFLIGHT_ANY_ORIGIN: Final = VARY_PREFLIGHT[1:]  # `*` answers the same to every origin

REASON_ORIGIN: Final = "origin-not-allowed"
REASON_METHOD: Final = "method-not-allowed"
REASON_HEADER: Final = "header-not-allowed"
REASON_PRIVATE_NETWORK: Final = "private-network-not-allowed"


# --------------------------------------------------------------------------------------------
# Data. Immutable named tuples: built on every request, and a tuple is built several times
# faster than a frozen dataclass.


class RequestInfo(NamedTuple):
    """The request's CORS-relevant facts, collected once by `request_info`."""

    method: str
    origin: str | None  # None: no Origin; several lines are joined with ", " (and malformed)
    origin_lines: int
    request_method: str | None  # the first Access-Control-Request-Method line
    request_method_lines: int
    request_headers: str | None  # every Access-Control-Request-Headers line, joined with ", "
    private_network: bool  # Access-Control-Request-Private-Network: true
    own_origin: str | None  # normalised scheme://host of the request itself
    credentials: bool  # a Cookie or Authorization header (Fetch: "credentials"), for the log

    @property
    def looks_like_preflight(self) -> bool:
        """Fetch §4.8 step 1: an OPTIONS with `Origin` and `Access-Control-Request-Method`."""
        return self.method == "OPTIONS" and self.origin is not None and self.request_method is not None


class Answer(NamedTuple):
    """A response coxp makes itself, without contacting the upstream. `body` is one line of text
    (a newline is appended when it is sent), empty for a bodiless answer such as the 204."""

    status: int
    body: str
    extra: tuple[Header, ...] = ()  # written after the policy headers (e.g. `Allow`)
    closes: bool = False  # the connection ends with this answer, whatever keep-alive says


class Decision(NamedTuple):
    """The outcome of `decide`, for the server, `explain` and the decision log."""

    route: str
    cors: str  # log value: not-cors | same-origin | allowed | denied | preflight-allowed | preflight-denied | off
    reason: str | None
    origin: str | None  # the request's Origin as received (for the log)
    answer: Answer | None  # set when the proxy answers without contacting the upstream
    edits: tuple[PolicyEdit, ...]


class EditResult(NamedTuple):
    headers: list[Header]
    set_names: list[str]  # lower-case; `vary` only when a token was merged
    removed_names: list[str]  # lower-case; a replaced header is in both lists


# --------------------------------------------------------------------------------------------
# Step 1: collect the request's facts


def request_info(method: str, headers: list[Header], scheme: str, host: str | None) -> RequestInfo:
    """Collect every value of the CORS request headers; `scheme` and `host` (the `Host`, or a
    trusted proxy's `X-Forwarded-Proto`/`-Host`) make the request's own origin."""
    origins: list[str] = []
    acrm: list[str] = []
    acrh: list[str] = []
    pna = False
    credentials = False
    for name, value in headers:
        if name[:1] not in ("o", "O", "a", "A", "c", "C"):  # cheap pre-filter: every name we read starts with o, a or c
            continue
        lower = name.lower()
        if lower == "cookie" or lower == "authorization":
            credentials = True
        elif lower == "origin":
            origins.append(value.strip(OWS))
        elif lower == "access-control-request-method":
            acrm.append(value.strip(OWS))
        elif lower == "access-control-request-headers":
            acrh.append(value.strip(OWS))
        elif lower == "access-control-request-private-network":
            pna = pna or value.strip(OWS).lower() == "true"
    own = None
    if origins and host:
        own = normalize_origin(f"{scheme.lower()}://{host}")
    return RequestInfo(
        method=method,
        origin=", ".join(origins) if origins else None,
        origin_lines=len(origins),
        request_method=acrm[0] if acrm else None,
        request_method_lines=len(acrm),
        # RFC 9110 §5.3: several field lines of a list-based field combine with commas.
        request_headers=", ".join(acrh) if acrh else None,
        private_network=pna,
        own_origin=own,
        credentials=credentials,
    )


def routing_method(info: RequestInfo) -> str:
    """The method a route's `methods` is matched against: for a preflight, the one requested."""
    if info.method == "OPTIONS" and info.origin is not None and info.request_method is not None:
        return info.request_method
    return info.method


# --------------------------------------------------------------------------------------------
# Precomputation (once per route, at load)


def _edit_for(policy: HeaderPolicy) -> PolicyEdit:
    # CORP/COOP/COEP/Reporting: `default` keeps the upstream's if it sent any of its headers.
    return PolicyEdit(policy.table, policy.mode, policy.owned, None, policy.owned, policy.headers)


def compile_policies(policies: Policies, redirects_from: Upstream | None = None) -> CompiledPolicies:
    """The fixed parts of the decisions on a route with `policies`; `proxy.config` calls it
    once per route when the config is loaded. `redirects_from`: the route's upstream when
    `rewrite_location` is on (URLs pointing at it are pointed at the request's own origin)."""
    header_edits = tuple(_edit_for(p) for p in policies.header_policies)
    if policies.cookies is not None:
        header_edits += (PolicyEdit("cookies", "set", SET_COOKIE, None, frozenset(),
                                    rewrite=cookie_rewrite(policies.cookies)),)
    if redirects_from is not None:
        header_edits += (PolicyEdit("redirects", "set", REWRITTEN_HEADERS, None, frozenset(),
                                    rewrite=location_rewrite(redirects_from)),)
    cors = policies.cors
    if cors is None or cors.mode in ("remove", "pass"):
        extra = () if cors is None else (
            PolicyEdit("cors", cors.mode, CORS_OWNED, CORS_PREFIX, frozenset({_ACAO})),
        )
        return CompiledPolicies(cors=None, header_edits=header_edits, off=extra + header_edits)
    star = cors.origins.allows_any
    tail: list[Header] = []
    if cors.allow_credentials:
        tail.append(ACAC)
    if cors.expose_headers_value:
        tail.append(("Access-Control-Expose-Headers", cors.expose_headers_value))
    actual_tail = tuple(tail)
    # "*" origins (credentials are then off): every response gets `*`, and varies not.
    actual_template = PolicyEdit("cors", cors.mode, CORS_OWNED, CORS_PREFIX, frozenset({_ACAO}),
                                 (), () if star else VARY_ORIGIN)
    preflight_template = PolicyEdit("cors", cors.mode, frozenset(), PREFLIGHT_PREFIX, frozenset({_ACAO}),
                                    (), VARY_PREFLIGHT_ANY_ORIGIN if star else VARY_PREFLIGHT)
    star_actual = _with_headers(actual_template, ((ACAO, "*"), *actual_tail), header_edits) if star else None
    compiled_cors = CompiledCors(
        policy=cors,
        plain=star_actual if star_actual is not None else _with_headers(actual_template, (), header_edits),
        star_actual=star_actual,
        actual_tail=actual_tail,
        actual_template=actual_template,
        preflight_template=preflight_template,
        preflight_denied=_with_headers(preflight_template, (), header_edits),
    )
    return CompiledPolicies(cors=compiled_cors, header_edits=header_edits, off=header_edits)


def _with_headers(template: PolicyEdit, headers: tuple[Header, ...],
                  rest: tuple[PolicyEdit, ...]) -> tuple[PolicyEdit, ...]:
    """The CORS edit `template` writing `headers`, followed by the header tables' edits."""
    t = template
    return (PolicyEdit(t.table, t.mode, t.owned, t.owned_prefix, t.trigger, headers, t.vary),) + rest


# --------------------------------------------------------------------------------------------
# Step 2: decide


def decide(route: Route, info: RequestInfo, websocket: bool = False) -> Decision:
    """Classify the request on `route` and decide every policy header of its response.

    `websocket=True`: CORS headers are not applied to the handshake's `101` (browsers do not
    use CORS for WebSockets), but the CORS check still runs for the log and for `enforce`.

    The result depends on nothing but the arguments, so it is remembered per route (a bounded
    LRU, see `proxy.memo`): a repeated preflight or page origin costs one dict lookup.
    """
    compiled = route.compiled
    key = (route.name, info, websocket)
    decision: Decision | None = compiled.decisions.get(key)
    if decision is None:
        decision = _decide(route, compiled, info, websocket)
        if _key_chars(info) <= MAX_KEY_CHARS:
            compiled.decisions.put(key, decision)
    return decision


def _key_chars(info: RequestInfo) -> int:
    """How much client-controlled text `info` holds."""
    return (len(info.origin or "") + len(info.own_origin or "") + len(info.request_method or "")
            + len(info.request_headers or ""))


def _decide(route: Route, compiled: CompiledPolicies, info: RequestInfo, websocket: bool) -> Decision:
    c = compiled.cors
    origin = info.origin
    if c is None:  # no CORS table, or remove/pass: the proxy does no CORS
        return Decision(route=route.name, cors="off", reason=None, origin=origin, answer=None, edits=compiled.off)
    if origin is None:
        return _plain(route, compiled, c, "not-cors", origin, websocket)
    if info.origin_lines == 1 and info.own_origin is not None and normalize_origin(origin) == info.own_origin:
        return _plain(route, compiled, c, "same-origin", origin, websocket)
    if info.request_method is not None and info.method == "OPTIONS":
        return _preflight(route, compiled, c, info, origin, info.request_method)
    return _actual(route, compiled, c, info, origin, websocket)


def _plain(route: Route, compiled: CompiledPolicies, c: CompiledCors, cors: str, origin: str | None,
           websocket: bool) -> Decision:
    """not-cors / same-origin: no ACAO unless the route's origins are `*` (README, "CORS")."""
    edits = compiled.header_edits if websocket else c.plain
    return Decision(route=route.name, cors=cors, reason=None, origin=origin, answer=None, edits=edits)


def _origin_allowed(cors: CorsPolicy, info: RequestInfo, origin: str) -> bool:
    """Fetch §4.10 CORS check, from the server's side: is this `Origin` one we allow?

    Several `Origin` lines are not one serialized origin: only `*` passes them.
    """
    matcher = cors.origins
    if matcher.allows_any:
        return True
    return info.origin_lines == 1 and matcher.matches(origin)


def _allow_origin(c: CompiledCors, origin: str) -> tuple[Header, ...]:
    """ACAO and its companions for an allowed origin; `*` when the origins are `*` and
    credentials off (Fetch §3.2.3: `*` never works with credentials), else the exact bytes
    the request sent, as the CORS check compares them byte for byte (Fetch §4.10 step 4)."""
    if c.star_actual is not None:
        return ((ACAO, "*"),) + c.actual_tail
    return ((ACAO, origin),) + c.actual_tail


def _actual(route: Route, compiled: CompiledPolicies, c: CompiledCors, info: RequestInfo, origin: str,
            websocket: bool) -> Decision:
    """An actual CORS request: allowed origins get ACAO (+ credentials, expose)."""
    cors = c.policy
    if _origin_allowed(cors, info, origin):
        if websocket:
            edits = compiled.header_edits
        elif c.star_actual is not None:
            edits = c.star_actual
        else:
            edits = _with_headers(c.actual_template, _allow_origin(c, origin), compiled.header_edits)
        return Decision(route=route.name, cors="allowed", reason=None, origin=origin, answer=None, edits=edits)
    # CORS does not stop a request, it hides the answer from the page: without `enforce` the
    # request is forwarded and its response simply carries no CORS headers.
    answer = Answer(403, f"{REASON_ORIGIN}: CORS request denied") if cors.enforce else None
    edits = c.plain if (answer is not None or not websocket) else compiled.header_edits
    return Decision(route=route.name, cors="denied", reason=REASON_ORIGIN, origin=origin, answer=answer, edits=edits)


def _method_allowed(cors: CorsPolicy, info: RequestInfo, method: str) -> bool:
    """Fetch §4.9 steps 7.3, 7.5: the requested method must be one token, safelisted or listed
    (case-sensitive). Two ACRM lines, or `GET, DELETE`, are not one method."""
    if info.request_method_lines != 1 or not TOKEN_RE.fullmatch(method):
        return False
    return method in SAFELISTED_METHODS or cors.any_method or method in cors.allow_methods


def preflight_header_names(info: RequestInfo) -> list[str] | None:
    """For the log: the header names a preflight asks for, lower-cased, in request order (`[]`
    without Access-Control-Request-Headers); None when the request is not a preflight."""
    if not info.looks_like_preflight:
        return None
    if not info.request_headers:
        return []
    return [e.lower() for e in (e.strip(OWS) for e in info.request_headers.split(",")) if e]


def _requested_headers(info: RequestInfo) -> list[str] | None:
    """The names in Access-Control-Request-Headers (whitespace around commas and empty
    elements ignored, RFC 9110 §5.6.1); None when one is not a token."""
    if not info.request_headers:
        return []
    names = []
    for element in info.request_headers.split(","):
        element = element.strip(OWS)
        if not element:
            continue
        if not TOKEN_RE.fullmatch(element):
            return None
        names.append(element)
    return names


def _headers_allowed(cors: CorsPolicy, names: list[str] | None) -> bool:
    """Fetch §4.9 step 7.7: every requested name listed (case-insensitively). With `*` every
    name passes: the requested list is echoed, so `Authorization` is named explicitly and the
    Fetch rule that a bare `*` never covers it (step 7.7.1) is satisfied."""
    if names is None:
        return False
    if cors.any_header:
        return True
    allowed = cors.allow_headers
    return all(name.lower() in allowed for name in names)


def _preflight(route: Route, compiled: CompiledPolicies, c: CompiledCors, info: RequestInfo, origin: str,
               method: str) -> Decision:
    """A preflight: CORS check, then method, then headers, then Private Network Access."""
    cors = c.policy
    reason = None
    names: list[str] | None = None
    if not _origin_allowed(cors, info, origin):
        reason = REASON_ORIGIN
    elif not _method_allowed(cors, info, method):
        reason = REASON_METHOD
    else:
        names = _requested_headers(info)
        if not _headers_allowed(cors, names):
            reason = REASON_HEADER
        elif info.private_network and not cors.allow_private_network:
            # Private Network Access §3.2: a public page reaching a private address must be
            # explicitly allowed by the target.
            reason = REASON_PRIVATE_NETWORK
    forwarded = cors.preflight == "upstream"
    if reason is not None:
        answer = None
        if not forwarded or (reason == REASON_ORIGIN and cors.enforce):
            answer = Answer(403, f"{reason}: CORS preflight denied")
        return Decision(route=route.name, cors="preflight-denied", reason=reason, origin=origin, answer=answer,
                        edits=c.preflight_denied)

    headers: list[Header] = [(ACAO, "*" if c.star_actual is not None else origin)]
    if cors.allow_credentials:
        headers.append(ACAC)
    if cors.any_method:
        headers.append(("Access-Control-Allow-Methods", method))
    elif cors.allow_methods_value:
        headers.append(("Access-Control-Allow-Methods", cors.allow_methods_value))
    if cors.any_header:
        if names:
            # Echo the list as sent (browsers send one clean line, "content-type,x-foo"); a
            # list with empty elements or several lines is echoed cleaned up.
            raw = info.request_headers
            echo = raw if raw == ",".join(names) and raw is not None else ", ".join(names)
            headers.append(("Access-Control-Allow-Headers", echo))
    elif cors.allow_headers_value:
        headers.append(("Access-Control-Allow-Headers", cors.allow_headers_value))
    if cors.max_age_value is not None:
        headers.append(("Access-Control-Max-Age", cors.max_age_value))
    if info.private_network:
        headers.append(ACAPN)
    answer = None if forwarded else Answer(204, "")
    edits = _with_headers(c.preflight_template, tuple(headers), compiled.header_edits)
    return Decision(route=route.name, cors="preflight-allowed", reason=None, origin=origin, answer=answer, edits=edits)


# --------------------------------------------------------------------------------------------
# Step 3: apply


def apply_edits(edits: tuple[PolicyEdit, ...], headers: list[Header], own_origin: str | None = None) -> EditResult:
    """Apply the edits to `headers` (not modified); the one place where headers change.

    Per edit, by mode: `pass` touches nothing; `remove` drops the table's headers; `set` drops
    them and writes the proxy's; `default` does nothing when a trigger header is present
    (CORS: `Access-Control-Allow-Origin`), else acts as `set`. A value edit (`rewrite`: cookies,
    redirects) keeps its headers and rewrites their values instead; `own_origin` is the
    request's own `scheme://host[:port]`, which redirects are pointed at (None: not rewritten).
    `Vary` is never replaced: the edits' tokens are merged into it case-insensitively without
    duplicates (RFC 9110 §12.5.5). Names in `set_names`/`removed_names` are lower-case; a
    replaced header is in both, a header whose value was rewritten only in `set_names`.
    """
    return apply_edits_kept(edits, headers, own_origin)[0]


def apply_edits_kept(edits: tuple[PolicyEdit, ...], headers: list[Header], own_origin: str | None
                     ) -> tuple[EditResult, list[int] | None]:
    """`apply_edits`, and the indices of the headers kept unchanged, in order, when nothing but
    the names decided the result (None when a value was read: a Vary merged into, a value
    edit's header); the headers the edits add then follow the kept ones."""
    present: set[str] | None = None
    active: list[PolicyEdit] = []
    for edit in edits:
        mode = edit.mode
        if mode == "pass":
            continue
        if mode == "default":
            if present is None:
                present = {name.lower() for name, _ in headers}
            if not present.isdisjoint(edit.trigger):
                continue
        active.append(edit)
    if not active:
        return EditResult(list(headers), [], []), list(range(len(headers)))

    value_edits = [edit for edit in active if edit.rewrite is not None]
    owned: frozenset[str] = frozenset().union(*[edit.owned for edit in active if edit.rewrite is None])
    rewritten: frozenset[str] = frozenset().union(*[edit.owned for edit in value_edits])
    prefixes = tuple(edit.owned_prefix for edit in active if edit.owned_prefix is not None)
    out: list[Header] = []
    removed: list[str] = []
    set_names: list[str] = []
    vary_at: list[int] = []
    keep: list[int] | None = []
    for i, header in enumerate(headers):
        lower = header[0].lower()
        if lower in owned or (prefixes and lower.startswith(prefixes)):
            if lower not in removed:
                removed.append(lower)
            continue
        if lower == "vary":
            vary_at.append(len(out))
            keep = None
        elif lower in rewritten:
            header = _rewritten(header, lower, value_edits, own_origin, set_names)
            keep = None
        elif keep is not None:
            keep.append(i)
        out.append(header)

    tokens: list[str] = []
    for edit in active:
        if edit.mode == "remove":
            continue
        for header in edit.headers:
            out.append(header)
            lower = header[0].lower()
            if lower not in set_names:
                set_names.append(lower)
        tokens.extend(edit.vary)
    if tokens and _merge_vary(out, vary_at, tokens):
        set_names.append("vary")
    return EditResult(out, set_names, removed), keep


def _rewritten(header: Header, lower: str, value_edits: list[PolicyEdit], own_origin: str | None,
               set_names: list[str]) -> Header:
    """`header` through the value edits that own it; its name goes into `set_names` when its
    value changed."""
    value = header[1]
    for edit in value_edits:
        if lower in edit.owned and edit.rewrite is not None:
            new = edit.rewrite(lower, value, own_origin)
            if new is not None:
                value = new
    if value == header[1]:
        return header
    if lower not in set_names:
        set_names.append(lower)
    return (header[0], value)


def _merge_vary(headers: list[Header], positions: list[int], tokens: list[str]) -> bool:
    """Merge `tokens` into the Vary lines at `positions` of `headers`, in place; True when one
    was added.

    Several Vary lines are combined into the first (RFC 9110 §5.3); the upstream's tokens are
    kept as written. `Vary: *` already varies on everything, so nothing is added to it.
    """
    existing: list[str] = []
    for i in positions:
        existing.extend(t for t in (e.strip(OWS) for e in headers[i][1].split(",")) if t)
    seen = {t.lower() for t in existing}
    if "*" in seen:
        return False
    missing: list[str] = []
    for token in tokens:
        lower = token.lower()
        if lower not in seen:
            seen.add(lower)
            missing.append(token)
    if not missing:
        return False
    value = ", ".join(existing + missing)
    if positions:
        headers[positions[0]] = (headers[positions[0]][0], value)
        for i in reversed(positions[1:]):
            del headers[i]
    else:
        headers.append(("Vary", value))
    return True


def proxy_response_headers(decision: Decision, content_type: str | None, body_length: int) -> EditResult:
    """The headers of a response the proxy makes itself (synthesized preflight, 403, 502, 504,
    404...): `Content-Type` and `Content-Length` when `content_type` is given (pass None for a
    bodiless 204: RFC 9110 §8.6 forbids Content-Length there), then the decision's edits —
    CORP/COOP/COEP/Reporting apply to these responses too, and the route's CORS headers when
    the origin is allowed, so page scripts can read a 502's status."""
    base: list[Header] = []
    if content_type is not None:
        base = [("Content-Type", content_type), ("Content-Length", str(body_length))]
    result = apply_edits(decision.edits, base)
    names = [n.lower() for n, _ in base]
    return EditResult(result.headers, names + result.set_names, result.removed_names)
