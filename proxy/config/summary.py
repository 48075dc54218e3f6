"""The `coxp check` summary: one line per route."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.config.cors import SETTING_MODES
from proxy.model import Config, CookiePolicy, CorsPolicy, HeaderPolicy, Route


def summarize(config: Config) -> list[str]:
    """The `coxp check` lines: one per route in file order, then one for `default`."""
    routes = [*config.routes, config.default_route]
    tables = [*config.effective["routes"], config.effective["defaults"]]  # the tables as written
    width = max(len(route.name) for route in routes)
    return [
        f"{route.name.ljust(width)}  {_route_summary(route, config, effective)}"
        for route, effective in zip(routes, tables, strict=True)
    ]



def _route_summary(route: Route, config: Config, effective: Mapping[str, Any]) -> str:
    upstream = route.upstream or config.proxy.upstream
    parts = [
        f"hosts={','.join(route.hosts) if route.hosts else 'any'}",
        f"paths={','.join(route.paths) if route.paths else 'any'}",
        f"methods={','.join(sorted(route.methods)) if route.methods else 'any'}",
        f"upstream={upstream.url if upstream else 'none (404)'}",
    ]
    cors = route.policies.cors
    if cors is not None:
        written = effective.get("cors") or {}
        parts.append(f"cors={_cors_summary(cors, written)}")
        if cors.shadow is not None:
            parts.append(f"cors.shadow={_cors_summary(cors.shadow, written.get('shadow') or {})}")
    for policy in route.policies.header_policies:
        parts.append(f"{policy.table}={_header_policy_summary(policy)}")
    if route.policies.cookies is not None:
        parts.append(f"cookies={_cookie_summary(route.policies.cookies)}")
    return " ".join(parts)


def _cookie_summary(policy: CookiePolicy) -> str:
    edits = [f"samesite={policy.samesite}"] if policy.samesite else []
    edits += [name for name, on in (("secure", policy.secure), ("strip domain", policy.domain_strip),
                                    ("partitioned", policy.partitioned)) if on]
    return f"set({', '.join(edits) or 'no change'})"


def _cors_summary(policy: CorsPolicy, effective: Mapping[str, Any]) -> str:
    if policy.mode not in SETTING_MODES:
        return policy.mode
    count = len(effective.get("allow_origins", [])) + len(effective.get("allow_origin_regex", []))
    details = ["any origin" if policy.origins.allows_any else f"origins: {count} pattern{'s' * (count != 1)}"]
    if policy.allow_credentials:
        details.append("credentials")
    if policy.any_method or policy.allow_methods:
        details.append(f"methods: {'*' if policy.any_method else ','.join(sorted(policy.allow_methods))}")
    if policy.any_header or policy.allow_headers:
        details.append(f"headers: {'*' if policy.any_header else len(policy.allow_headers)}")
    if policy.preflight == "upstream":
        details.append("preflight: upstream")
    if policy.enforce:
        details.append("enforce")
    return f"{policy.mode}({', '.join(details)})"


def _header_policy_summary(policy: HeaderPolicy) -> str:
    if policy.mode not in SETTING_MODES or not policy.headers:
        return policy.mode
    name, value = policy.headers[0]
    if policy.table == "reporting":
        value = ",".join(item.split("=", 1)[0] for item in value.split(", "))
    elif name.endswith("-Report-Only"):
        value += ", report-only"
    return f"{policy.mode}({value})"
