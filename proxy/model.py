"""The compiled configuration: frozen, validated once at load, read on every request.

Everything the request path needs is precomputed here (header values joined, matchers
compiled), so serving a request is lookups only. `proxy.config` builds these objects.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from proxy.memo import LruCache

Mode = Literal["set", "default", "remove", "pass"]
Header = tuple[str, str]  # (name, value) as sent
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A listen address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    """An origin server, `scheme://host[:port]` with no path."""

    url: str  # normalised: lower-case scheme and host, default port dropped
    scheme: str  # "http" | "https"
    host: str  # without brackets for IPv6
    port: int
    host_header: str  # the Host value that names it: host, plus ":port" when not the default

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def key(self) -> tuple[str, str, int]:
        """What pooled connections are shared by."""
        return (self.scheme, self.host, self.port)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: Endpoint
    upstream: Upstream | None
    workers: int
    preserve_host: bool
    forwarded_headers: bool
    trusted_proxies: tuple[IPNetwork, ...]
    connect_timeout: float
    read_timeout: float
    tls_cert: str | None
    tls_key: str | None
    upstream_ca: str | None
    upstream_verify: bool
    allow_underscores_in_headers: bool  # True: request headers with "_" in the name are forwarded
    rewrite_location: bool = True  # Location/Content-Location/Refresh at the upstream -> own origin


@dataclass(frozen=True, slots=True)
class AdminSettings:
    listen: Endpoint


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str  # "debug" | "info" | "warning" | "error" | "critical"
    format: str  # "json" | "console"


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_request_line: int = 8190
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_in_flight: int = 1024
    max_body_bytes: int = 0  # 0 = unlimited
    request_buffer: int = 65536  # body bytes read before the upstream is contacted; 0 = stream at once
    body_timeout: float = 60.0  # seconds a client may pause between body reads
    tunnel_idle_timeout: float = 300.0  # seconds without a byte either way before a WebSocket tunnel closes
    max_connections: int = 10000  # open client connections per worker; beyond, new ones are closed at once


class OriginMatcher:
    """Decides whether a request's `Origin` value is allowed; built by `proxy.origins`."""

    allows_any: bool  # the route's origins are "*": every value passes, `*` is sent, no Vary: Origin

    def matches(self, origin: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    mode: Mode
    origins: OriginMatcher
    allow_methods: frozenset[str]  # as configured (the six browser-normalised methods upper-cased)
    any_method: bool  # allow_methods = ["*"]: echo the requested method
    allow_methods_value: str | None  # pre-joined header value; None = send no header
    allow_headers: frozenset[str]  # lower-cased
    any_header: bool  # allow_headers = ["*"]: echo the requested list
    allow_headers_value: str | None
    expose_headers_value: str | None
    allow_credentials: bool
    max_age_value: str | None  # None = no Access-Control-Max-Age
    allow_private_network: bool
    preflight: Literal["proxy", "upstream"]
    enforce: bool
    shadow: CorsPolicy | None = None  # `[cors.shadow]`: a candidate table, decided but never applied


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """A header table (CORP, COOP, COEP, Reporting...): a fixed set of headers the route owns."""

    table: str  # the TOML table's name: "corp", "coop", "coep", "reporting"...
    mode: Mode
    owned: frozenset[str]  # lower-case header names of the policy (removed in set/remove)
    headers: tuple[Header, ...]  # (Name, value) written in set/default mode


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """`[cookies]`: the edits made to every `Set-Cookie` of the route's responses (mode `set`;
    a `pass` table compiles to None). None / False / `domain_strip=False` change nothing."""

    samesite: str | None  # "None" | "Lax" | "Strict": replaces the cookie's SameSite
    secure: bool  # adds Secure
    domain_strip: bool  # removes Domain
    partitioned: bool  # adds Partitioned


@dataclass(frozen=True, slots=True)
class Policies:
    cors: CorsPolicy | None = None
    header_policies: tuple[HeaderPolicy, ...] = ()  # in the order their headers are written
    cookies: CookiePolicy | None = None

    def header_policy(self, table: str) -> HeaderPolicy | None:
        """The policy of the header table `table` ("coop"...), None when the route has none."""
        for policy in self.header_policies:
            if policy.table == table:
                return policy
        return None


# Rewrites one header value: (lower-case name, value, the request's own origin) -> the new
# value, or None to keep it. Pure; `proxy.cookies` and `proxy.redirects` make them.
ValueRewrite = Callable[[str, str, str | None], str | None]


class PolicyEdit(NamedTuple):
    """What one policy table does to a response: data, applied only by `proxy.policy.apply_edits`.

    A named tuple: built on every allowed CORS request, and a tuple is built several times faster
    than a frozen dataclass."""

    table: str  # "cors" or a header table's name
    mode: Mode
    owned: frozenset[str]  # lower-case names the table owns (removed in set/remove)
    owned_prefix: str | None  # and every name starting with this (CORS)
    trigger: frozenset[str]  # `default` mode keeps the upstream's when any of these is present
    headers: tuple[Header, ...] = ()  # written in set/default mode
    vary: tuple[str, ...] = ()  # tokens merged into Vary in set/default mode
    # A value edit instead: each `owned` header is kept, its value passed through `rewrite`.
    rewrite: ValueRewrite | None = None


DECISION_CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class CompiledCors:
    """The fixed parts of a CORS table's decisions (mode `set` or `default`)."""

    policy: CorsPolicy
    plain: tuple[PolicyEdit, ...]  # a response without an allowed Origin
    star_actual: tuple[PolicyEdit, ...] | None  # origins "*": every actual response's edits
    actual_tail: tuple[Header, ...]  # after ACAO on an allowed actual response
    actual_template: PolicyEdit  # the CORS edit of an allowed actual response, headers to fill in
    preflight_template: PolicyEdit  # the CORS edit of an allowed preflight
    preflight_denied: tuple[PolicyEdit, ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicies:
    """The parts of a route's policy decisions that depend on the configuration only, built once
    by `proxy.policy.compile_policies` when the config is loaded."""

    cors: CompiledCors | None  # None: no CORS table, or mode remove/pass (the proxy does no CORS)
    header_edits: tuple[PolicyEdit, ...]  # the header tables' edits
    off: tuple[PolicyEdit, ...]  # every edit when `cors` is None
    # Not configuration: `proxy.policy.decide` remembers up to DECISION_CACHE_SIZE decisions
    # here. Built with the config, so a reload starts with an empty cache.
    decisions: LruCache[Any] = field(default_factory=lambda: LruCache(DECISION_CACHE_SIZE), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    policies: Policies
    compiled: CompiledPolicies = field(compare=False, repr=False)
    hosts: tuple[str, ...] | None = None  # as written, for summaries
    paths: tuple[str, ...] | None = None
    methods: frozenset[str] | None = None
    upstream: Upstream | None = None
    # `[routes.cors.shadow]`: the route as its candidate CORS table alone would decide it (same
    # name, no other policy); decided on every request for the log, never applied.
    shadow: Route | None = field(default=None, compare=False, repr=False)
    # Compiled matchers; None matches everything.
    host_matches: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    path_matches: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ReportsSettings:
    """`[reports]`: the built-in collector of browsers' violation reports."""

    path: str = "/.coxp/reports"
    max_body_bytes: int = 65536


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file name as given on the command line
    proxy: ProxySettings
    admin: AdminSettings | None
    log: LogSettings
    limits: Limits
    routes: tuple[Route, ...]
    default_route: Route
    warnings: tuple[str, ...] = ()  # "FILE: key.path: warning: message", printed by `check`
    reports: ReportsSettings | None = None  # None: no collector
    sha256: str = ""  # hex SHA-256 of the file's bytes: which config is serving (/reload, coxp_config_info)
    effective: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


# The settings a reload cannot apply: the listeners are bound and the workers forked at start.
START_ONLY_PROXY_SETTINGS = ("listen", "workers", "tls_cert", "tls_key")


def restart_needed(started: Config, reloaded: Config) -> list[str]:
    """The start-only settings (`START_ONLY_PROXY_SETTINGS` and `[admin]`) whose value in
    `reloaded` differs from the one serving since the start: they wait for a restart."""
    changed = [f"proxy.{name}" for name in START_ONLY_PROXY_SETTINGS
               if getattr(started.proxy, name) != getattr(reloaded.proxy, name)]
    if started.admin != reloaded.admin:
        changed.append("admin")
    return changed


def start_only_kept(reloaded: Config, started: Config) -> Config:
    """`reloaded` with the start-only settings coxp `started` with: a worker restarted after a
    reload serves the new routes on the listeners the other workers have."""
    kept = {name: getattr(started.proxy, name) for name in START_ONLY_PROXY_SETTINGS}
    return replace(reloaded, proxy=replace(reloaded.proxy, **kept), admin=started.admin)
