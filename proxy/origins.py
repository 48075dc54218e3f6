"""Origin patterns: parse and validate them at config load, match request `Origin` values fast.

An origin is the triple (scheme, host, port) serialized as `scheme://host[:port]` (HTML
standard, "ASCII serialization of an origin"); browsers send exactly that in `Origin`, with the
scheme and host lower-cased, IDNs in their ASCII (punycode) form and the port omitted when it is
the scheme's default. Opaque origins (sandboxed iframes, `data:` and `file:` documents,
cross-origin redirects) are sent as the literal `null`.

Pattern forms (README, "CORS: what happens to a request"):

- `"*"`                      every origin (sole entry, no regex);
- `scheme://host[:port]`     exact, compared case-insensitively, default port dropped;
- `scheme://*.domain[:port]` any subdomain at any depth, never `domain` itself;
- `scheme://host:*`          any port including none; combinable: `http://*.localhost:*`;
- `"null"`                   the opaque origin, only when listed literally.

Schemes. The allowed schemes are `http` and `https` — what web pages have — plus the
browser-extension schemes `chrome-extension`, `moz-extension` and `safari-web-extension`, whose
pages send `Origin: chrome-extension://<id>` when they fetch a host they have no permission
for; those are accepted in exact form only (no wildcard, no port: an extension id is not a
domain). Everything else is an error: `ws`/`wss` never appear in `Origin` (a WebSocket
handshake carries its page's http(s) origin), `file:` pages send `null`, and any other scheme
is almost certainly a typo. Regular expressions see any scheme the browser sends.

Matching is compiled to set lookups: the exact origins are one set of normalised strings;
subdomain wildcards are a set of domains per (scheme, port), looked up for each proper parent
domain of the request host; port wildcards are a set of (scheme, host). Only the regular
expressions (if any) are run one by one.

The strictness reference is jub0bs/cors (`internal/origins`): what it refuses but coxp
allows is accepted here with a warning (`null`, upper case, explicit default ports, insecure
origins with credentials — see `credential_warnings`).
"""
from __future__ import annotations

import functools
import ipaddress
import json
import re
from typing import TYPE_CHECKING, Final

from proxy.model import OriginMatcher
from proxy.standards import DEFAULT_PORTS, is_loopback_host

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

__all__ = [
    "ALLOWED_SCHEMES",
    "CompiledOrigins",
    "compile_origins",
    "credential_warnings",
    "normalize_origin",
]

Problem = tuple[str, str]  # (subkey, message), e.g. ("allow_origins[0]", "...")

EXTENSION_SCHEMES: Final = frozenset({"chrome-extension", "moz-extension", "safari-web-extension"})
ALLOWED_SCHEMES: Final = frozenset(DEFAULT_PORTS) | EXTENSION_SCHEMES

ANY_PORT: Final = -1  # sentinel port of `scheme://host:*`
_MAX_HOST_LEN = 253  # RFC 1035 §2.3.4 (textual form without the root dot)
_MAX_LABEL_LEN = 63

# A serialized origin, as a request sends it (the HTML standard's ASCII serialization):
# scheme "://" host [":" port]. The host is a DNS name / IPv4 address or a bracketed IPv6
# address; the checks this regex cannot express (empty labels, port range) follow it.
_REQUEST_ORIGIN = re.compile(
    r"([A-Za-z][A-Za-z0-9+.\-]*)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_\-.]+)(?::([0-9]{1,5}))?",
    re.ASCII,
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*", re.ASCII)
_LABEL = re.compile(r"[a-z0-9_\-]{1,63}", re.ASCII)  # "_" is common in internal names
_EXTENSION_ID = re.compile(r"[a-z0-9][a-z0-9\-]*", re.ASCII)
_PORT = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)


def _q(value: str) -> str:
    """Quote a value for a message the way TOML would write it."""
    return json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Request side


