"""The sections of the config file: `[proxy]`, `[admin]`, `[log]`, `[limits]`, `[[routes]]`
(their matchers) and the whole file put together. The policy tables of routes and `[defaults]`
are `proxy.config.policies`'.

Relative file paths (`tls_cert`, `tls_key`, `upstream_ca`) are resolved against the directory of
the config file, so a config works whatever the current directory is.
"""
from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

from proxy.config.cors import SETTING_MODES
from proxy.config.policies import compile_policies_table, table_names
from proxy.config.reading import Report, Table, describe, join_key, quoted
from proxy.config.values import (
    parse_collector_path,
    parse_endpoint,
    parse_host_pattern,
    parse_method,
    parse_network,
    parse_path_glob,
    parse_upstream,
    path_glob_warning,
)
from proxy.errors import ConfigProblem
from proxy.model import (
    AdminSettings,
    Config,
    Endpoint,
    IPNetwork,
    Limits,
    LogSettings,
    Policies,
    ProxySettings,
    ReportsSettings,
    Route,
    Upstream,
)
from proxy.policy import compile_policies
from proxy.routing import compile_host_patterns, compile_path_globs

TOP_KEYS = ("proxy", "admin", "log", "limits", "reports", "defaults", "routes")
PROXY_KEYS = (
    "listen", "upstream", "workers", "preserve_host", "forwarded_headers", "trusted_proxies",
    "connect_timeout", "read_timeout", "tls_cert", "tls_key", "upstream_ca", "upstream_verify",
    "rewrite_location",
    "allow_underscores_in_headers",
)
ADMIN_KEYS = ("listen",)
LOG_KEYS = ("level", "format")
LIMIT_KEYS = (
    "header_timeout", "keepalive_timeout", "max_request_line", "max_header_bytes", "max_headers",
    "max_in_flight", "max_body_bytes", "request_buffer", "body_timeout", "tunnel_idle_timeout", "max_connections",
)
ROUTE_OWN_KEYS = ("name", "hosts", "paths", "methods", "upstream")  # besides its policy tables

REPORTS_KEYS = ("path", "max_body_bytes")
# A report body is read whole into memory: a generous bound on what `max_body_bytes` may allow.
MAX_REPORT_BODY = 16 * 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "console")



def compile_config(report: Report, data: dict[str, Any], source: str, base_dir: str) -> Config:
    root = Table(report, "", data, TOP_KEYS)
    proxy_table = root.subtable("proxy", PROXY_KEYS) or Table(report, "proxy", {}, PROXY_KEYS)
    proxy = _proxy_settings(proxy_table, base_dir)
    admin_table = root.subtable("admin", ADMIN_KEYS)
    admin = None
    if admin_table is not None:
        admin = _admin_settings(admin_table)
        _reject_shared_listen(admin_table, admin.listen, proxy.listen)
    log_table = root.subtable("log", LOG_KEYS) or Table(report, "log", {}, LOG_KEYS)
    log = _log_settings(log_table)
    limits_table = root.subtable("limits", LIMIT_KEYS) or Table(report, "limits", {}, LIMIT_KEYS)
    limits = _limits(limits_table)
    reports_table = root.subtable("reports", REPORTS_KEYS)
    reports = _reports_settings(reports_table) if reports_table is not None else None
    defaults_keys = table_names()
    defaults_table = root.subtable("defaults", defaults_keys) or Table(report, "defaults", {}, defaults_keys)
    defaults = compile_policies_table(defaults_table, Policies(), {})
    routes, route_effective = _routes(root, defaults, defaults_table.effective, proxy)
    _require_upstream(proxy_table, routes)
    _warn_default_route_passes_cors(defaults_table, routes)
    if reports is None:
        _warn_unserved_collector(report, data)
    default_route = Route(name="default", policies=defaults,
                          compiled=compile_policies(defaults, _redirects_from(proxy, proxy.upstream)),
                          upstream=proxy.upstream, shadow=_shadow_route("default", defaults))
    effective = {
        "proxy": proxy_table.effective,
        "admin": admin_table.effective if admin_table is not None else None,
        "log": log_table.effective,
        "limits": limits_table.effective,
        "reports": reports_table.effective if reports_table is not None else None,
        "defaults": defaults_table.effective,
        "routes": route_effective,
    }
    report.name_routes(data.get("routes"))
    return Config(
        source=source, proxy=proxy, admin=admin, log=log, limits=limits, routes=tuple(routes),
        default_route=default_route, warnings=tuple(w.render_warning(source) for w in report.warnings),
        effective=effective, reports=reports,
    )


