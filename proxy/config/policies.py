"""The policy tables of a route or of `[defaults]`, and the one registry that lists them.

A header table that writes one response header whose value is one of a few keywords (CORP,
COOP, COEP; tomorrow `Origin-Agent-Cluster` or `X-Content-Type-Options`) is one `HeaderTable`
entry in `HEADER_TABLES`: its keys, its validation, its compiled `HeaderPolicy`, its place in
the route keys, its inheritance from `[defaults]`, the header edit the policy engine makes and
its `coxp check` summary all follow from that entry (tests/test_config.py adds one to show it).
The README's configuration reference documents each table.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from proxy.config.cookies import COOKIE_KEYS, cookie_policy
from proxy.config.cors import CORS_KEYS, SETTING_MODES, cors_policy, table_mode
from proxy.config.reading import Table, describe, is_extension, join_key, quoted
from proxy.config.values import is_loopback_url, parse_report_url, parse_sf_key
from proxy.errors import ConfigProblem
from proxy.model import Header, HeaderPolicy, Mode, Policies

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class HeaderTable:
    """A policy table owning one response header whose value is a keyword from `policies`."""

    name: str  # the TOML table, e.g. "coop"
    header: str  # the response header it writes, e.g. "Cross-Origin-Opener-Policy"
    policies: tuple[str, ...]  # the values `policy` accepts
    example: str  # the value suggested when `policy` is missing
    # HTML standard, "reporting" of COOP and COEP: `report_to` names a Reporting-Endpoints
    # endpoint and `report_only` sends the `<header>-Report-Only` variant instead.
    reporting: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return ("mode", "policy", "report_to", "report_only") if self.reporting else ("mode", "policy")

    @property
    def owned(self) -> frozenset[str]:
        lower = self.header.lower()
        return frozenset({lower, f"{lower}-report-only"}) if self.reporting else frozenset({lower})


HEADER_TABLES: tuple[HeaderTable, ...] = (
    # Fetch standard, "Cross-Origin-Resource-Policy header".
    HeaderTable("corp", "Cross-Origin-Resource-Policy", ("same-origin", "same-site", "cross-origin"), "same-site"),
    # HTML standard, "Cross-origin opener policies".
    HeaderTable("coop", "Cross-Origin-Opener-Policy",
                ("unsafe-none", "same-origin-allow-popups", "same-origin", "noopener-allow-popups"), "same-origin",
                reporting=True),
    # HTML standard, "Cross-origin embedder policies".
    HeaderTable("coep", "Cross-Origin-Embedder-Policy", ("unsafe-none", "require-corp", "credentialless"),
                "require-corp", reporting=True),
)

REPORTING_KEYS = ("mode", "endpoints")


def compile_policies_table(parent: Table, inherited: Policies, inherited_effective: dict[str, Any]) -> Policies:
    """The tables of `parent` (a route or [defaults]), in registry order; a missing table is
    inherited whole."""
    def own_or_inherited(name: str, keys: tuple[str, ...], compile_table: Callable[[Table], P | None],
                         inherited_policy: P | None) -> P | None:
        table = parent.subtable(name, keys)
        if table is not None:
            return compile_table(table)
        if name in inherited_effective:
            parent.effective[name] = inherited_effective[name]
        return inherited_policy

    cors = own_or_inherited("cors", CORS_KEYS, cors_policy, inherited.cors)
    header_policies = []
    for name, entry in HEADER_POLICY_TABLES.items():
        policy = own_or_inherited(name, entry.keys, entry.compile, inherited.header_policy(name))
        if policy is not None:
            header_policies.append(policy)
    cookies = own_or_inherited("cookies", COOKIE_KEYS, cookie_policy, inherited.cookies)
    _warn_unknown_report_to(parent)
    return Policies(cors=cors, header_policies=tuple(header_policies), cookies=cookies)


def table_names() -> tuple[str, ...]:
    """Every policy table a route or `[defaults]` may have, in the order they are compiled."""
    return ("cors", *HEADER_POLICY_TABLES, "cookies")


def _warn_unknown_report_to(parent: Table) -> None:
    """A `report_to` naming no endpoint of the route's own Reporting-Endpoints sends reports
    nowhere, unless the upstream defines that endpoint itself: a warning, not an error.
    Only the parent's own tables are checked, so an inherited one warns once."""
    reporting = parent.effective.get("reporting") or {}
    endpoints = (reporting.get("endpoints") or {}) if reporting.get("mode") in SETTING_MODES else {}
    for spec in HEADER_TABLES:
        table = parent.effective.get(spec.name) if spec.reporting and spec.name in parent.data else None
        if not table or table.get("mode") not in SETTING_MODES:
            continue
        report_to = table.get("report_to")
        if isinstance(report_to, str) and report_to not in endpoints:
            parent.report.warnings.append(ConfigProblem(
                join_key(parent.key(spec.name), "report_to"),
                f"{quoted(report_to)} is not an endpoint of this route's [reporting] table; add it there "
                "(reports go nowhere unless the upstream sends a Reporting-Endpoints header naming it)",
            ))