def _split_request_origin(value: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of a serialized origin, lower-cased, default port as None."""
    m = _REQUEST_ORIGIN.fullmatch(value)
    if m is None:
        return None
    scheme, host, port_text = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if host[0] == "[":
        try:
            addr = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        host = f"[{addr.compressed}]"
    elif host[0] == "." or ".." in host:  # empty label; a single trailing dot (FQDN) is kept
        return None
    port: int | None = None
    if port_text is not None:
        if port_text[0] == "0" or int(port_text) > 65535:  # browsers never send "0" or "080"
            return None
        port = int(port_text)
        if DEFAULT_PORTS.get(scheme) == port:
            port = None
    return scheme, host, port


def _serialize(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


@functools.lru_cache(maxsize=4096)  # a deployment sees few distinct origins; keep them hot
def normalize_origin(value: str) -> str | None:
    """The serialized origin `value` lower-cased (scheme, host), default port dropped.

    `None` when `value` is not a serialized origin (a path, a trailing slash, userinfo, spaces,
    several values, empty...). `"null"` is returned as `"null"`. Used both on the config's
    patterns (via `compile_origins`) and on request values, so both compare alike
    (README, "CORS: what happens to a request").
    """
    if value == "null":
        return "null"
    parts = _split_request_origin(value)
    return None if parts is None else _serialize(*parts)


class CompiledOrigins(OriginMatcher):
    """The compiled `allow_origins` + `allow_origin_regex` of one CORS table."""

    __slots__ = ("allows_any", "allows_null", "exact", "any_port", "subdomains", "regexes", "_seen")
    _SEEN_MAX = 4096  # bound on the memo of recent answers (attackers may send endless origins)

    def __init__(
        self,
        *,
        allows_any: bool = False,
        allows_null: bool = False,
        exact: frozenset[str] = frozenset(),
        any_port: frozenset[tuple[str, str]] = frozenset(),
        subdomains: dict[tuple[str, int | None], frozenset[str]] | None = None,
        regexes: tuple[re.Pattern[str], ...] = (),
    ) -> None:
        self.allows_any = allows_any
        self.allows_null = allows_null
        self.exact = exact
        self.any_port = any_port
        # (scheme, port or None for the default or ANY_PORT) -> domains whose subdomains match
        self.subdomains = subdomains or {}
        self.regexes = regexes
        self._seen: dict[str, bool] = {}

    @property
    def allows_nothing(self) -> bool:
        """True when no origin can ever match (the config layer reports that in set/default)."""
        return not (
            self.allows_any or self.allows_null or self.exact or self.any_port
            or self.subdomains or self.regexes
        )

    def matches(self, origin: str) -> bool:
        """Whether one request `Origin` value is allowed (the value exactly as received)."""
        if self.allows_any:
            return True
        # Browsers send the same few origins over and over: answer them from a bounded memo.
        seen = self._seen.get(origin)
        if seen is None:
            if len(self._seen) >= self._SEEN_MAX:
                self._seen.clear()
            seen = self._seen[origin] = self._match(origin)
        return seen

    def _match(self, origin: str) -> bool:
        if origin == "null":
            # The opaque origin: only the literal entry allows it, never a regex (README, the `"null"` pattern).
            return self.allows_null
        parts = _split_request_origin(origin)
        if parts is None:  # not a serialized origin: matches nothing
            return False
        scheme, host, port = parts
        normalized = _serialize(scheme, host, port)
        if normalized in self.exact or (scheme, host) in self.any_port:
            return True
        if self.subdomains and host[0] != "[":
            for key in ((scheme, port), (scheme, ANY_PORT)):
                domains = self.subdomains.get(key)
                if domains is not None and _has_parent_in(host, domains):
                    return True
        return any(rx.fullmatch(normalized) for rx in self.regexes)

    def __repr__(self) -> str:
        if self.allows_any:
            return "CompiledOrigins(*)"
        return (
            f"CompiledOrigins(null={self.allows_null}, exact={sorted(self.exact)}, "
            f"any_port={sorted(self.any_port)}, subdomains={self.subdomains}, "
            f"regexes={[r.pattern for r in self.regexes]})"
        )


def _has_parent_in(host: str, domains: frozenset[str]) -> bool:
    """Whether a proper parent domain of `host` is in `domains` (never `host` itself)."""
    i = host.find(".")
    while i != -1:
        if host[i + 1:] in domains:
            return True
        i = host.find(".", i + 1)
    return False


# --------------------------------------------------------------------------------------------
# Config side


class _PatternError(ValueError):
    pass


class _Pattern:
    """One parsed `allow_origins` entry (not "*" and not "null")."""

    __slots__ = ("scheme", "host", "port", "wildcard", "normalized", "notes")

    def __init__(self, scheme: str, host: str, port: int | None, wildcard: bool, notes: list[str]):
        self.scheme = scheme
        self.host = host  # without the "*." of a wildcard
        self.port = port  # None: default/none; ANY_PORT: "*"
        self.wildcard = wildcard
        port_text = "" if port is None else (":*" if port == ANY_PORT else f":{port}")
        self.normalized = f"{scheme}://{'*.' if wildcard else ''}{host}{port_text}"
        self.notes = notes  # reasons the pattern was rewritten while normalising

    @property
    def is_loopback(self) -> bool:
        """localhost, *.localhost, 127.0.0.0/8 and [::1]: trustworthy even over http
        (Secure Contexts §3.2, "potentially trustworthy origin")."""
        return is_loopback_host(self.host)


def _parse_pattern(raw: str) -> _Pattern:
    """Parse and validate one origin pattern; raise `_PatternError` with the user's fix."""
    q = _q(raw)
    shape = "an origin is scheme://host[:port]"
    if raw == "":
        raise _PatternError(f'"" is not an origin; {shape}')
    if any(c.isspace() for c in raw):
        raise _PatternError(f"{q} contains whitespace; {shape}")
    scheme_end = raw.find("://")
    if scheme_end == -1:
        hint = f' (e.g. "https://{raw}")' if "/" not in raw and ":" not in raw else ""
        raise _PatternError(f"{q} has no scheme; {shape}{hint}")
    scheme_raw = raw[:scheme_end]
    if not _SCHEME.fullmatch(scheme_raw):
        raise _PatternError(f"{q} has an invalid scheme {_q(scheme_raw)}; {shape}")
    scheme = scheme_raw.lower()
    if scheme not in ALLOWED_SCHEMES:
        why = {
            "ws": "a WebSocket handshake carries its page's origin: write http://",
            "wss": "a WebSocket handshake carries its page's origin: write https://",
            "file": 'file: pages send the opaque origin: write "null"',
        }.get(scheme, "web pages send http or https origins")
        raise _PatternError(f"{q} has the unknown scheme {_q(scheme)}; {why}")

    rest = raw[scheme_end + 3:]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i != -1), default=-1)
    authority, tail = (rest, "") if cut == -1 else (rest[:cut], rest[cut:])
    if tail:
        if tail[0] == "/":
            fix = f" (write {_q(raw[: len(raw) - len(tail)])})" if tail == "/" else ""
            raise _PatternError(f"{q} has a path; {shape}{fix}")
        what = "a query" if tail[0] == "?" else "a fragment"
        raise _PatternError(f"{q} has {what}; {shape}")
    if "@" in authority:
        raise _PatternError(f"{q} has userinfo (user@); {shape}")

    # Split host and port; an IPv6 host is bracketed (RFC 3986 §3.2.2).
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise _PatternError(f"{q} has an unclosed IPv6 bracket")
        host_raw, after = authority[: close + 1], authority[close + 1:]
        if after and not after.startswith(":"):
            raise _PatternError(f"{q} has an invalid host {_q(authority)}; {shape}")
        port_raw = after[1:] if after else None
    else:
        if authority.count(":") > 1:
            raise _PatternError(f"{q} has an invalid host; write an IPv6 address in brackets")
        host_raw, colon, port_text = authority.partition(":")
        port_raw = port_text if colon else None
    if host_raw == "":
        raise _PatternError(f"{q} has an empty host; {shape}")

    notes: list[str] = []
    port: int | None = None
    if port_raw is not None:
        if port_raw == "*":
            port = ANY_PORT
        elif _PORT.fullmatch(port_raw) and int(port_raw) <= 65535:
            port = int(port_raw)
            if DEFAULT_PORTS.get(scheme) == port:
                # Browsers omit the default port (URL standard: a default port serializes as
                # null), so "https://a.test:443" can only ever mean "https://a.test".
                notes.append(f"port {port} is the default for {scheme} and browsers never send it")
                port = None
        else:
            raise _PatternError(f'{q} has an invalid port {_q(port_raw)}; a port is 1..65535 or "*"')

    wildcard = False
    host = host_raw
    if host.startswith("*."):
        wildcard, host = True, host[2:]
    if "*" in host:
        if host_raw == "*":
            raise _PatternError(
                f'{q}: a wildcard needs a domain (e.g. "{scheme}://*.example.test"); '
                'to allow every origin write "*" alone'
            )
        raise _PatternError(
            f'{q}: "*" may only stand for the leftmost labels ("https://*.example.test") '
            'or the port ("http://localhost:*")'
        )
    if scheme in EXTENSION_SCHEMES and (wildcard or port is not None):
        raise _PatternError(f"{q}: an extension origin is {scheme}://<id>, with no wildcard or port")

    if scheme_raw != scheme or host_raw != host_raw.lower():
        # jub0bs/cors refuses upper case; coxp compares case-insensitively instead (README).
        notes.append("origins are compared case-insensitively and browsers send lower case")
    if scheme in EXTENSION_SCHEMES:
        # An extension id (Chrome: 32 letters a-p; Firefox, Safari: a UUID) is no DNS name.
        host = host.lower()
        if not _EXTENSION_ID.fullmatch(host):
            raise _PatternError(f"{q}: an extension origin is {scheme}://<id>")
    else:
        host = _normalize_host(q, host, wildcard, notes)
    return _Pattern(scheme, host, port, wildcard, notes)