def _warn_unserved_collector(report: Report, data: dict[str, Any]) -> None:
    """A Reporting-Endpoints URL naming the collector's default path while `[reports]` is absent
    sends every report to the upstream, which has nothing there: a warning naming the fix."""
    path = ReportsSettings().path
    tables = [("defaults", data.get("defaults"))]
    routes = data.get("routes")
    if isinstance(routes, list):
        tables += [(f"routes[{i}]", route) for i, route in enumerate(routes)]
    for key, table in tables:
        reporting = table.get("reporting") if isinstance(table, dict) else None
        endpoints = reporting.get("endpoints") if isinstance(reporting, dict) else None
        for name, url in (endpoints.items() if isinstance(endpoints, dict) else ()):
            if url == path:
                report.warnings.append(ConfigProblem(
                    join_key(f"{key}.reporting.endpoints", str(name)),
                    f"{quoted(url)} is the report collector's path, but [reports] is absent: browsers' reports "
                    "would be forwarded to the upstream; add [reports]",
                ))


def _reports_settings(table: Table) -> ReportsSettings:
    defaults = ReportsSettings()
    path = table.parsed("path", parse_collector_path, defaults.path)
    max_body_bytes = table.integer("max_body_bytes", defaults.max_body_bytes, minimum=1, maximum=MAX_REPORT_BODY)
    return ReportsSettings(path=path or defaults.path, max_body_bytes=max_body_bytes or defaults.max_body_bytes)


def _proxy_settings(table: Table, base_dir: str) -> ProxySettings:
    tls_cert, tls_key = _tls_files(table, base_dir)
    return ProxySettings(
        listen=table.parsed("listen", parse_endpoint, "127.0.0.1:8080"),
        upstream=table.parsed("upstream", parse_upstream),
        workers=table.integer("workers", 1, minimum=1),
        preserve_host=table.boolean("preserve_host", False),
        forwarded_headers=table.boolean("forwarded_headers", True),
        trusted_proxies=_trusted_proxies(table),
        connect_timeout=table.seconds("connect_timeout", 5.0),
        read_timeout=table.seconds("read_timeout", 60.0),
        tls_cert=tls_cert,
        tls_key=tls_key,
        upstream_ca=_upstream_ca(table, base_dir),
        upstream_verify=table.boolean("upstream_verify", True),
        rewrite_location=bool(table.boolean("rewrite_location", True)),
        allow_underscores_in_headers=table.boolean("allow_underscores_in_headers", False),
    )


def _trusted_proxies(table: Table) -> tuple[IPNetwork, ...]:
    entries = table.strings("trusted_proxies") or []
    networks = (table.parse_at(f"trusted_proxies[{i}]", parse_network, text) for i, text in enumerate(entries))
    return tuple(network for network in networks if network is not None)


def _existing_file(table: Table, name: str, base_dir: str) -> str | None:
    path = table.string(name)
    if path is None:
        return None
    resolved = os.path.join(base_dir, os.path.expanduser(path))
    if not os.path.isfile(resolved):
        table.error(name, f"{quoted(path)}: no such file (relative paths start at the config file's directory)")
        return None
    return resolved


def _tls_files(table: Table, base_dir: str) -> tuple[str | None, str | None]:
    """Both or neither; the key must belong to the certificate, found out now rather than at the
    first connection."""
    given = {name: name in table.data for name in ("tls_cert", "tls_key")}
    if given["tls_cert"] != given["tls_key"]:
        absent = "tls_key" if given["tls_cert"] else "tls_cert"
        table.error(absent, "missing; tls_cert and tls_key go together (both set = TLS on listen)")
    cert = _existing_file(table, "tls_cert", base_dir)
    key = _existing_file(table, "tls_key", base_dir)
    if cert is None or key is None:
        return None, None
    try:
        ssl.create_default_context().load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError) as exc:
        table.error("tls_cert", f"cannot load a PEM certificate from it ({_ssl_reason(exc)})")
        return None, None
    try:
        # A callable password: an encrypted key fails here instead of prompting on the terminal.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        table.error("tls_key", f"cannot be used with tls_cert ({_ssl_reason(exc)}); "
                    "give the unencrypted PEM private key of that certificate")
        return None, None
    return cert, key


