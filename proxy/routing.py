"""Route selection: which `[[routes]]` entry handles a request.

Patterns are compiled once at load (by `proxy.config`) into small closures; `Router.match` runs on
every request and only does set lookups, `str.startswith`/`str.endswith` and at most one regex per
route.

Paths are matched in two views, the raw path and its normalised form (`proxy.paths`): coxp
forwards the raw path, but the upstream may well route on the normalised one. When the two
views select different routes, coxp cannot know which policy the upstream's resource needs, and
the request is refused (`400 ambiguous-path`) rather than given either.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from proxy.http1 import BadRequest
from proxy.model import Config, Route

Matcher = Callable[[str], bool]


def compile_host_patterns(patterns: Iterable[str]) -> Matcher:
    """Match a host name (the Host header without its port), case-insensitively.

    `*.example.test` matches `a.example.test` and `a.b.example.test` but never `example.test`
    itself; any other pattern matches exactly. Patterns are expected to be validated and
    lower-cased already (`proxy.config` does both).
    """
    exact: set[str] = set()
    suffixes: list[str] = []
    for pattern in patterns:
        if pattern.startswith("*."):
            suffixes.append(pattern[1:])  # keep the dot: "*.a.test" -> ".a.test", so never the apex
        else:
            exact.add(pattern)
    suffix_tuple = tuple(suffixes)

    def host_matches(host: str) -> bool:
        host = host.lower()
        return host in exact or (bool(suffix_tuple) and host.endswith(suffix_tuple))

    return host_matches


def compile_path_globs(globs: Iterable[str]) -> Matcher:
    """Match a raw request path (no query, never decoded) against globs, case-sensitively.

    `*` stands for any run of characters, `/` included; a glob without `*` matches exactly.
    Exact globs go into a set, `prefix*` globs into one `str.startswith` tuple, and every other
    glob into a single compiled alternation.
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    others: list[str] = []
    for glob in globs:
        star = glob.find("*")
        if star < 0:
            exact.add(glob)
        elif star == len(glob) - 1:
            prefixes.append(glob[:-1])
        else:
            others.append(glob)
    prefix_tuple = tuple(prefixes)
    regex = _glob_regex(others)

    def path_matches(path: str) -> bool:
        if path in exact or (prefix_tuple and path.startswith(prefix_tuple)):
            return True
        return regex is not None and regex.fullmatch(path) is not None

    return path_matches


def _glob_regex(globs: list[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    alternatives = ("(?:" + ".*".join(map(re.escape, glob.split("*"))) + ")" for glob in globs)
    # DOTALL: a raw path may carry any byte (as latin-1); `*` must span all of them.
    return re.compile("|".join(alternatives), re.DOTALL)


def host_without_port(host: str | None) -> str:
    """The name hosts are matched on: `example.test:8080` -> `example.test`, `[::1]:8080` -> `::1`,
    None -> "". One trailing dot is dropped: `admin.example.test.` is the same fully qualified
    name as `admin.example.test` to DNS and to most upstreams (RFC 1034 §3.1)."""
    if not host:
        return ""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    colon = host.rfind(":")
    name = host[:colon] if colon >= 0 else host
    return name[:-1] if name.endswith(".") else name


class Router:
    """First matching route in file order, else the implicit `default` route."""

    __slots__ = ("_routes", "_default")

    def __init__(self, config: Config):
        self._routes: tuple[tuple[Matcher | None, Matcher | None, frozenset[str] | None, Route], ...] = tuple(
            (route.host_matches, route.path_matches, route.methods, route) for route in config.routes
        )
        self._default = config.default_route

    def match(self, host: str | None, path: str, method: str, normal_path: str | None = None) -> Route:
        """`host` is the Host header value (port allowed); `method` is the one to route on
        (for a preflight, `Access-Control-Request-Method`, see `proxy.policy.routing_method`);
        `normal_path` is `path`'s normalised view (`proxy.paths.normalised_path`), None or `path`
        itself when it has none. Raises BadRequest(400, "ambiguous-path") when the two views
        select different routes."""
        name = host_without_port(host)
        route = self._first(name, path, method)
        if normal_path is not None and normal_path != path and self._first(name, normal_path, method) is not route:
            raise BadRequest(400, "ambiguous-path")
        return route

    def routes_of_views(self, host: str | None, path: str, method: str, normal_path: str) -> tuple[Route, Route]:
        """The route each view selects (raw, normalised), for `coxp explain`."""
        name = host_without_port(host)
        return self._first(name, path, method), self._first(name, normal_path, method)

    def _first(self, name: str, path: str, method: str) -> Route:
        for host_matches, path_matches, methods, route in self._routes:
            if host_matches is not None and not host_matches(name):
                continue
            if path_matches is not None and not path_matches(path):
                continue
            if methods is not None and method not in methods:
                continue
            return route
        return self._default
