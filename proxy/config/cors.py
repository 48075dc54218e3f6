"""The `cors` table (Fetch standard, "CORS protocol"), with jub0bs/cors's strictness: names
normalised, contradictions refused, the response header values joined once."""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeGuard

from proxy.config.reading import Table, quoted
from proxy.config.values import parse_method
from proxy.model import CorsPolicy, Mode, OriginMatcher
from proxy.origins import compile_origins, credential_warnings
from proxy.standards import (
    FORBIDDEN_METHODS,
    FORBIDDEN_RESPONSE_HEADERS,
    TOKEN_RE,
    is_forbidden_request_header,
)

MODES = ("set", "default", "remove", "pass")
PREFLIGHTS = ("proxy", "upstream")
SETTING_MODES = ("set", "default")  # the modes in which a table's own headers are written
CORS_KEYS = (
    "mode", "allow_origins", "allow_origin_regex", "allow_methods", "allow_headers",
    "expose_headers", "allow_credentials", "max_age", "allow_private_network", "preflight", "enforce",
    "shadow",
)
# `[cors.shadow]`, a candidate CORS table: the keys of a CORS table (it has no candidate itself).
SHADOW_KEYS = tuple(key for key in CORS_KEYS if key != "shadow")
MAX_AGE_LIMIT = 86400  # a day; Firefox's cap, the highest of the browsers' caps

# Response-only CORS headers: listing them as request headers is a misunderstanding of CORS
# (jub0bs/cors refuses them).
RESPONSE_ONLY_CORS_HEADERS = frozenset({
    "access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-methods",
    "access-control-allow-headers", "access-control-allow-private-network", "access-control-max-age",
    "access-control-expose-headers",
})
# Request-side and preflight-only names: exposing them on a response is meaningless (jub0bs/cors).
UNEXPOSABLE_HEADERS = frozenset({
    "origin", "access-control-request-method", "access-control-request-headers",
    "access-control-request-private-network", "access-control-allow-methods",
    "access-control-allow-headers", "access-control-max-age", "access-control-allow-private-network",
})


def table_mode(table: Table) -> Mode | None:
    """`mode`, shared by every policy table; None when it has a problem (reported)."""
    errors_before = len(table.report.errors)
    mode = table.choice("mode", MODES, "set")
    return mode if _is_mode(mode) and len(table.report.errors) == errors_before else None


def _is_mode(value: str) -> TypeGuard[Mode]:
    return value in MODES


def _is_preflight(value: str) -> TypeGuard[Literal["proxy", "upstream"]]:
    return value in PREFLIGHTS



def cors_policy(table: Table) -> CorsPolicy | None:
    errors_before = len(table.report.errors)
    # A candidate is a complete table of its own: nothing is inherited from the live one.
    shadow_table = table.subtable("shadow", SHADOW_KEYS)
    shadow = cors_policy(shadow_table) if shadow_table is not None else None
    mode = table_mode(table)
    credentials = table.boolean("allow_credentials", False)
    origins = _cors_origins(table, mode, credentials)
    methods = _cors_methods(table)
    allow_headers = _header_names(table, "allow_headers", _check_request_header)
    expose_headers = _cors_expose_headers(table, credentials)
    max_age = table.integer("max_age", None, minimum=0, maximum=MAX_AGE_LIMIT)
    private_network = table.boolean("allow_private_network", False)
    preflight = table.choice("preflight", PREFLIGHTS, "proxy")
    enforce = table.boolean("enforce", False)
    if len(table.report.errors) > errors_before or mode is None or origins is None or not _is_preflight(preflight):
        return None
    method_names, any_method = methods
    header_names, any_header = allow_headers
    return CorsPolicy(
        mode=mode,
        origins=origins,
        allow_methods=frozenset(method_names),
        any_method=any_method,
        # With "*" the requested method / header list is echoed instead (README, "`[routes.cors]`").
        allow_methods_value=", ".join(method_names) or None,
        allow_headers=frozenset(header_names),
        any_header=any_header,
        allow_headers_value=", ".join(header_names) or None,
        expose_headers_value=_expose_value(expose_headers),
        allow_credentials=credentials,
        max_age_value=None if max_age is None else str(max_age),
        allow_private_network=private_network,
        preflight=preflight,
        enforce=enforce,
        shadow=shadow,
    )