def _normalize_host(q: str, host: str, wildcard: bool, notes: list[str]) -> str:
    """Validate a host (without a wildcard's "*.") and return its lower-case ASCII form."""
    if host.startswith("["):
        inner = host[1:-1]
        try:
            addr = ipaddress.IPv6Address(inner)
        except ValueError:
            raise _PatternError(f"{q} has an invalid IPv6 address {_q(inner)}") from None
        if wildcard:
            raise _PatternError(f"{q}: a subdomain wildcard needs a domain, not an IP address")
        canonical = f"[{addr.compressed}]"
        if canonical != host.lower() and "%" not in inner:
            notes.append(f"browsers write this address as {canonical}")
        return canonical
    if not host.isascii():
        # Browsers send IDNs in their ASCII form (URL standard: domain to ASCII).
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise _PatternError(f"{q} has an invalid host {_q(host)}") from None
        notes.append(f"browsers send the host in its ASCII form {ascii_host}")
        host = ascii_host
    host = host.lower()
    name = host[:-1] if host.endswith(".") else host  # a single trailing dot: an absolute name
    labels = name.split(".")
    if len(name) > _MAX_HOST_LEN or not all(_LABEL.fullmatch(label) for label in labels):
        raise _PatternError(f"{q} has an invalid host {_q(host)}")
    # No top-level domain starts with a digit, so such a host must be an IPv4 address
    # (the URL standard's "ends in a number" rule) in its canonical dotted-decimal form.
    if labels[-1][0].isdigit():
        if wildcard:
            raise _PatternError(f"{q}: a subdomain wildcard needs a domain, not an IP address")
        try:
            addr4 = ipaddress.IPv4Address(name)
        except ValueError:
            raise _PatternError(f"{q} has an invalid IPv4 address {_q(host)}") from None
        if str(addr4) != host:
            raise _PatternError(f"{q}: write the address as {addr4}")
    return host