def _header_policy(table: Table, name: str, mode: Mode | None, headers: tuple[Header, ...],
                   owned: frozenset[str], errors_before: int) -> HeaderPolicy | None:
    if mode is None or len(table.report.errors) > errors_before:
        return None
    return HeaderPolicy(table=name, mode=mode, owned=owned, headers=headers)


def _header_table_policy(table: Table, *, spec: HeaderTable) -> HeaderPolicy | None:
    """A keyword `policy`, plus for the reporting tables an optional endpoint and report-only."""
    errors_before = len(table.report.errors)
    mode = table_mode(table)
    missing = None
    if mode in SETTING_MODES:
        missing = f'write policy = "{spec.example}" (one of: {", ".join(spec.policies)}), or mode = "remove" or "pass"'
    policy = table.choice("policy", spec.policies, None, missing=missing)
    headers: tuple[Header, ...] = ()
    if spec.reporting:
        report_to = table.parsed("report_to", parse_sf_key)
        report_only = table.boolean("report_only", False)
        if policy:
            value = f'{policy}; report-to="{report_to}"' if report_to else policy
            headers = ((f"{spec.header}-Report-Only" if report_only else spec.header, value),)
    elif policy:
        headers = ((spec.header, policy),)
    return _header_policy(table, spec.name, mode, headers, spec.owned, errors_before)


def _reporting_policy(table: Table) -> HeaderPolicy | None:
    errors_before = len(table.report.errors)
    mode = table_mode(table)
    endpoints = _reporting_endpoints(table, required=mode in SETTING_MODES)
    headers = (("Reporting-Endpoints", ", ".join(f'{key}="{url}"' for key, url in endpoints.items())),) if endpoints else ()
    return _header_policy(table, "reporting", mode, headers, frozenset({"reporting-endpoints"}), errors_before)


def _reporting_endpoints(table: Table, required: bool) -> dict[str, str]:
    """`endpoints = { name = "https://..." }` (W3C Reporting API, `Reporting-Endpoints`)."""
    if "endpoints" not in table.data:
        if required:
            table.error("endpoints", 'missing; write endpoints = { default = "https://reports.example.test/r" }')
        return {}
    endpoints = table.subtable("endpoints", None)
    if endpoints is None:
        return {}
    if not endpoints.data:
        table.error("endpoints", 'an empty table sends no header; add '
                                 'default = "https://reports.example.test/r" or remove [reporting]')
    result: dict[str, str] = {}
    for name, url in endpoints.data.items():
        if is_extension(name):
            continue
        key = str(name)
        if not isinstance(url, str):
            endpoints.error(key, f"expected a URL string, got {describe(url)}")
            continue
        endpoints.effective[key] = url
        if endpoints.parse_at(key, parse_sf_key, key) is None or endpoints.parse_at(key, parse_report_url, url) is None:
            continue
        if url.lower().startswith("http://") and not is_loopback_url(url):
            endpoints.warn(key, f"{quoted(url)} is not https; browsers only send reports to secure endpoints")
        result[key] = url
    return result


class HeaderPolicyTable(NamedTuple):
    keys: tuple[str, ...]
    compile: Callable[[Table], HeaderPolicy | None]


def header_policy_tables(tables: tuple[HeaderTable, ...]) -> dict[str, HeaderPolicyTable]:
    """The tables that own response headers, in the order their headers are written: the
    keyword tables of `tables`, then Reporting-Endpoints."""
    return {
        **{spec.name: HeaderPolicyTable(spec.keys, functools.partial(_header_table_policy, spec=spec)) for spec in tables},
        "reporting": HeaderPolicyTable(REPORTING_KEYS, _reporting_policy),
    }


# The registry. CORS comes first and `[cookies]` (edits of the upstream's Set-Cookie lines,
# `proxy.cookies`) last; each has its own compiler.
HEADER_POLICY_TABLES: dict[str, HeaderPolicyTable] = header_policy_tables(HEADER_TABLES)