def _cors_origins(table: Table, mode: str | None, credentials: bool) -> OriginMatcher | None:
    patterns = table.strings("allow_origins")
    regexes = table.strings("allow_origin_regex")
    if patterns is None or regexes is None:
        return None
    matcher, errors, warnings = compile_origins(patterns, regexes)
    for subkey, message in errors:
        table.error(subkey, message)
    for subkey, message in warnings:
        table.warn(subkey, message)
    if mode in SETTING_MODES and matcher.allows_nothing and not errors:
        table.error("allow_origins", 'allows no origin; list them, e.g. allow_origins = ["https://app.example.test"], '
                    'or set mode = "remove" or "pass"')
    if credentials:
        _check_credentialed_origins(table, patterns)
    return matcher


def _check_credentialed_origins(table: Table, patterns: list[str]) -> None:
    if "*" in patterns:
        # Fetch standard, CORS check: `*` is never accepted on a request with credentials.
        table.error(f"allow_origins[{patterns.index('*')}]", '"*" cannot be used with allow_credentials = true '
                    "(browsers refuse it); list the trusted origins instead")
    for subkey, message in credential_warnings(patterns):
        table.warn(subkey, message)


def _cors_methods(table: Table) -> tuple[list[str], bool]:
    """`allow_methods`: (normalised names in written order without duplicates, any_method)."""
    entries = table.strings("allow_methods") or []
    if "*" in entries:
        _reject_mixed_wildcard(table, "allow_methods", entries, "method")
        return [], True
    methods: list[str] = []
    for i, text in enumerate(entries):
        method = table.parse_at(f"allow_methods[{i}]", parse_method, text)
        if method is None:
            continue
        if method.upper() in FORBIDDEN_METHODS:
            table.error(f"allow_methods[{i}]", f"{quoted(text)} is a forbidden method (Fetch standard): "
                        "browsers never send it; remove it")
        elif method not in methods:
            methods.append(method)
    return methods, False


def _reject_mixed_wildcard(table: Table, name: str, entries: list[str], what: str) -> None:
    if len(entries) > 1:
        table.error(f"{name}[{entries.index('*')}]", f'"*" already allows every {what}; write {name} = ["*"] alone')


def _header_names(table: Table, name: str, check: Callable[[Table, str, str], None]) -> tuple[list[str], bool]:
    """A list of header names (RFC 9110 §5.1 tokens): lower-cased, duplicates collapsed, or ["*"]."""
    entries = table.strings(name) or []
    if "*" in entries:
        _reject_mixed_wildcard(table, name, entries, "header")
        return [], True
    names: list[str] = []
    for i, text in enumerate(entries):
        key = f"{name}[{i}]"
        if not TOKEN_RE.fullmatch(text):
            table.error(key, f'{quoted(text)} is not a header name (an HTTP token, RFC 9110 §5.1); write e.g. "X-Request-Id"')
            continue
        lowered = text.lower()
        check(table, key, lowered)
        if lowered not in names:
            names.append(lowered)
    return names, False


def _check_request_header(table: Table, key: str, name: str) -> None:
    if is_forbidden_request_header(name):
        table.warn(key, f'"{name}" is a forbidden request-header name (Fetch '
                        'standard): scripts cannot set it, so allowing it has no effect')
    elif name in RESPONSE_ONLY_CORS_HEADERS:
        table.warn(key, f'"{name}" is a response header; a request never carries it, remove it')


def _check_response_header(table: Table, key: str, name: str) -> None:
    if name in FORBIDDEN_RESPONSE_HEADERS:
        table.error(key, f'"{name}" can never be exposed: browsers hide it from scripts whatever the server '
                         'says (Fetch standard, forbidden response-header name); remove it')
    elif name in UNEXPOSABLE_HEADERS:
        table.warn(key, f'"{name}" is not a header of an actual response; exposing it has no effect, remove it')


def _cors_expose_headers(table: Table, credentials: bool) -> tuple[list[str], bool]:
    names, any_header = _header_names(table, "expose_headers", _check_response_header)
    if any_header and credentials:
        # Fetch standard: in Access-Control-Expose-Headers, `*` is a wildcard only for requests
        # without credentials; with credentials it would name a header called "*".
        table.error("expose_headers", '"*" exposes nothing with allow_credentials = true '
                                      '(browsers read it as a header named "*"); list the header names')
    return names, any_header


def _expose_value(expose: tuple[list[str], bool]) -> str | None:
    names, any_header = expose
    return "*" if any_header else (", ".join(names) or None)