def _upstream_ca(table: Table, base_dir: str) -> str | None:
    path = _existing_file(table, "upstream_ca", base_dir)
    if path is None:
        return None
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        table.error("upstream_ca", f"cannot load CA certificates from it ({_ssl_reason(exc)}); give a PEM bundle")
        return None
    return path


def _ssl_reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def _admin_settings(table: Table) -> AdminSettings:
    return AdminSettings(listen=table.parsed("listen", parse_endpoint, "127.0.0.1:9901"))


def _reject_shared_listen(admin_table: Table, admin: Endpoint, proxy: Endpoint) -> None:
    # Port 0 picks a fresh port for each listener, so only a fixed port can clash.
    if admin == proxy and admin.port != 0:
        admin_table.error("listen", f"{admin} is also [proxy].listen; "
                          "give the admin listener another port, e.g. \"127.0.0.1:9901\"")


def _log_settings(table: Table) -> LogSettings:
    return LogSettings(
        level=table.choice("level", LOG_LEVELS, "info", fold_case=True),
        format=table.choice("format", LOG_FORMATS, "json"),
    )


def _limits(table: Table) -> Limits:
    defaults = Limits()
    return Limits(
        header_timeout=table.seconds("header_timeout", defaults.header_timeout),
        keepalive_timeout=table.seconds("keepalive_timeout", defaults.keepalive_timeout),
        max_request_line=table.integer("max_request_line", defaults.max_request_line, minimum=1),
        max_header_bytes=table.integer("max_header_bytes", defaults.max_header_bytes, minimum=1),
        max_headers=table.integer("max_headers", defaults.max_headers, minimum=1),
        max_in_flight=table.integer("max_in_flight", defaults.max_in_flight, minimum=1),
        max_body_bytes=table.integer("max_body_bytes", defaults.max_body_bytes, minimum=0),
        request_buffer=table.integer("request_buffer", defaults.request_buffer, minimum=0),
        body_timeout=table.seconds("body_timeout", defaults.body_timeout),
        tunnel_idle_timeout=table.seconds("tunnel_idle_timeout", defaults.tunnel_idle_timeout),
        max_connections=table.integer("max_connections", defaults.max_connections, minimum=1),
    )


def _require_upstream(proxy_table: Table, routes: list[Route]) -> None:
    if "upstream" in proxy_table.data:
        return
    if not routes:
        proxy_table.error("upstream", 'missing; set it (e.g. upstream = '
                                      '"http://127.0.0.1:3000") or add [[routes]] with an upstream each')
        return
    without = [route.name for route in routes if route.upstream is None]
    if without:
        names = ", ".join(quoted(name) for name in without)
        proxy_table.error("upstream", f"missing, and routes {names} have no "
                          "upstream of their own; set [proxy].upstream or give every route one")


# ---------------------------------------------------------------------------------------------
# Routes


def _warn_default_route_passes_cors(defaults_table: Table, routes: list[Route]) -> None:
    """A route owning CORS while the implicit `default` route leaves it alone: a request outside
    the routes (another Host, another path) gets the upstream's own CORS headers — often the
    very ones coxp was put there to replace (a reflected Origin with credentials)."""
    if "cors" in defaults_table.data:
        return  # [defaults.cors] decides, whatever its mode
    owner = next((r for r in routes if r.policies.cors is not None and r.policies.cors.mode in SETTING_MODES), None)
    if owner is None or any(_catches_everything(route) for route in routes):
        return
    defaults_table.warn(
        "cors",
        f'route "{owner.name}" owns CORS, but requests that match no route (route "default") pass the '
        "upstream's own CORS headers through; add [defaults.cors] with mode = \"remove\" (or a policy "
        "of its own) so that they are decided too",
    )


def _catches_everything(route: Route) -> bool:
    """Every request matches `route` (so none reaches `default`)."""
    return route.hosts is None and route.methods is None and (route.paths is None or "/*" in route.paths)