@functools.cache
def _suffix_lists() -> tuple[PublicSuffixList, PublicSuffixList]:
    """The bundled Public Suffix List (no network), loaded on first use: ICANN only, and all."""
    from publicsuffixlist import PublicSuffixList

    # accept_unknown=False: names the list does not contain (localhost, test, internal) are not
    # suffixes; with the default they would be, through the implicit "*" rule.
    return (
        PublicSuffixList(only_icann=True, accept_unknown=False),
        PublicSuffixList(accept_unknown=False),
    )


def site_of(host: str) -> str:
    """The site of a host name (HTML standard, "obtain a site", without the scheme): its
    registrable domain by the Public Suffix List, or the host itself for an IP address and for
    names the list does not know (`localhost`: so localhost and 127.0.0.1 are two sites)."""
    host = host.lower().rstrip(".")
    if host.startswith("[") or host.replace(".", "").isdigit():
        return host
    return _site_list().privatesuffix(host) or host


@functools.cache
def _site_list() -> PublicSuffixList:
    """The Public Suffix List as browsers apply it: an unknown TLD is a suffix (the implicit `*`
    rule), so `a.example.test` and `b.example.test` are one site."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def _suffix_problem(q: str, domain: str) -> tuple[bool, str] | None:
    """(is_error, message) when `*.domain` spans a public suffix (README, "What coxp refuses, and why")."""
    name = domain.rstrip(".")
    icann, every = _suffix_lists()
    if icann.is_public(name):
        return True, (
            f"{q} allows every site under the public suffix {_q(name)}, which anyone can "
            f'register under; name your own domain (e.g. "*.example.{name}")'
        )
    if every.is_public(name):
        return False, (
            f"{q}: {_q(name)} is a shared-hosting suffix (Public Suffix List, private section): "
            "every subdomain belongs to a different owner, and any of them would be allowed"
        )
    return None


def compile_origins(
    patterns: list[str], regexes: list[str]
) -> tuple[CompiledOrigins, list[Problem], list[Problem]]:
    """Validate and compile `allow_origins` and `allow_origin_regex`.

    Returns the matcher, the errors and the warnings, each a `(subkey, message)` pair such as
    `("allow_origins[0]", ...)` for `proxy.config` to prefix with the table's key path. All
    problems are reported, not just the first. An empty result (nothing allowed) is not an
    error here: only `set`/`default` tables need origins, and the config layer knows the mode
    (see `CompiledOrigins.allows_nothing`).
    """
    errors: list[Problem] = []
    warnings: list[Problem] = []
    exact: set[str] = set()
    any_port: set[tuple[str, str]] = set()
    subdomains: dict[tuple[str, int | None], set[str]] = {}
    allows_any = allows_null = False
    seen: dict[str, int] = {}

    for i, raw in enumerate(patterns):
        key = f"allow_origins[{i}]"
        if not isinstance(raw, str):
            errors.append((key, "must be a string"))
            continue
        if raw == "*":
            allows_any = True
            if len(patterns) > 1 or regexes:
                errors.append((key, '"*" must be the only entry of allow_origins, with no '
                                    "allow_origin_regex (it already allows every origin)"))
            continue
        if raw == "null":
            allows_null = True
            # jub0bs/cors refuses it: the opaque origin is shared by every sandboxed iframe
            # and data:/file: document, so anyone can send it.
            warnings.append((key, '"null" is the opaque origin that any sandboxed iframe, data: '
                                  "or file: document sends: allowing it allows anyone who can "
                                  "get such a document in front of a user"))
            continue
        if raw.lower() == "null":
            errors.append((key, f'{_q(raw)}: the opaque origin is written "null" (lower case)'))
            continue
        try:
            pat = _parse_pattern(raw)
        except _PatternError as exc:
            errors.append((key, str(exc)))
            continue
        if pat.notes:
            warnings.append((key, f"{_q(raw)} is read as {_q(pat.normalized)}: " + "; ".join(pat.notes)))
        if pat.normalized in seen:
            warnings.append((key, f"{_q(raw)} repeats allow_origins[{seen[pat.normalized]}]"))
            continue
        seen[pat.normalized] = i
        if pat.wildcard:
            problem = _suffix_problem(_q(raw), pat.host)
            if problem is not None:
                (errors if problem[0] else warnings).append((key, problem[1]))
                if problem[0]:
                    continue
            subdomains.setdefault((pat.scheme, pat.port), set()).add(pat.host)
        elif pat.port == ANY_PORT:
            any_port.add((pat.scheme, pat.host))
        else:
            exact.add(pat.normalized)

    compiled_rx: list[re.Pattern[str]] = []
    for i, rx in enumerate(regexes):
        key = f"allow_origin_regex[{i}]"
        if not isinstance(rx, str):
            errors.append((key, "must be a string"))
            continue
        try:
            compiled_rx.append(re.compile(rx))
        except re.error as exc:
            errors.append((key, f"invalid regular expression {_q(rx)}: {exc}"))
            continue
        # The regex sees the normalised (lower-case) origin, so an upper-case literal never matches.
        if re.search(r"[A-Z]", re.sub(r"\\.", "", rx)) and "(?i" not in rx:
            warnings.append((key, f"{_q(rx)} contains upper-case letters but sees the origin "
                                  "lower-cased (scheme and host); it may never match"))

    matcher = CompiledOrigins(
        allows_any=allows_any,
        allows_null=allows_null,
        exact=frozenset(exact),
        any_port=frozenset(any_port),
        subdomains={k: frozenset(v) for k, v in subdomains.items()},
        regexes=tuple(compiled_rx),
    )
    return matcher, errors, warnings


def credential_warnings(patterns: list[str]) -> list[Problem]:
    """Warnings for `allow_origins` entries that are risky when `allow_credentials = true`.

    For `proxy.config` to call on tables with credentials on (it alone knows that). jub0bs/cors
    refuses these outright: an `http://` origin (other than loopback, which Secure Contexts
    deems trustworthy) can be impersonated by anyone on the network path, who then makes
    credentialed requests with the user's cookies and reads the answers; `null` can be sent
    by any sandboxed document. Invalid entries are skipped (`compile_origins` reports them).
    """
    out: list[Problem] = []
    for i, raw in enumerate(patterns):
        if not isinstance(raw, str) or raw == "*":
            continue
        key = f"allow_origins[{i}]"
        if raw == "null":
            out.append((key, '"null" with allow_credentials = true lets any sandboxed iframe or '
                             "data: document read responses sent with the user's cookies"))
            continue
        try:
            pat = _parse_pattern(raw)
        except _PatternError:
            continue
        if pat.scheme == "http" and not pat.is_loopback:
            what = "insecure origins" if pat.wildcard or pat.port == ANY_PORT else "an insecure origin"
            out.append((key, f"{_q(raw)} is {what} (http) with allow_credentials = true: anyone on "
                             "the network path can inject script into it and read responses sent "
                             "with the user's cookies; use https"))
    return out