def _redirects_from(proxy: ProxySettings, upstream: Upstream | None) -> Upstream | None:
    """The upstream whose URLs a route's responses point at coxp instead (`rewrite_location`)."""
    return upstream if proxy.rewrite_location else None


def _routes(root: Table, defaults: Policies, defaults_effective: dict[str, Any],
            proxy: ProxySettings) -> tuple[list[Route], list[dict[str, Any]]]:
    raw = root.data.get("routes", [])
    if not isinstance(raw, list):
        root.error("routes", f"expected an array of tables ([[routes]]), got {describe(raw)}")
        return [], []
    routes: list[Route] = []
    effective: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            root.error(f"routes[{index}]", f"expected a table ([[routes]]), got {describe(item)}")
            continue
        table = Table(root.report, f"routes[{index}]", item, (*ROUTE_OWN_KEYS, *table_names()))
        route = _route(table, seen, index, defaults, defaults_effective, proxy)
        routes.append(route)
        effective.append(table.effective)
    return routes, effective


def _route(table: Table, seen: dict[str, int], index: int, defaults: Policies,
           defaults_effective: dict[str, Any], proxy: ProxySettings) -> Route:
    name = _route_name(table, seen, index)
    hosts = _route_list(table, "hosts", parse_host_pattern)
    paths = _route_list(table, "paths", parse_path_glob)
    for position, glob in enumerate(paths or ()):
        if (warning := path_glob_warning(glob)) is not None:
            table.warn(f"paths[{position}]", warning)
    methods = _route_methods(table)
    policies = compile_policies_table(table, defaults, defaults_effective)
    upstream = table.parsed("upstream", parse_upstream)
    return Route(
        name=name,
        policies=policies,
        compiled=compile_policies(policies, _redirects_from(proxy, upstream or proxy.upstream)),
        shadow=_shadow_route(name, policies),
        hosts=hosts,
        paths=paths,
        methods=methods,
        upstream=upstream,
        host_matches=compile_host_patterns(hosts) if hosts is not None else None,
        path_matches=compile_path_globs(paths) if paths is not None else None,
    )


def _shadow_route(name: str, policies: Policies) -> Route | None:
    """The route as its candidate CORS table alone decides it (see `Route.shadow`)."""
    if policies.cors is None or policies.cors.shadow is None:
        return None
    candidate = Policies(cors=policies.cors.shadow)
    return Route(name=name, policies=candidate, compiled=compile_policies(candidate))


def _route_name(table: Table, seen: dict[str, int], index: int) -> str:
    name = table.string("name", missing='every route needs a name = "..." (used in logs and `coxp check`)')
    if name is None:
        return f"routes[{index}]"
    if not name or any(not "!" <= char <= "~" for char in name):
        table.error("name", f"{quoted(name)}: write a non-empty name of visible ASCII characters, without spaces")
    elif name == "default":
        table.error("name", '"default" is the implicit route of requests that match no route; choose another name')
    elif name in seen:
        table.error("name", f"{quoted(name)} is already the name of routes[{seen[name]}]; route names are unique")
    else:
        seen[name] = index
    return name


def _route_list(table: Table, name: str, parse: Callable[[str], str]) -> tuple[str, ...] | None:
    """`hosts` or `paths`: absent = None (matches everything), else the parsed entries."""
    if name not in table.data:
        table.effective[name] = None
        return None
    entries = table.strings(name)
    if entries is None:
        return None
    if not entries:
        table.error(name, f"an empty list matches nothing; omit {name} to match everything")
        return None
    parsed = [table.parse_at(f"{name}[{i}]", parse, text) for i, text in enumerate(entries)]
    return tuple(item for item in parsed if item is not None)


def _route_methods(table: Table) -> frozenset[str] | None:
    if "methods" not in table.data:
        table.effective["methods"] = None
        return None
    entries = table.strings("methods")
    if entries is None:
        return None
    if not entries:
        table.error("methods", "an empty list matches nothing; omit methods to match every method")
        return None
    methods = set()
    for i, text in enumerate(entries):
        if text == "*":
            table.error(f"methods[{i}]", '"*" is not a method; omit methods to match every method')
            continue
        method = table.parse_at(f"methods[{i}]", parse_method, text)
        if method is not None:
            methods.add(method)
    return frozenset(methods)
